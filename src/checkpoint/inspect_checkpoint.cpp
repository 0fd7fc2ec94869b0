// Inspecting a checkpoint directory (declared in inspect.hpp): each file through inspect_checkpoint_file (inspect.cpp,
// the reporters of each kind of file), then the checks across its files and its summary.
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <map>
#include <set>

#include "checkpoint/best.hpp"
#include "checkpoint/fsdp.hpp"
#include "checkpoint/inspect.hpp"
#include "checkpoint/run_dir.hpp"
#include "checkpoint/tensor_scan.hpp"
#include "checkpoint/zero.hpp"
#include "checkpoint/shards.hpp"
#include "format/torch_archive.hpp"
#include "util/fs.hpp"

namespace ckpt::checkpoint {
namespace fs = std::filesystem;

namespace {

// ---- checks across the files of one checkpoint ----

// PyTorch numbers an optimizer's parameters in model.parameters() order: the state dict's order with
// buffers and tied duplicates left out. A safetensors file is ordered by dtype and name instead, so when the
// order does not match, shapes are compared as a multiset.
json::Json check_param_shapes(const FileReport& optimizer, const std::vector<const FileReport*>& weights) {
  std::vector<std::vector<std::int64_t>> params;
  for (const FileReport* w : weights) {
    for (const auto& t : w->tensors) {
      if (!t.tied_to && is_floating(t.dtype)) params.push_back(t.shape);
    }
  }
  const auto& states = optimizer.optimizer_state_shapes;
  std::size_t in_order = 0;
  for (const auto& [index, shape] : states) {
    if (index >= 0 && static_cast<std::size_t>(index) < params.size() &&
        params[static_cast<std::size_t>(index)] == shape)
      ++in_order;
  }
  if (in_order == states.size()) {
    return {{"status", "ok"}, {"method", "order"}, {"checked", states.size()}, {"mismatches", json::Json::array()}};
  }
  std::map<std::vector<std::int64_t>, std::int64_t> available;
  for (const auto& p : params) ++available[p];
  json::Json mismatches = json::Json::array();
  for (const auto& [index, shape] : states) {
    if (--available[shape] < 0) mismatches.push_back({{"param", index}, {"shape", shape}});
  }
  return {{"status", mismatches.empty() ? "ok" : "mismatch"},
          {"method", "multiset"},
          {"checked", states.size()},
          {"mismatches", mismatches}};
}

void check_index(const std::string& dir, const FileReport& index, const std::vector<FileReport>& files,
                 Verification& v) {
  // The file is read again here: what summarize_json saw may have changed since.
  const WeightsIndex weights_index = read_weights_index(index.path);
  std::map<std::string, std::set<std::string>> shard_tensors;
  for (const auto& f : files) {
    for (const auto& t : f.tensors) shard_tensors[f.file].insert(t.name);
  }
  std::size_t listed = 0;
  for (const auto& [tensor, file] : weights_index.tensor_to_file) {
    ++listed;
    auto it = shard_tensors.find(file);
    if (it == shard_tensors.end()) {
      if (!fs::exists(fs::path(dir) / file)) v.errors.push_back(index.file + ": shard '" + file + "' is missing");
      continue;
    }
    if (!it->second.erase(tensor)) v.errors.push_back(index.file + ": tensor '" + tensor + "' is not in " + file);
  }
  v.checks.push_back("index lists " + std::to_string(listed) + " tensors, each in its shard");
}

CheckpointSummary summarize_checkpoint(const CheckpointReport& report, const std::optional<TrainerStateSummary>& state,
                                       const std::vector<const FileReport*>& weights) {
  CheckpointSummary summary;
  summary.step = report.step;
  if (state) {
    if (state->global_step) summary.step = state->global_step;
    summary.epoch = state->epoch;
    summary.loss = state->last_loss;
    if (const auto* evaluation = summary.step ? newest_evaluation_at(*state, *summary.step) : nullptr) {
      summary.eval_step = evaluation->first;
      summary.metrics = evaluation->second;
    }
    summary.best_checkpoint = best_checkpoint_name(*state);
    summary.best_metric_name = best_metric_name(*state);
    summary.best_metric = state->best_metric;
  }
  for (const auto& f : report.files) summary.size_bytes += f.size_bytes;
  if (!weights.empty()) summary.parameters = 0;
  for (const FileReport* w : weights) {
    for (const auto& t : w->tensors) {
      if (t.tied_to) continue;
      auto total = std::find_if(summary.dtypes.begin(), summary.dtypes.end(),
                                [&](const DtypeTotal& d) { return d.dtype == t.dtype; });
      if (total == summary.dtypes.end()) total = summary.dtypes.insert(total, DtypeTotal{t.dtype});
      const std::uint64_t n = *torch_archive::numel(t.shape);
      *summary.parameters += n;
      ++total->tensors;
      total->parameters += n;
      total->bytes += n * element_size(t.dtype);
    }
  }
  return summary;
}

}  // namespace

PathKind classify_path(const std::string& path) {
  std::error_code ec;
  const auto status = fs::status(path, ec);
  if (ec || !fs::exists(status)) throw Error(ErrorKind::not_found, path, "", "no such file or directory");
  if (!fs::is_directory(status)) return PathKind::file;
  if (!discover_checkpoints(path).empty()) return PathKind::run;
  return checkpoint_step(fs::path(path).lexically_normal().filename().string()) ? PathKind::checkpoint
         : fs::exists(fs::path(path) / "trainer_state.json") || find_weights(path) ||
                 fs::exists(fs::path(path) / "config.json")
             ? PathKind::checkpoint
             : PathKind::run;
}

namespace {

// docs/inspect-json.md "deepspeed". With `verify`, NaN and Inf among the fp32 master weights (read here: the only
// tensor bytes inspect of a DeepSpeed checkpoint reads).
json::Json deepspeed_json(const zero::Checkpoint& z, bool verify) {
  json::Json groups = json::Json::array();
  for (const auto& g : z.groups()) {
    groups.push_back({{"parameters", g.parameters.size()}, {"numel", g.numel}, {"hyperparameters", g.hyperparameters}});
  }
  json::Json ranks = json::Json::array();
  for (std::size_t r = 0; r < z.ranks().size(); ++r) {
    const auto& rank = z.ranks()[r];
    ranks.push_back({{"rank", r},
                     {"optim_file", fs::path(rank.optim).filename().string()},
                     {"model_file",
                      rank.model.empty() ? json::Json(nullptr) : json::Json(fs::path(rank.model).filename().string())},
                     {"size_bytes", rank.bytes},
                     {"partition_numel", rank.partition_numel}});
  }
  json::ObjectBuilder shared;
  for (const auto& [alias, target] : z.shared()) shared.set(alias, target);
  json::Json out{{"layout", z.describe()},
                 {"stage", z.stage()},
                 {"world_size", z.world_size()},
                 {"tag", z.tag()},
                 {"ds_version", z.ds_version()},
                 {"global_steps", z.global_steps()},
                 {"dtype", std::string(torch_name(z.model_dtype()))},
                 {"parameters", z.trainable_parameters() + z.frozen_parameters()},
                 {"trainable_parameters", z.trainable_parameters()},
                 {"frozen_parameters", z.frozen_parameters()},
                 {"buffers", z.buffers().size()},
                 {"shared", shared.take()},
                 {"param_groups", std::move(groups)},
                 {"ranks", std::move(ranks)}};
  if (verify) {
    NonFiniteCount total;
    const std::size_t first_trainable = z.buffers().size() + z.frozen().size();
    const auto& tensors = z.fp32_state_dict();
    for (std::size_t i = first_trainable; i < tensors.size(); ++i) {
      for (const Piece& p : tensors[i].pieces) {
        const auto bytes = p.file->bytes().subspan(static_cast<std::size_t>(p.offset),
                                                   static_cast<std::size_t>(p.count * element_size(p.dtype)));
        const auto c = count_nonfinite(bytes, p.dtype, {static_cast<std::int64_t>(p.count)}, {1});
        total.nan += c.nan;
        total.inf += c.inf;
      }
    }
    out["nonfinite"] = {{"nan", total.nan}, {"inf", total.inf}};
  }
  return out;
}

}  // namespace

CheckpointReport inspect_checkpoint(const std::string& dir, const InspectOptions& options) {
  CheckpointReport report;
  report.path = dir;
  report.name = fs::path(dir).lexically_normal().filename().string();
  if (report.name.empty()) report.name = fs::path(dir).parent_path().filename().string();
  report.step = checkpoint_step(report.name);

  std::vector<std::string> paths;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    // A FIFO or device is listed too, to fail as a file that cannot be read (ReadOnlyFile never waits on one).
    if (entry.is_regular_file(ec) || entry.is_other(ec)) paths.push_back(entry.path().string());
  }
  if (ec) throw Error(ErrorKind::io, dir, "", "cannot list directory: " + ec.message());
  std::sort(paths.begin(), paths.end());
  for (const auto& path : paths) {
    try {
      report.files.push_back(inspect_checkpoint_file(path, options));
    } catch (const Error& e) {
      FileReport failed;
      failed.path = path;
      failed.file = fs::path(path).filename().string();
      struct stat st {};
      if (::lstat(path.c_str(), &st) == 0) failed.size_bytes = static_cast<std::uint64_t>(st.st_size);
      failed.kind = FileKind::error;
      failed.error = e;
      report.files.push_back(std::move(failed));
    }
  }

