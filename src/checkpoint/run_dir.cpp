#include "checkpoint/run_dir.hpp"

#include <algorithm>
#include <filesystem>
#include <set>

#include "format/json.hpp"
#include "format/safetensors.hpp"
#include "format/torch_archive.hpp"
#include "util/error.hpp"
#include "util/mapped_file.hpp"

namespace ckpt::checkpoint {
namespace fs = std::filesystem;

std::optional<std::int64_t> checkpoint_step(const std::string& name) {
  static constexpr std::string_view kPrefix = "checkpoint-";
  if (name.size() <= kPrefix.size() || name.compare(0, kPrefix.size(), kPrefix) != 0) return std::nullopt;
  std::int64_t step = 0;
  for (std::size_t i = kPrefix.size(); i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return std::nullopt;
    if (__builtin_mul_overflow(step, 10, &step) || __builtin_add_overflow(step, name[i] - '0', &step)) return std::nullopt;
  }
  return step;
}

std::vector<CheckpointDir> discover_checkpoints(const std::string& run_dir) {
  std::vector<CheckpointDir> found;
  std::error_code ec;
  fs::directory_iterator it(run_dir, ec);
  if (ec) throw Error(ec == std::errc::no_such_file_or_directory ? ErrorKind::not_found : ErrorKind::io, run_dir, "",
                      "cannot list directory: " + ec.message());
  for (const auto& entry : it) {
    const std::string name = entry.path().filename().string();
    auto step = checkpoint_step(name);
    if (!step || !entry.is_directory(ec) || entry.is_symlink(ec)) continue;
    found.push_back({name, entry.path().string(), *step});
  }
  std::sort(found.begin(), found.end(), [](const CheckpointDir& a, const CheckpointDir& b) {
    return a.step != b.step ? a.step < b.step : a.name < b.name;
  });
  return found;
}

std::optional<WeightsFiles> find_weights(const std::string& dir) {
  const fs::path base(dir);
  for (const char* index : {"model.safetensors.index.json", "pytorch_model.bin.index.json"}) {
    if (!fs::exists(base / index)) continue;
    WeightsFiles w;
    w.index = index;
    const json::Json doc = json::parse_file((base / index).string());
    if (!doc.is_object() || !doc.contains("weight_map") || !doc["weight_map"].is_object()) {
      throw Error(ErrorKind::corrupt, (base / index).string(), "weight_map", "missing or not an object");
    }
    std::set<std::string> seen;
    for (const auto& [tensor, shard] : doc["weight_map"].items()) {
      if (!shard.is_string()) throw Error(ErrorKind::corrupt, (base / index).string(), "weight_map", "'" + tensor + "' maps to a non-string");
      const std::string file = shard.get<std::string>();
      if (file.find('/') != std::string::npos || file == "..") {
        throw Error(ErrorKind::corrupt, (base / index).string(), "weight_map", "shard name '" + file + "' leaves the directory");
      }
      if (seen.insert(file).second) w.files.push_back(file);
    }
    return w;
  }
  for (const char* single : {"model.safetensors", "pytorch_model.bin", "adapter_model.safetensors", "adapter_model.bin"}) {
    if (fs::exists(base / single)) return WeightsFiles{std::nullopt, {single}};
  }
  return std::nullopt;
}

Completeness assess_completeness(const std::string& dir) {
  Completeness result;
  const fs::path base(dir);
  try {
    auto weights = find_weights(dir);
    if (!weights) {
      result.problems.push_back("no weights (model.safetensors, pytorch_model.bin or a sharded index)");
    } else {
      for (const auto& file : weights->files) {
        const std::string path = (base / file).string();
        if (!fs::exists(path)) {
          result.problems.push_back("missing weights shard " + file);
          continue;
        }
        try {
          if (file.ends_with(".safetensors")) {
            MappedFile mapped(path);
            safetensors::parse(mapped.bytes());
          } else {
            torch_archive::TorchFile torch(path);
          }
        } catch (const Error& e) {
          result.problems.push_back(e.with_context(path, "").what());
        }
      }
    }
  } catch (const Error& e) {
    result.problems.push_back(e.what());
  }
  const std::string state = (base / "trainer_state.json").string();
  if (!fs::exists(state)) {
    result.problems.push_back("no trainer_state.json");
  } else {
    try {
      json::parse_file(state);
    } catch (const Error& e) {
      result.problems.push_back(e.what());
    }
  }
  result.complete = result.problems.empty();
  return result;
}

}  // namespace ckpt::checkpoint
