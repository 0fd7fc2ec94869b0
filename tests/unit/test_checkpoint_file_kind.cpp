#include <doctest/doctest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "checkpoint/archive.hpp"
#include "checkpoint/convert.hpp"
#include "checkpoint/file_kind.hpp"
#include "checkpoint/inspect.hpp"
#include "checkpoint/source.hpp"
#include "format/safetensors.hpp"
#include "format/torch_archive.hpp"
#include "format/zip_writer.hpp"
#include "util/atomic_file.hpp"
#include "util/error.hpp"

using namespace ckpt;
using checkpoint::FileKind;
using pickle::Kind;
using pickle::NodeId;
namespace fs = std::filesystem;

namespace {

// A value graph built bottom-up, written as torch.save writes it (float32 tensors of zeros).
class Values {
 public:
  NodeId text(const std::string& s) { return leaf(Kind::string, s); }
  NodeId integer(std::int64_t v) {
    pickle::Node n;
    n.kind = Kind::integer;
    n.integer = v;
    return g_.add(std::move(n));
  }
  NodeId number(double v) {
    pickle::Node n;
    n.kind = Kind::floating;
    n.number = v;
    return g_.add(std::move(n));
  }
  NodeId list(std::vector<NodeId> items) { return container(Kind::list, std::move(items)); }
  // {keys[0]: values[0], ...}
  NodeId dict(const std::vector<std::pair<std::string, NodeId>>& entries) {
    std::vector<NodeId> items;
    for (const auto& [key, value] : entries) {
      items.push_back(text(key));
      items.push_back(value);
    }
    return container(Kind::dict, std::move(items));
  }
  NodeId tensor(std::int64_t numel) {
    g_.storages.push_back(
        {std::to_string(g_.storages.size()), DType::float32, "cpu", static_cast<std::uint64_t>(numel), false});
    pickle::TensorRef t;
    t.storage = static_cast<std::uint32_t>(g_.storages.size() - 1);
    t.dtype = DType::float32;
    t.shape = {numel};
    t.stride = {1};
    return g_.add_tensor(t);
  }

  void write(const std::string& path, NodeId root) {
    g_.set_root(root);
    torch_archive::write_file(path, g_, [&](std::size_t storage, zip::Writer& zip) {
      const std::vector<std::uint8_t> zeros(g_.storages[storage].numel * 4);
      zip.append(zeros);
    });
  }

