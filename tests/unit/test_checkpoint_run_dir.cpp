#include <doctest/doctest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "checkpoint/archive.hpp"
#include "checkpoint/run_dir.hpp"
#include "util/error.hpp"

using namespace ckpt;

TEST_CASE("the resume command shown in messages is one a POSIX shell reads back word for word") {
  CHECK(checkpoint::resume_command("runs/mlp-1") == "ckpt resume runs/mlp-1");
  CHECK(checkpoint::resume_command("/data/runs/mlp", std::string("checkpoint-150")) ==
        "ckpt resume /data/runs/mlp --from checkpoint-150");
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

  write(
      R"({"metadata": {"total_size": 8}, "weight_map": {"b": "model-00002.safetensors", "a": "model-00001.safetensors",)"
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
      CHECK(e.where().rfind("weight_map", 0) == 0);  // the map, or the member of it at fault ("weight_map.a")
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

namespace {

namespace fs = std::filesystem;

// A scratch directory removed at the end of the test case.
struct ScratchTree {
  fs::path root;
  explicit ScratchTree(const std::string& name)
      : root(fs::temp_directory_path() / (name + "-" + std::to_string(::getpid()))) {
    fs::remove_all(root);
    fs::create_directories(root);
  }
  ~ScratchTree() { fs::remove_all(root); }
  std::string at(const std::string& relative) const { return (root / relative).string(); }
  void directory(const std::string& relative) const { fs::create_directories(root / relative); }
  void file(const std::string& relative) const {
    fs::create_directories((root / relative).parent_path());
    std::ofstream(root / relative) << "x";
  }
};

std::vector<std::string> paths_of(const std::vector<checkpoint::RunTarget>& targets) {
  std::vector<std::string> paths;
  for (const auto& t : targets) {
    CHECK_MESSAGE(!t.error, t.path);
    paths.push_back(t.path);
  }
  return paths;
}

}  // namespace

TEST_CASE(
    "--recursive finds run directories, nested ones too, by path, never through a symlink or into a run's own "
    "entries") {
  ScratchTree tree("ckpt-find-runs");
  tree.directory("a/checkpoint-10/inner/checkpoint-3");            // inside a checkpoint: not a run of its own
  tree.directory("a/sweep-1/checkpoint-5");                        // a run nested in a run
  tree.directory("a/archive/old/checkpoint-1");                    // a run's archive directory is not searched
  tree.directory("a/.ckpt-staging-checkpoint-20-1/checkpoint-2");  // hidden: ckpt's staging, trash, anyone's
  tree.directory(".hidden/checkpoint-1");
  tree.file("b/archive/checkpoint-20.ckpt");  // archives alone make a run
  tree.file("c/model.ckpt");
  tree.directory("d/notes/more");  // no run
  tree.directory("e/x.ckpt");      // a directory named like an archive is none
  tree.file("f/.partial.ckpt");    // a hidden file is no archive
  tree.file("g/checkpoint-4");     // a file named like a checkpoint is none
  tree.directory("h");
  fs::create_directory_symlink(tree.root / "a" / "checkpoint-10", tree.root / "h" / "checkpoint-10");
  fs::create_directory_symlink(tree.root / "a", tree.root / "link-to-a");
  tree.directory("i/archive");
  fs::create_symlink(tree.root / "b" / "archive" / "checkpoint-20.ckpt",
                     tree.root / "i" / "archive" / "checkpoint-20.ckpt");
  tree.directory("deep/archive/checkpoint-9");  // `archive` of no run is an ordinary directory

  const std::string root = tree.root.string();
  const std::vector<std::string> expected = {tree.at("a"), tree.at("a/sweep-1"), tree.at("b"), tree.at("c"),
                                             tree.at("deep/archive")};
  CHECK(paths_of(checkpoint::find_run_directories(root)) == expected);

  // The root itself, when it is a run, and as given (a trailing separator kept, nothing doubled).
  tree.directory("checkpoint-1");
  auto with_root = expected;
  with_root.insert(with_root.begin(), root);
  CHECK(paths_of(checkpoint::find_run_directories(root)) == with_root);
  CHECK(paths_of(checkpoint::find_run_directories(root + "/")).at(1) == root + "/a");

  // The root is followed when it is a symlink: the user named it.
  CHECK(paths_of(checkpoint::find_run_directories(tree.at("link-to-a"))) ==
        std::vector<std::string>{tree.at("link-to-a"), tree.at("link-to-a/sweep-1")});
}

TEST_CASE("--recursive stops with an error naming the root beyond its depth and size limits") {
  ScratchTree tree("ckpt-find-runs-limits");
  tree.directory("l1/l2/l3/checkpoint-1");
  const std::string root = tree.root.string();
  checkpoint::RunSearchLimits limits;
  limits.max_depth = 3;
  CHECK(paths_of(checkpoint::find_run_directories(root, limits)) == std::vector<std::string>{tree.at("l1/l2/l3")});
  tree.directory("l1/l2/l3/l4");
  try {
    checkpoint::find_run_directories(root, limits);
    FAIL("searched deeper than the limit");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::unsupported);
    CHECK(e.path() == root);
    CHECK(e.where() == "--recursive");
    CHECK(std::string(e.what()).find("more than 3 levels deep below it (" + tree.at("l1/l2/l3/l4") + ")") !=
          std::string::npos);
  }
  limits = {};
  limits.max_directories = 4;  // the root and l1..l3: l4 is the fifth
  try {
    checkpoint::find_run_directories(root, limits);
    FAIL("searched more directories than the limit");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::unsupported);
    CHECK(e.path() == root);
    CHECK(std::string(e.what()).find("holds more than 4 directories") != std::string::npos);
  }
  limits.max_directories = 5;
  CHECK(checkpoint::find_run_directories(root, limits).size() == 1);

  for (const std::string& wrong : {tree.at("missing"), tree.at("l1/l2/l3/checkpoint-1/file")}) {
    if (wrong.find("file") != std::string::npos) std::ofstream(wrong) << "x";
    CAPTURE(wrong);
    try {
      checkpoint::find_run_directories(wrong);
      FAIL("searched what is no directory");
    } catch (const Error& e) {
      CHECK(e.kind() == ErrorKind::not_found);
      CHECK(e.path() == wrong);
    }
  }
}

