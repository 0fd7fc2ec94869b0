// The contents side of the run-directory model (declared in run_dir.hpp): what one checkpoint or model directory
// holds and whether it is complete: its weights (single file or Hugging Face index), the summary of its
// trainer_state.json, the files a checkpoint and a model directory must have. run_dir.cpp finds the directories.
#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <set>

#include "checkpoint/file_kind.hpp"
#include "checkpoint/run_dir.hpp"
#include "checkpoint/shards.hpp"
#include "checkpoint/fsdp.hpp"
#include "checkpoint/source.hpp"
#include "checkpoint/zero.hpp"
#include "format/json.hpp"
#include "format/safetensors.hpp"
#include "format/torch_archive.hpp"
#include "util/error.hpp"
#include "util/fs.hpp"
#include "util/mapped_file.hpp"

namespace ckpt::checkpoint {
namespace fs = std::filesystem;

namespace {

bool is_shard_file_name(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos &&
         name.find('\0') == std::string::npos;
}

}  // namespace

WeightsIndex read_weights_index(const std::string& index_path) {
  const json::Json doc = json::parse_file(index_path);
  const json::Fields weight_map = json::Fields(doc, index_path, "").object("weight_map");
  WeightsIndex index;
  std::set<std::string> seen;
  weight_map.for_each([&](const std::string& tensor, const json::Value& shard) {
    std::string file = shard.string();
    if (!is_shard_file_name(file)) shard.fail("shard name '" + file + "' is not a file beside the index");
    if (seen.insert(file).second) index.files.push_back(file);
    index.tensor_to_file.emplace_back(tensor, std::move(file));
  });
  return index;
}

std::optional<WeightsFiles> find_weights(const std::string& dir) {
  return find_weights_in([&](const std::string& name) -> std::optional<std::string> {
    const fs::path path = fs::path(dir) / name;
    return fs::exists(path) ? std::optional(path.string()) : std::nullopt;
  });
}

std::optional<WeightsFiles> find_weights_in(
    const std::function<std::optional<std::string>(const std::string& name)>& path_of) {
  for (const char* index : {"model.safetensors.index.json", "pytorch_model.bin.index.json"}) {
    const auto path = path_of(index);
    if (!path) continue;
    return WeightsFiles{index, read_weights_index(*path).files};
  }
  for (const char* single :
       {"model.safetensors", "pytorch_model.bin", "adapter_model.safetensors", "adapter_model.bin"}) {
    if (path_of(single)) return WeightsFiles{std::nullopt, {single}};
  }
  return std::nullopt;
}

json::Json last_log_with(const json::Json& history, const std::function<bool(const std::string&)>& key_matches) {
  if (!history.is_array()) return nullptr;
  for (auto it = history.rbegin(); it != history.rend(); ++it) {
    if (!it->is_object()) continue;
    for (const auto& [key, value] : it->items()) {
      if (key_matches(key)) return *it;
    }
  }
  return nullptr;
}

TrainerStateSummary summarize_trainer_state(const json::Json& state) {
  TrainerStateSummary summary;
  if (!state.is_object()) return summary;
  // Lenient: what list, best and rotate show is a summary, so a member of the wrong type is left out, not an error.
  const json::Fields fields(state, "", "", json::WrongType::absent);
  summary.global_step = fields.optional_int64("global_step");
  summary.epoch = fields.optional_number("epoch");
  summary.best_metric = fields.optional_number("best_metric");
  summary.best_model_checkpoint = fields.optional_string("best_model_checkpoint");
  const auto history = fields.optional_array("log_history");
  if (!history) return summary;
  for (std::size_t i = 0; i < history->size(); ++i) {
    const json::Value item = history->at(i);
    if (!item.json().is_object()) continue;
    const json::Fields entry = item.object();
    if (auto loss = entry.optional_number("loss")) summary.last_loss = loss;
    const auto step = entry.optional_int64("step");
    if (!step) continue;
    std::map<std::string, double> metrics;
    entry.for_each([&](const std::string& key, const json::Value& value) {
      if (key.rfind("eval_", 0) == 0 && value.json().is_number()) metrics[key] = value.number();
    });
    if (!metrics.empty()) summary.eval_by_step[*step] = std::move(metrics);
  }
  return summary;
}

namespace {

// What marks a checkpoint whose weights live where ckpt does not look: a subdirectory it does not know.
std::optional<std::string> foreign_layout_marker(const fs::path& dir) {
  std::optional<std::string> marker;  // the first subdirectory by name: the same words every time
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (!it->is_symlink(ec) && it->is_directory(ec) && (!marker || name + "/" < *marker)) marker = name + "/";
  }
  return marker;
}

// What a checkpoint and a model directory must both pass: no FIFO, socket or device among the files, and weights
// present, readable and holding weights. False (nothing else should be opened) when there was such a special file.
bool assess_files_and_weights(const fs::path& base, Completeness& result) {
  const std::string dir = base.string();
  // A FIFO, socket or device where a checkpoint's files are is nothing ckpt wrote or can read: reported, the
  // checkpoint counted as unreadable (so never rotated away), and nothing in it opened.
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(base, ec)) {
    struct stat st {};
    if (::lstat(entry.path().c_str(), &st) != 0 || S_ISREG(st.st_mode) || S_ISDIR(st.st_mode) || S_ISLNK(st.st_mode))
      continue;
    result.problems.push_back(entry.path().string() + ": not a regular file (" + file_type_name(st.st_mode) + ")");
    result.unreadable = true;
  }
  if (!result.problems.empty()) return false;
  if (zero::has_layout(dir)) {
    try {
      result.layout = zero::Checkpoint(dir).describe();
    } catch (const Error& e) {
      result.layout = "deepspeed";
      result.problems.push_back(e.what());
      result.unreadable |= e.kind() == ErrorKind::unsupported;
    }
  } else if (const auto fsdp = detect_fsdp(dir)) {
    result.layout = fsdp->describe();
    for (auto& problem : fsdp_problems(dir, &result.unreadable)) result.problems.push_back(std::move(problem));
  }
  try {
    auto weights = find_weights(dir);
    if (!weights && !result.layout.empty()) {
      // DeepSpeed's partitions or FSDP's shards are the weights; the Trainer gathers 16-bit ones only under some
      // DeepSpeed settings.
    } else if (!weights) {
      if (const auto marker = foreign_layout_marker(base)) {
        result.problems.push_back("no weights file ckpt knows, but " + *marker + ": a layout ckpt cannot assess");
        result.unreadable = true;
      } else {
        result.problems.push_back("no weights (model.safetensors, pytorch_model.bin or a sharded index)");
      }
    } else {
      for (const auto& file : weights->files) {
        const std::string path = (base / file).string();
        if (!fs::exists(path)) {
          result.problems.push_back("missing weights shard " + file);
          continue;
        }
        // Weights that are not weights (another file under the name, {} or a list) cannot be resumed from, but
        // no interrupted save leaves them: not ours to judge, so unreadable, never deleted.
        try {
          if (file.ends_with(".safetensors")) {
            const auto header = safetensors::read_header(path);
            const bool structure = std::any_of(header.metadata.begin(), header.metadata.end(),
                                               [](const auto& m) { return m.first == kStructureKey; });
            if (structure)
              throw Error(ErrorKind::unsupported, path, "",
                          "holds another checkpoint file (ckpt_structure), not weights");
            if (header.tensors.empty()) throw Error(ErrorKind::unsupported, path, "", "holds no tensors, not weights");
          } else {
            torch_archive::TorchFile torch(path);
            if (auto why = kind_problem(torch.graph(), FileKind::weights))
              throw Error(ErrorKind::unsupported, path, "", "is not weights: " + *why);
          }
        } catch (const Error& e) {
          result.problems.push_back(e.with_context(path, "").what());
          result.unreadable |= e.kind() == ErrorKind::unsupported;
        }
      }
    }
  } catch (const Error& e) {
    result.problems.push_back(e.what());
    result.unreadable |= e.kind() == ErrorKind::unsupported;
  }
  return true;
}

}  // namespace