  report.model_directory = is_model_directory(dir);
  const Completeness completeness = report.model_directory ? assess_model_directory(dir) : assess_completeness(dir);
  report.complete = completeness.complete;
  report.problems = completeness.problems;
  report.layout = completeness.layout;
  std::optional<zero::Checkpoint> deepspeed;
  if (!report.model_directory && zero::has_layout(dir)) {
    try {
      deepspeed.emplace(dir);
    } catch (const Error&) {
      // assess_completeness said why
    }
  }
  if (deepspeed) {
    for (auto& f : report.files) {
      if (f.file == zero::kLatestName) {
        f.kind = FileKind::deepspeed;
        f.fields = {{"tag", deepspeed->tag()}};
      } else if (f.file == "zero_to_fp32.py") {
        f.kind = FileKind::deepspeed;
      }
    }
    for (const Source* s : deepspeed->sources()) {
      FileReport f = inspect_loaded_file(*s, FileKind::deepspeed, options);  // "deepspeed" says what they hold
      f.file = deepspeed->tag() + "/" + f.file;
      report.files.push_back(std::move(f));
    }
  }

  try {
    const auto shards = find_optimizer_shards(dir);
    report.optimizer_sharded = shards.has_value();
    report.world_size = shards ? shards->world_size : checkpoint_world_size(dir);
  } catch (const Error&) {
    // An incomplete shard set: assess_completeness said why.
  }

