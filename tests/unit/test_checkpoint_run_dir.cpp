#include <doctest/doctest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "checkpoint/run_dir.hpp"
#include "util/error.hpp"

using namespace ckpt;

TEST_CASE("the resume command shown in messages is one a POSIX shell reads back word for word") {
  CHECK(checkpoint::resume_command("runs/mlp-1") == "ckpt resume runs/mlp-1");
  CHECK(checkpoint::resume_command("/data/runs/mlp", std::string("checkpoint-150")) == "ckpt resume /data/runs/mlp --from checkpoint-150");
  CHECK(checkpoint::resume_command("my run") == "ckpt resume 'my run'");
  CHECK(checkpoint::resume_command("it's $HOME", std::string("a;b")) == "ckpt resume 'it'\\''s $HOME' --from 'a;b'");
  CHECK(checkpoint::resume_command("") == "ckpt resume ''");
  CHECK(checkpoint::resume_command("r\xc3\xa9sum\xc3\xa9") == "ckpt resume 'r\xc3\xa9sum\xc3\xa9'");
}

TEST_CASE("a weights index names only files beside it: every reader refuses other shard names as corrupt") {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("ckpt-index-test-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string path = (dir / "model.safetensors.index.json").string();
  auto write = [&](const std::string& text) { std::ofstream(path, std::ios::binary | std::ios::trunc) << text; };

  write(R"({"metadata": {"total_size": 8}, "weight_map": {"b": "model-00002.safetensors", "a": "model-00001.safetensors",)"
        R"( "c": "model-00002.safetensors"}})");
  const auto index = checkpoint::read_weights_index(path);
  CHECK(index.files == std::vector<std::string>{"model-00002.safetensors", "model-00001.safetensors"});
  REQUIRE(index.tensor_to_file.size() == 3);
  CHECK(index.tensor_to_file[1] == std::pair<std::string, std::string>{"a", "model-00001.safetensors"});
  CHECK(checkpoint::find_weights(dir.string())->files == index.files);

  for (const char* map : {R"({"a": "../model.safetensors"})", R"({"a": "sub/model.safetensors"})", R"({"a": ".."})",
                          R"({"a": ""})", R"({"a": "x\u0000y"})", R"({"a": 3})", R"([])", R"("x")"}) {
    CAPTURE(map);
    write(std::string(R"({"weight_map": )") + map + "}");
    CHECK_THROWS_AS(checkpoint::read_weights_index(path), Error);
    try {
      checkpoint::find_weights(dir.string());
      FAIL("find_weights accepted the index");
    } catch (const Error& e) {
      CHECK(e.kind() == ErrorKind::corrupt);
      CHECK(e.path() == path);
      CHECK(e.where() == "weight_map");
    }
  }
  write(R"({"metadata": {}})");
  CHECK_THROWS_AS(checkpoint::read_weights_index(path), Error);
  fs::remove_all(dir);
}

TEST_CASE("resume --from: a bare name is the run directory's entry first, a checkpoint-N's archive next, else a path") {
  namespace fs = std::filesystem;
  const fs::path base = fs::temp_directory_path() / ("ckpt-resume-source-test-" + std::to_string(::getpid()));
  fs::remove_all(base);
  const fs::path run = base / "run";
  for (const char* dir : {"checkpoint-10", "final", "archive"}) fs::create_directories(run / dir);
  std::ofstream(run / "archive" / "checkpoint-20.ckpt") << "x";
  std::ofstream(run / "checkpoint-30.ckpt") << "x";
  const std::string r = run.string();

  CHECK(checkpoint::resume_source(r, "checkpoint-10") == (run / "checkpoint-10").string());
  CHECK(checkpoint::resume_source(r, "final") == (run / "final").string());  // a named checkpoint
  CHECK(checkpoint::resume_source(r, "checkpoint-20") == (run / "archive" / "checkpoint-20.ckpt").string());
  CHECK(checkpoint::resume_source(r, "checkpoint-30") == (run / "checkpoint-30.ckpt").string());
  // Nothing of the name in the run directory, or not a bare name: the path as given.
  CHECK(checkpoint::resume_source(r, "elsewhere") == "elsewhere");
  CHECK(checkpoint::resume_source(r, "checkpoint-40") == "checkpoint-40");
  CHECK(checkpoint::resume_source(r, "other/final") == "other/final");
  CHECK(checkpoint::resume_source(r, (base / "copy").string()) == (base / "copy").string());
  CHECK(checkpoint::resume_source(r, "..") == "..");
  CHECK(checkpoint::resume_source(r, ".") == ".");
  fs::remove_all(base);
}