 private:
  NodeId leaf(Kind kind, const std::string& s) {
    pickle::Node n;
    n.kind = kind;
    n.text = s;
    return g_.add(std::move(n));
  }
  NodeId container(Kind kind, std::vector<NodeId> items) {
    pickle::Node n;
    n.kind = kind;
    n.items = std::move(items);
    return g_.add(std::move(n));
  }
  pickle::Graph g_;
};

struct TempDir {
  fs::path path = fs::temp_directory_path() / ("ckpt-file-kind-test-" + std::to_string(::getpid()));
  TempDir() {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string file(const std::string& name) const { return (path / name).string(); }
  std::string write(const std::string& name, const std::string& bytes) const {
    std::ofstream(file(name), std::ios::binary | std::ios::trunc) << bytes;
    return file(name);
  }
};

FileKind kind_of(const std::string& path) { return checkpoint::inspect_file(path, {}).kind; }

// Each pickled kind of file, under a name that promises nothing: inspect goes by content.
std::string write_pickled(const TempDir& dir, const std::string& name, FileKind kind) {
  Values v;
  NodeId root = 0;
  switch (kind) {
    case FileKind::weights:
      root = v.dict({{"layer.weight", v.tensor(4)}, {"layer.bias", v.tensor(2)}});
      break;
    case FileKind::optimizer:
      root = v.dict({{"state", v.dict({})},
                     {"param_groups", v.list({v.dict({{"lr", v.number(0.1)}, {"params", v.list({v.integer(0)})}})})}});
      break;
    case FileKind::scheduler:
      root = v.dict({{"base_lrs", v.list({v.number(0.1)})},
                     {"last_epoch", v.integer(3)},
                     {"_last_lr", v.list({v.number(0.05)})}});
      break;
    case FileKind::scaler:
      root = v.dict({{"scale", v.number(65536)},
                     {"growth_factor", v.number(2)},
                     {"backoff_factor", v.number(0.5)},
                     {"growth_interval", v.integer(2000)},
                     {"_growth_tracker", v.integer(0)}});
      break;
    case FileKind::rng_state:
      root = v.dict({{"python", v.integer(1)}, {"cpu", v.tensor(2)}});
      break;
    case FileKind::training_args:
      root = v.dict({{"learning_rate", v.number(0.001)}, {"seed", v.integer(42)}});
      break;
    default:
      root = v.list({v.integer(1), v.text("x")});
      break;
  }
  v.write(dir.file(name), root);
  return dir.file(name);
}

}  // namespace

TEST_CASE("file kinds: the kind a name promises") {
  for (const char* name : {"pytorch_model.bin", "model.safetensors", "adapter_model.bin", "adapter_model.safetensors",
                           "pytorch_model-00001-of-00002.bin", "model-00002-of-00002.safetensors"}) {
    CAPTURE(name);
    CHECK(checkpoint::promised_kind(name) == FileKind::weights);
  }
  CHECK(checkpoint::promised_kind("optimizer.pt") == FileKind::optimizer);
  CHECK(checkpoint::promised_kind("optimizer_3.pt") == FileKind::optimizer);
  CHECK(checkpoint::promised_kind("scheduler.pt") == FileKind::scheduler);
  CHECK(checkpoint::promised_kind("scaler.pt") == FileKind::scaler);
  CHECK(checkpoint::promised_kind("rng_state.pth") == FileKind::rng_state);
  CHECK(checkpoint::promised_kind("rng_state_1.pth") == FileKind::rng_state);
  for (const char* name :
       {"optimizer.bin", "optimizer_.pt", "optimizer_a.pt", "rng_state.pt", "model.bin", "pytorch_model.safetensors",
        "trainer_state.json", "training_args.bin", "config.json", "Optimizer.pt", ""}) {
    CAPTURE(name);
    CHECK_FALSE(checkpoint::promised_kind(name));
  }
}

TEST_CASE("file kinds: inspect classifies a torch.save file by its content, not its name") {
  TempDir dir;
  for (FileKind kind : {FileKind::weights, FileKind::optimizer, FileKind::scheduler, FileKind::scaler,
                        FileKind::rng_state, FileKind::pickle}) {
    CAPTURE(checkpoint::kind_name(kind));
    CHECK(kind_of(write_pickled(dir, "blob.pt", kind)) == kind);
  }
  // A name that promises one kind over content of another: the content decides (and --verify reports the clash).
  CHECK(kind_of(write_pickled(dir, "optimizer.pt", FileKind::weights)) == FileKind::weights);
  CHECK(kind_of(write_pickled(dir, "pytorch_model.bin", FileKind::scheduler)) == FileKind::scheduler);
  const auto report = checkpoint::inspect_file(write_pickled(dir, "optimizer.pt", FileKind::weights), {.verify = true});
  REQUIRE(report.verify);
  CHECK_FALSE(report.verify->ok());
}

TEST_CASE("file kinds: where content alone cannot tell, the name does") {
  TempDir dir;
  // A plain dict is training arguments only under training_args*, as ckpt save writes them; else a pickle.
  CHECK(kind_of(write_pickled(dir, "training_args.bin", FileKind::training_args)) == FileKind::training_args);
  CHECK(kind_of(write_pickled(dir, "hparams.bin", FileKind::training_args)) == FileKind::pickle);
  // An empty dict is a disabled GradScaler's state under a scaler name, else a pickle.
  Values v;
  v.write(dir.file("scaler.pt"), v.dict({}));
  CHECK(kind_of(dir.file("scaler.pt")) == FileKind::scaler);
  Values w;
  w.write(dir.file("empty.pt"), w.dict({}));
  CHECK(kind_of(dir.file("empty.pt")) == FileKind::pickle);
  // A dict naming generators other than the Trainer's is no RNG state.
  Values r;
  r.write(dir.file("rng_state.pth"), r.dict({{"python", r.integer(1)}, {"torch_seed", r.integer(2)}}));
  CHECK(kind_of(dir.file("rng_state.pth")) == FileKind::pickle);
}

TEST_CASE("file kinds: safetensors weights, and a state file ckpt stored as safetensors, by what it holds") {
  TempDir dir;
  const auto write_safetensors = [&](const std::string& name,
                                     const std::vector<std::pair<std::string, std::string>>& metadata) {
    safetensors::write_file(dir.file(name), {{"w", DType::float32, {2}}}, metadata,
                            [](const safetensors::OutputTensor&, AtomicFile& out) {
                              const std::vector<std::uint8_t> zeros(8);
                              out.write(zeros);
                            });
    return dir.file(name);
  };
  CHECK(kind_of(write_safetensors("anything.safetensors", {{"format", "pt"}})) == FileKind::weights);
  // convert --include-state's form of a state file: its structure in the metadata; classified by that value, under
  // the name it was converted from.
  for (FileKind kind : {FileKind::optimizer, FileKind::scheduler, FileKind::scaler}) {
    CAPTURE(checkpoint::kind_name(kind));
    const std::string stored = dir.file("state.safetensors");
    fs::remove(stored);
    checkpoint::convert(write_pickled(dir, "state.pt", kind), stored, {});
    CHECK(kind_of(stored) == kind);
  }
}

TEST_CASE("file kinds: JSON files by their keys, config.json by its name") {
  TempDir dir;
  CHECK(kind_of(dir.write("state.json", R"({"global_step": 10, "log_history": []})")) == FileKind::trainer_state);
  CHECK(kind_of(
            dir.write("index.json", R"({"metadata": {"total_size": 8}, "weight_map": {"w": "model.safetensors"}})")) ==
        FileKind::weights_index);
  CHECK(kind_of(dir.write("settings.json", R"({"model_type": "mlp", "hidden_size": 8})")) == FileKind::config);
  CHECK(kind_of(dir.write("config.json", R"({"hidden_size": 8})")) == FileKind::config);
  CHECK(kind_of(dir.write("other.json", R"({"hidden_size": 8})")) == FileKind::json);
  CHECK(kind_of(dir.write("list.json", R"([1, 2])")) == FileKind::json);
  // A trainer state needs both keys.
  CHECK(kind_of(dir.write("partial.json", R"({"global_step": 10})")) == FileKind::json);
}

TEST_CASE("file kinds: an archive by its magic, whatever its name") {
  TempDir dir;
  fs::create_directories(dir.path / "checkpoint-5");
  std::ofstream(dir.path / "checkpoint-5" / "trainer_state.json") << R"({"global_step": 5, "log_history": []})";
  checkpoint::archive_checkpoint((dir.path / "checkpoint-5").string(), dir.file("saved.bin"), {});
  CHECK(kind_of(dir.file("saved.bin")) == FileKind::archive);
}

TEST_CASE(
    "file kinds: unknown content is other in a directory's report and refused alone; unreadable files are errors") {
  TempDir dir;
  fs::create_directories(dir.path / "checkpoint-1");
  const std::string notes = (dir.path / "checkpoint-1" / "notes.txt").string();
  std::ofstream(notes) << "free text, no format ckpt reads\n";
  std::ofstream(dir.path / "checkpoint-1" / "pytorch_model.bin", std::ios::binary)
      << std::string("PK\x03\x04", 4) << "truncated";
  const auto report = checkpoint::inspect_checkpoint((dir.path / "checkpoint-1").string(), {});
  std::map<std::string, FileKind> kinds;
  for (const auto& f : report.files) kinds[f.file] = f.kind;
  CHECK(kinds.at("notes.txt") == FileKind::other);
  CHECK(kinds.at("pytorch_model.bin") == FileKind::error);
  try {
    checkpoint::inspect_file(notes, {});
    FAIL("inspect_file read free text");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::unsupported);
    CHECK(e.path() == notes);
  }
}

TEST_CASE("file kinds: what a file of a promised kind must hold") {
  TempDir dir;
  const auto problem = [&](FileKind written, FileKind promised) {
    return checkpoint::kind_problem(checkpoint::load_source(write_pickled(dir, "blob.pt", written))->graph(), promised);
  };
  for (FileKind kind : {FileKind::weights, FileKind::optimizer, FileKind::scheduler, FileKind::scaler}) {
    CAPTURE(checkpoint::kind_name(kind));
    CHECK_FALSE(problem(kind, kind));
    for (FileKind other :
         {FileKind::weights, FileKind::optimizer, FileKind::scheduler, FileKind::scaler, FileKind::rng_state}) {
      CAPTURE(checkpoint::kind_name(other));
      if (other != kind) CHECK(problem(kind, other));
    }
  }
  // Classified as RNG state by its keys, but "python" is no random.getstate() and there is no "numpy".
  CHECK(problem(FileKind::rng_state, FileKind::rng_state));
  CHECK(*problem(FileKind::pickle, FileKind::optimizer) == "not a dict");
}