  std::vector<const FileReport*> weights;
  std::vector<FileReport*> optimizers;  // optimizer.pt (or its safetensors form), or each shard
  const FileReport* index = nullptr;
  const FileReport* trainer_state = nullptr;
  for (auto& f : report.files) {
    if (f.kind == FileKind::weights && f.file.rfind("adapter_", 0) != 0) weights.push_back(&f);
    if (f.kind == FileKind::optimizer &&
        (f.file == "optimizer.pt" || f.file == "optimizer.safetensors" || f.fields.contains(kShardKey))) {
      optimizers.push_back(&f);
    }
    if (f.kind == FileKind::weights_index) index = &f;
    if (f.kind == FileKind::trainer_state) trainer_state = &f;
  }
  // With a sharded set, only its shards are the model (a stray single file would be counted twice).
  if (index) {
    std::erase_if(weights, [&](const FileReport* w) {
      const auto shards = index->fields.find("shards");
      return shards == index->fields.end() || !shards->contains(w->file);
    });
  }
  for (FileReport* optimizer : optimizers) {
    if (!weights.empty()) optimizer->fields["param_shape_check"] = check_param_shapes(*optimizer, weights);
  }
  if (weights.empty()) {  // an adapter's checkpoint: its weights are the model it trains
    for (const auto& f : report.files) {
      if (f.kind == FileKind::weights && f.file.rfind("adapter_", 0) == 0) weights.push_back(&f);
    }
  }
  report.summary = summarize_checkpoint(report, completeness.state, weights);
  if (const auto layout = report.model_directory || deepspeed ? std::nullopt : detect_fsdp(dir);
      layout && layout->kind == FsdpKind::sharded) {
    try {
      const FsdpSummary s = FsdpCheckpoint(dir).summary();
      json::Json dtypes = json::Json::array();
      for (DType d : s.dtypes) dtypes.push_back(std::string(torch_name(d)));
      json::Json files = json::Json::array();
      for (const auto& f : s.files) {
        files.push_back({{"file", fs::path(f.path).lexically_relative(dir).generic_string()}, {"size_bytes", f.size}});
      }
      report.fsdp = {{"layout", layout->describe()},
                     {"world_size", s.world_size ? json::Json(*s.world_size) : json::Json(nullptr)},
                     {"dtypes", dtypes},
                     {"parameters", s.parameter_count},
                     {"tensors", s.tensor_count},
                     {"blobs", s.blob_count},
                     {"optimizer_tensors", s.optimizer_tensor_count},
                     {"dcp_version", s.dcp_version.empty() ? json::Json(nullptr) : json::Json(s.dcp_version)},
                     {"files", files}};
      if (s.world_size) report.world_size = static_cast<int>(*s.world_size);
      if (!report.summary.parameters && !s.dtypes.empty()) {
        report.summary.parameters = s.parameter_count;
        report.summary.dtypes = {{s.dtypes.front(), s.tensor_count, s.parameter_count, 0}};
      }
    } catch (const Error&) {
      // assess_completeness said why
    }
  }
  if (deepspeed) {
    report.world_size = deepspeed->world_size();
    report.deepspeed = deepspeed_json(*deepspeed, options.verify);
    if (!report.summary.parameters) {  // no gathered weights: the model's parameters as the partitions hold them
      const std::uint64_t parameters = deepspeed->trainable_parameters() + deepspeed->frozen_parameters();
      report.summary.parameters = parameters;
      report.summary.dtypes = {{deepspeed->model_dtype(), 0, parameters, 0}};
      for (const auto& t : deepspeed->fp32_state_dict()) report.summary.dtypes.front().tensors += !t.tied_to;
    }
  }

