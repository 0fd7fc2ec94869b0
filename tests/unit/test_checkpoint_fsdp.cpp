// The FSDP reader against tests/data/fsdp (a sharded checkpoint of three ranks written by
// tests/fsdp/make_fsdp_checkpoint.py, and the full state dict it holds), and copies of it damaged here.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <sys/stat.h>
#include <unistd.h>

#include "bytes.hpp"
#include "checkpoint/fsdp.hpp"
#include "format/torch_archive.hpp"
#include "util/error.hpp"

using namespace ckpt;
using namespace ckpt::checkpoint;
namespace fs = std::filesystem;

namespace {

const std::string kFixture = test::data_path("fsdp/checkpoint-5");

// A copy of the fixture checkpoint, removed afterwards.
struct FixtureCopy {
  fs::path path = fs::temp_directory_path() / ("ckpt-fsdp-test-" + std::to_string(::getpid()));
  FixtureCopy() {
    fs::remove_all(path);
    fs::copy(kFixture, path, fs::copy_options::recursive);
  }
  ~FixtureCopy() { fs::remove_all(path); }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

std::string joined(const std::vector<std::string>& problems) {
  std::string text;
  for (const auto& p : problems) text += p + "\n";
  return text;
}

std::string piece_bytes(const AssembledTensor& tensor) {
  std::string bytes;
  for (const Piece& piece : tensor.pieces) {
    const auto span = piece.file->bytes().subspan(piece.offset, piece.count * element_size(piece.dtype));
    bytes.append(reinterpret_cast<const char*>(span.data()), span.size());
  }
  return bytes;
}

}  // namespace

TEST_CASE("detect_fsdp recognises the sharded layout by its names, world size from the .distcp names") {
  const auto layout = detect_fsdp(kFixture);
  REQUIRE(layout);
  CHECK(layout->kind == FsdpKind::sharded);
  CHECK(layout->model_path == kFixture + "/pytorch_model_fsdp_0");
  REQUIRE(layout->optimizer_path);
  CHECK(*layout->optimizer_path == kFixture + "/optimizer_0");
  CHECK(layout->world_size == std::optional<std::size_t>(3));
  CHECK(layout->describe() == "fsdp sharded x3");
  CHECK(fsdp_problems(kFixture).empty());
}

TEST_CASE("detect_fsdp: FULL_STATE_DICT files, and a directory that is neither") {
  FixtureCopy dir;
  fs::remove_all(dir.path / "pytorch_model_fsdp_0");
  fs::remove_all(dir.path / "optimizer_0");
  CHECK_FALSE(detect_fsdp(dir.path.string()));
  CHECK(joined(fsdp_problems(dir.path.string())).find("no FSDP checkpoint") != std::string::npos);
  CHECK_THROWS_AS(FsdpCheckpoint(dir.path.string()), Error);

  fs::copy_file(test::data_path("fsdp/reference.pt"), dir.file("pytorch_model_fsdp.bin"));
  const auto layout = detect_fsdp(dir.path.string());
  REQUIRE(layout);
  CHECK(layout->kind == FsdpKind::full);
  CHECK(layout->describe() == "fsdp full");
  CHECK_FALSE(layout->optimizer_path);
  CHECK_FALSE(layout->world_size);
  CHECK(fsdp_problems(dir.path.string()).empty());
  try {
    FsdpCheckpoint checkpoint(dir.path.string());
    FAIL("a full checkpoint has no DCP reader");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::unsupported);
  }

  std::ofstream(dir.file("optimizer.bin"), std::ios::binary) << "not a torch file";
  const auto problems = fsdp_problems(dir.path.string());
  REQUIRE(problems.size() == 1);
  CHECK(problems[0].find("optimizer.bin") != std::string::npos);
}

TEST_CASE("model_tensors: the full state dict, bit for bit the tensors the generator cut into chunks") {
  const FsdpCheckpoint checkpoint(kFixture);
  const auto tensors = checkpoint.model_tensors();
  const torch_archive::TorchFile reference(test::data_path("fsdp/reference.pt"));
  const pickle::Graph& graph = reference.graph();
  const auto& entries = graph.at(graph.root()).items;
  REQUIRE(tensors.size() * 2 == entries.size());
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    CAPTURE(tensors[i].name);
    CHECK(tensors[i].name == graph.at(entries[2 * i]).text);
    const pickle::TensorRef& expected = graph.tensors[static_cast<std::size_t>(graph.at(entries[2 * i + 1]).integer)];
    CHECK(tensors[i].shape == expected.shape);
    CHECK(tensors[i].dtype == expected.dtype);
    CHECK_FALSE(tensors[i].tied_to);
    const auto extent = reference.tensor_extent(expected);
    CHECK(piece_bytes(tensors[i]) == std::string(reinterpret_cast<const char*>(extent.data()), extent.size()));
  }
  // Cut along dimension 0 only: a piece per non-empty chunk (embed.weight: 4 + 4 + 2 rows; scale: one element).
  CHECK(tensors[0].pieces.size() == 3);
  CHECK(tensors[4].name == "scale");
  CHECK(tensors[4].pieces.size() == 1);

  const FsdpSummary summary = checkpoint.summary();
  CHECK(summary.world_size == std::optional<std::size_t>(3));
  CHECK(summary.tensor_count == 7);
  CHECK(summary.blob_count == 0);
  CHECK(summary.parameter_count == 60 + 42 + 7 + 6 + 1 + 6 + 30);
  CHECK(summary.dtypes == std::vector<DType>{DType::float32});
  CHECK(summary.optimizer_tensor_count == 21);  // step, exp_avg, exp_avg_sq of 7 parameters; param_groups a blob
  CHECK(summary.files.size() == 8);             // .metadata and 3 .distcp files, model and optimizer
  CHECK(summary.dcp_version.empty());
}