TEST_CASE("the runs of several RUN_DIRs and roots: in order, each directory once, a root without runs an error") {
  ScratchTree tree("ckpt-select-runs");
  tree.directory("runs/x/checkpoint-1");
  tree.directory("runs/y/checkpoint-1");
  tree.directory("empty/notes");
  fs::create_directory_symlink(tree.root / "runs" / "y", tree.root / "y-link");
  const auto selected = checkpoint::select_runs({tree.at("y-link"), tree.at("missing")},
                                                {tree.at("runs"), tree.at("empty"), tree.at("runs/x")});
  REQUIRE(selected.size() == 4);
  CHECK(selected[0].path == tree.at("y-link"));  // first named as given; runs/y is the same directory
  CHECK(!selected[0].error);
  CHECK(selected[1].path == tree.at("missing"));  // handled, and failing, as the run it was given as
  CHECK(!selected[1].error);
  CHECK(selected[2].path == tree.at("runs/x"));
  CHECK(selected[3].path == tree.at("empty"));
  REQUIRE(selected[3].error);
  CHECK(selected[3].error->kind() == ErrorKind::not_found);
  CHECK(std::string(selected[3].error->what()) ==
        tree.at("empty") +
            ": --recursive: holds no run directories (directories holding checkpoint-N directories or archives)");
}

TEST_CASE("a checkpoint's step is the whole decimal suffix of checkpoint-, within 64 bits") {
  CHECK(checkpoint::checkpoint_step("checkpoint-0") == 0);
  CHECK(checkpoint::checkpoint_step("checkpoint-500") == 500);
  CHECK(checkpoint::checkpoint_step("checkpoint-007") == 7);
  CHECK(checkpoint::checkpoint_step("checkpoint-9223372036854775807") == 9223372036854775807);
  for (const char* name : {"checkpoint-", "checkpoint", "checkpoint-1a", "checkpoint--1", "checkpoint-+1",
                           "checkpoint- 1", "Checkpoint-1", "tmp-checkpoint-5", "checkpoint-9223372036854775808",
                           "checkpoint-99999999999999999999", "checkpoint-10.ckpt"}) {
    CAPTURE(name);
    CHECK_FALSE(checkpoint::checkpoint_step(name));
  }
}