  if (options.verify) {
    Verification v;
    for (const auto& f : report.files) {
      if (f.error) v.errors.push_back(f.error->what());
    }
    if (index) {
      try {
        check_index(dir, *index, report.files, v);
      } catch (const Error& e) {
        v.errors.push_back(e.what());
      }
    }
    for (const FileReport* optimizer : optimizers) {
      const auto check = optimizer->fields.find("param_shape_check");
      if (check == optimizer->fields.end()) continue;
      v.checks.push_back(optimizer->file + " state shapes match the weights");
      const auto status = check->find("status");
      if (status == check->end() || *status != "ok")
        v.errors.push_back(optimizer->file + ": state shapes do not match the weights");
    }
    if (trainer_state && report.step) {
      v.checks.push_back("trainer_state.json global_step matches the directory name");
      const auto found = trainer_state->fields.find("global_step");
      const json::Json gs = found == trainer_state->fields.end() ? json::Json(nullptr) : *found;
      if (!gs.is_number_integer() || gs.get<std::int64_t>() != *report.step) {
        v.errors.push_back("trainer_state.json: global_step " + json::dump(gs) + " but the directory is " +
                           report.name);
      }
    }
    if (report.model_directory) v.checks.push_back("a model directory: weights and config.json");
    if (deepspeed) {
      v.checks.push_back(
          "DeepSpeed partitions cover every parameter exactly; ranks agree on stage, world size, groups, "
          "step and version");
      if (report.step && deepspeed->global_steps() != *report.step) {
        v.errors.push_back(deepspeed->tag() + ": global_steps " + std::to_string(deepspeed->global_steps()) +
                           " but the directory is " + report.name);
      }
    }
    for (const auto& p : report.problems) v.errors.push_back("incomplete: " + p);
    report.verify = std::move(v);
  }
  return report;
}

std::vector<std::string> verification_errors(const CheckpointReport& report) {
  std::vector<std::string> errors;
  for (const auto& f : report.files) {
    if (f.error) errors.push_back(f.error->what());
    if (f.verify) {
      for (const auto& e : f.verify->errors) errors.push_back(f.file + ": " + e);
    }
  }
  if (report.verify) errors.insert(errors.end(), report.verify->errors.begin(), report.verify->errors.end());
  return errors;
}

std::optional<CheckpointReport> inspect_run_checkpoint(const std::string& dir, const InspectOptions& options) {
  struct stat before {};
  if (::lstat(dir.c_str(), &before) != 0) {
    if (errno == ENOENT) return std::nullopt;
    fail_io(dir, "stat", errno);
  }
  const auto same_directory = [&] {
    struct stat now {};
    return ::lstat(dir.c_str(), &now) == 0 && now.st_dev == before.st_dev && now.st_ino == before.st_ino;
  };
  try {
    CheckpointReport report = inspect_checkpoint(dir, options);
    if (!same_directory()) return std::nullopt;
    return report;
  } catch (const Error&) {
    if (!same_directory()) return std::nullopt;
    throw;
  }
}

}  // namespace ckpt::checkpoint