TEST_CASE("fsdp_problems: a missing .distcp file is named") {
  FixtureCopy dir;
  fs::remove(dir.path / "pytorch_model_fsdp_0" / "__2_0.distcp");
  bool unreadable = false;
  const auto problems = fsdp_problems(dir.path.string(), &unreadable);
  CHECK_FALSE(unreadable);  // damage, not a variant ckpt cannot read
  REQUIRE(problems.size() == 1);
  CHECK(problems[0].find("pytorch_model_fsdp_0/__2_0.distcp") != std::string::npos);
  try {
    FsdpCheckpoint checkpoint(dir.path.string());
    FAIL("expected an error");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::corrupt);
  }
}

TEST_CASE("fsdp_problems: a truncated .distcp file leaves an item's range past its end") {
  FixtureCopy dir;
  const fs::path shard = dir.path / "optimizer_0" / "__1_0.distcp";
  fs::resize_file(shard, fs::file_size(shard) - 10);
  const auto problems = fsdp_problems(dir.path.string());
  REQUIRE(problems.size() == 1);
  CHECK(problems[0].find("optimizer_0/__1_0.distcp") != std::string::npos);
  CHECK(problems[0].find("past the end") != std::string::npos);
}

TEST_CASE("fsdp_problems: a damaged .metadata, and a FIFO where a .distcp file belongs, are errors, not hangs") {
  FixtureCopy dir;
  std::ofstream(dir.file("optimizer_0/.metadata"), std::ios::binary | std::ios::trunc) << "\x80\x04garbage";
  const fs::path shard = dir.path / "pytorch_model_fsdp_0" / "__0_0.distcp";
  fs::remove(shard);
  REQUIRE(::mkfifo(shard.c_str(), 0600) == 0);
  const auto problems = fsdp_problems(dir.path.string());
  REQUIRE(problems.size() == 2);
  CHECK(problems[0].find("pytorch_model_fsdp_0/__0_0.distcp") != std::string::npos);
  CHECK(problems[1].find("optimizer_0/.metadata") != std::string::npos);
}

TEST_CASE("a chunk item that is not the tensor the metadata describes is corrupt, naming the file and chunk") {
  FixtureCopy dir;
  // Rank 1's first item (embed.weight rows 4-7) overwritten in the middle of its pickle's zip member bytes.
  const fs::path shard = dir.path / "pytorch_model_fsdp_0" / "__1_0.distcp";
  {
    std::fstream f(shard, std::ios::binary | std::ios::in | std::ios::out);
    f.seekp(0);
    f << "garbage!";
  }
  try {
    FsdpCheckpoint checkpoint(dir.path.string());
    FAIL("expected an error");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::corrupt);
    CHECK(e.path() == shard.string());
    CHECK(e.where().find("'model.embed.weight' chunk 1") != std::string::npos);
  }
}

TEST_CASE("detect_fsdp: ranks only from __<rank>_<n>.distcp names, the lowest model directory with .metadata") {
  FixtureCopy dir;
  const fs::path model = dir.path / "pytorch_model_fsdp_0";
  for (const char* name : {"__10_0.distcp", "__1_1.distcp", "__x_0.distcp", "__3_.distcp", "_4_0.distcp",
                           "__5_0.distcp.tmp", "notes.txt"}) {
    std::ofstream(model / name) << "";
  }
  fs::create_directory(model / "__6_0.distcp");  // a directory is not a rank's file
  auto layout = detect_fsdp(dir.path.string());
  REQUIRE(layout);
  CHECK(layout->world_size == std::optional<std::size_t>(4));  // ranks 0, 1, 2 and 10

  fs::rename(model, dir.path / "pytorch_model_fsdp_7");
  fs::create_directory(dir.path / "pytorch_model_fsdp_2");  // no .metadata: not a DCP directory
  fs::create_directory_symlink(dir.path / "pytorch_model_fsdp_7", dir.path / "pytorch_model_fsdp_1");
  layout = detect_fsdp(dir.path.string());
  REQUIRE(layout);
  CHECK(layout->model_path == (dir.path / "pytorch_model_fsdp_7").string());
}

TEST_CASE("fsdp_problems: an optimizer directory without .metadata is incomplete") {
  FixtureCopy dir;
  fs::remove(dir.path / "optimizer_0" / ".metadata");
  const auto problems = fsdp_problems(dir.path.string());
  REQUIRE(problems.size() == 1);
  CHECK(problems[0].find("optimizer_0/.metadata") != std::string::npos);
}

TEST_CASE("a chunk item written as safetensors (newer torch's optional format) is unsupported, not corrupt") {
  FixtureCopy dir;
  const fs::path shard = dir.path / "pytorch_model_fsdp_0" / "__1_0.distcp";
  {
    std::fstream f(shard, std::ios::binary | std::ios::in | std::ios::out);
    f << test::le64(2) << "{}";
  }
  try {
    FsdpCheckpoint checkpoint(dir.path.string());
    FAIL("expected an error");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::unsupported);
    CHECK(e.path() == shard.string());
  }
  bool unreadable = false;  // so rotation keeps it
  CHECK(fsdp_problems(dir.path.string(), &unreadable).size() == 1);
  CHECK(unreadable);
}