const std::pair<const std::int64_t, std::map<std::string, double>>* newest_evaluation_at(
    const TrainerStateSummary& state, std::int64_t step) {
  const auto after = state.eval_by_step.upper_bound(step);
  return after == state.eval_by_step.begin() ? nullptr : &*std::prev(after);
}

Completeness assess_completeness(const std::string& dir) {
  Completeness result;
  const fs::path base(dir);
  if (!assess_files_and_weights(base, result)) return result;
  try {
    find_optimizer_shards(dir);  // a sharded optimizer counts only whole
  } catch (const Error& e) {
    result.problems.push_back(e.what());
    result.unreadable |= e.kind() == ErrorKind::unsupported;
  }
  const std::string state = (base / "trainer_state.json").string();
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(state, ec))) {
    result.problems.push_back("no trainer_state.json");
  } else {
    result.has_trainer_state = true;
    try {
      result.state = summarize_trainer_state(json::parse_file(state));
    } catch (const Error& e) {
      result.problems.push_back(e.what());
      result.unreadable |= e.kind() == ErrorKind::unsupported;
    }
  }
  result.complete = result.problems.empty();
  return result;
}

bool is_model_directory(const std::string& dir) {
  std::error_code ec;
  fs::path named = fs::absolute(dir, ec).lexically_normal();  // `.`, `..` and `dir/` by the names they stand for
  if (named.filename().empty()) named = named.parent_path();
  if (checkpoint_step(named.filename().string())) return false;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name == "trainer_state.json") return false;
    const auto kind = promised_kind(name);
    if (kind && *kind != FileKind::weights) return false;
  }
  return true;
}

Completeness assess_model_directory(const std::string& dir) {
  Completeness result;
  const fs::path base(dir);
  if (!assess_files_and_weights(base, result)) return result;
  const std::string config = (base / "config.json").string();
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(config, ec))) {
    result.problems.push_back("no config.json");
  } else {
    try {
      if (!json::parse_file(config).is_object()) result.problems.push_back(config + ": not a JSON object");
    } catch (const Error& e) {
      result.problems.push_back(e.what());
      result.unreadable |= e.kind() == ErrorKind::unsupported;
    }
  }
  result.complete = result.problems.empty();
  return result;
}

bool holds_named_checkpoint(const std::string& dir) {
  std::error_code ec;
  return fs::exists(fs::symlink_status(fs::path(dir) / "trainer_state.json", ec));
}

}  // namespace ckpt::checkpoint