TEST_CASE("discovery: checkpoint-N directories by numeric step, never a symlink, a file or a staging directory") {
  namespace fs = std::filesystem;
  const fs::path run = fs::temp_directory_path() / ("ckpt-discover-test-" + std::to_string(::getpid()));
  fs::remove_all(run);
  for (const char* dir : {"checkpoint-10", "checkpoint-2", "checkpoint-x", "tmp-checkpoint-5",
                          ".ckpt-staging-checkpoint-6-a1", "other"}) {
    fs::create_directories(run / dir);
  }
  std::ofstream(run / "checkpoint-3") << "a file";
  fs::create_directory_symlink("checkpoint-10", run / "checkpoint-4");
  fs::create_directory_symlink(run / "other", run / "checkpoint-5");

  const auto found = checkpoint::discover_checkpoints(run.string());
  REQUIRE(found.size() == 2);
  CHECK(found[0].name == "checkpoint-2");
  CHECK(found[0].step == 2);
  CHECK(found[0].path == (run / "checkpoint-2").string());
  CHECK(found[1].name == "checkpoint-10");
  CHECK(found[1].step == 10);
  fs::remove_all(run);
}

TEST_CASE("scan_run: checkpoints and archives by step, then staging, trash, named and custom directories by path") {
  namespace fs = std::filesystem;
  using checkpoint::EntryKind;
  const fs::path base = fs::temp_directory_path() / ("ckpt-scan-test-" + std::to_string(::getpid()));
  fs::remove_all(base);
  const fs::path run = base / "run";
  const auto trainer_state = [](const fs::path& dir, int step) {
    fs::create_directories(dir);
    std::ofstream(dir / "trainer_state.json") << R"({"global_step": )" << step << R"(, "log_history": []})";
  };
  // Archives of checkpoints 10 and 20, in archive/ and in the run directory itself.
  trainer_state(base / "checkpoint-10", 10);
  trainer_state(base / "checkpoint-20", 20);
  fs::create_directories(run / "archive");
  checkpoint::archive_checkpoint((base / "checkpoint-10").string(), (run / "archive" / "checkpoint-10.ckpt").string(),
                                 {});
  checkpoint::archive_checkpoint((base / "checkpoint-20").string(), (run / "checkpoint-20.ckpt").string(), {});
  trainer_state(run / "checkpoint-30", 30);
  for (const char* dir :
       {"tmp-checkpoint-40", ".ckpt-staging-checkpoint-40-x1", ".ckpt-trash-checkpoint-5-y2", ".cache", "milestone"}) {
    fs::create_directories(run / dir);
  }
  trainer_state(run / "final", 25);  // a named checkpoint
  // Symlinks are never followed, to checkpoints, archives or named checkpoints.
  fs::create_directory_symlink(run / "checkpoint-30", run / "checkpoint-50");
  fs::create_symlink(run / "checkpoint-20.ckpt", run / "checkpoint-60.ckpt");
  fs::create_directory_symlink(run / "final", run / "best");
  fs::create_directory_symlink(run / "archive", run / "archive-link");

  const auto scan = checkpoint::scan_run(run.string());
  std::vector<std::tuple<std::string, EntryKind, std::optional<std::int64_t>, bool>> entries;
  for (const auto& e : scan.entries) entries.emplace_back(e.name, e.kind, e.step, e.named);
  using Entry = std::tuple<std::string, EntryKind, std::optional<std::int64_t>, bool>;
  CHECK(entries == std::vector<Entry>{
                       {"archive/checkpoint-10.ckpt", EntryKind::archive, 10, false},
                       {"checkpoint-20.ckpt", EntryKind::archive, 20, false},
                       {"checkpoint-30", EntryKind::checkpoint, 30, false},
                       {".ckpt-staging-checkpoint-40-x1", EntryKind::staging, std::nullopt, false},
                       {".ckpt-trash-checkpoint-5-y2", EntryKind::trash, std::nullopt, false},
                       {"final", EntryKind::custom, 25, true},
                       {"milestone", EntryKind::custom, std::nullopt, false},
                       {"tmp-checkpoint-40", EntryKind::staging, std::nullopt, false},
                   });
  CHECK(scan.entries[0].archived_name == "checkpoint-10");
  CHECK(scan.entries[0].complete);        // an archive is complete when its manifest reads
  CHECK_FALSE(scan.entries[2].complete);  // no weights
  CHECK(scan.entries[2].has_trainer_state);
  // Named checkpoints are assessed as checkpoints are, but are never among the candidates of best, latest or resume.
  CHECK(scan.entries[5].has_trainer_state);
  CHECK(checkpoint::holds_named_checkpoint((run / "final").string()));
  CHECK_FALSE(checkpoint::holds_named_checkpoint((run / "milestone").string()));
  fs::remove_all(base);
}
