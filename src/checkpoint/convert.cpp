#include "checkpoint/convert.hpp"

#include <algorithm>
#include <filesystem>
#include <functional>
#include <memory>
#include <set>

#include "checkpoint/convert_plan.hpp"
#include "checkpoint/convert_state.hpp"
#include "checkpoint/convert_write.hpp"
#include "checkpoint/export.hpp"
#include "checkpoint/fsdp.hpp"
#include "checkpoint/run_dir.hpp"
#include "checkpoint/shards.hpp"
#include "checkpoint/source.hpp"
#include "checkpoint/value_data.hpp"
#include "checkpoint/weights_layout.hpp"
#include "checkpoint/zero.hpp"
#include "format/json.hpp"
#include "util/atomic_file.hpp"
#include "util/error.hpp"
#include "util/fs.hpp"

namespace ckpt::checkpoint {
namespace fs = std::filesystem;
using convert_detail::assembled_weights;
using convert_detail::attributes_of;
using convert_detail::check_dtype_option;
using convert_detail::claim_output;
using convert_detail::collect_weights;
using convert_detail::consolidate_optimizer;
using convert_detail::convert_state;
using convert_detail::file_size_or_zero;
using convert_detail::format_of;
using convert_detail::GraphBuilder;
using convert_detail::inputs_label;
using convert_detail::is_state_file_name;
using convert_detail::plan_shards;
using convert_detail::Progress;
using convert_detail::restored_state_name;
using convert_detail::state_safetensors_name;
using convert_detail::StorageFill;
using convert_detail::training_args_to_json;
using convert_detail::Weight;
using convert_detail::WeightsPlan;
using convert_detail::write_config_with_dtype;
using convert_detail::write_weights_file;

namespace {

// ---- weights conversion ----

// Writes weights as one file at `file_path`, or with a shard limit as shards and an index inside `dir`.
void write_weights(const std::vector<Weight>& weights, const std::optional<json::Json>& attributes,
                   const ConvertOptions& options, const std::string& file_path, const std::string& dir,
                   std::vector<std::string> sources, ConvertResult& result) {
  const WeightsPlan plan = plan_shards(weights, options);
  Progress progress{options, inputs_label(sources)};
  progress.total = plan.total_size;
  const std::string joined_sources =
      sources.size() == 1 ? sources.front() : fs::path(sources.front()).parent_path().string();
  for (const auto& w : weights) {
    if (w.tied_to && options.to == ConvertTarget::safetensors) {
      result.notes.push_back("'" + w.name + "' is tied to '" + *w.tied_to +
                             "': stored once, the alias recorded in __metadata__ ckpt_aliases");
    }
  }
  if (plan.shards.size() == 1 && !options.max_shard_size) {
    if (!options.dry_run) write_weights_file(file_path, weights, plan.shards[0], attributes, options, progress);
    result.files.push_back(
        {joined_sources, file_path, "converted", options.dry_run ? 0 : file_size_or_zero(file_path)});
    return;
  }
  if (plan.shards.size() == 1) {
    const std::string path = (fs::path(dir) / single_weights_name(format_of(options.to))).string();
    if (!options.dry_run) write_weights_file(path, weights, plan.shards[0], attributes, options, progress);
    result.files.push_back({joined_sources, path, "converted", options.dry_run ? 0 : file_size_or_zero(path)});
    return;
  }
  std::vector<std::pair<std::string, std::string>> entries;
  for (std::size_t k = 0; k < plan.shards.size(); ++k) {
    const std::string name = shard_name(format_of(options.to), k, plan.shards.size());
    const std::string path = (fs::path(dir) / name).string();
    // The state dict's _metadata goes with the first shard, as each shard of torch's own sharding is a plain dict.
    if (!options.dry_run)
      write_weights_file(path, weights, plan.shards[k], k == 0 ? attributes : std::nullopt, options, progress);
    result.files.push_back({joined_sources, path, "converted", options.dry_run ? 0 : file_size_or_zero(path)});
    for (std::size_t i : plan.shards[k]) entries.emplace_back(weights[i].name, name);
  }
  const std::string index_path = (fs::path(dir) / index_name(format_of(options.to))).string();
  if (!options.dry_run) {
    AtomicFile out(index_path);
    out.write(index_json(plan.total_size, std::move(entries)));
    out.commit();
  }
  result.files.push_back({"", index_path, "written", options.dry_run ? 0 : file_size_or_zero(index_path)});
}

// Loads the shards an index names, in order; a missing shard is an error.
std::vector<std::unique_ptr<Source>> load_index(const std::string& index_path) {
  std::vector<std::string> files = read_weights_index(index_path).files;
  // In shard order (the numbered names sort so), as Hugging Face loads them: the merged state dict then has
  // the original key order.
  std::sort(files.begin(), files.end());
  std::vector<std::unique_ptr<Source>> sources;
  for (const auto& file : files) {
    const std::string path = (fs::path(index_path).parent_path() / file).string();
    if (!fs::exists(path)) throw Error(ErrorKind::corrupt, index_path, "weight_map", "shard '" + file + "' is missing");
    sources.push_back(load_source(path));
  }
  return sources;
}

void convert_weights(const std::vector<const Source*>& sources, const std::string& file_path, const std::string& dir,
                     const ConvertOptions& options, ConvertResult& result) {
  std::vector<Weight> weights;
  for (const Source* s : sources) collect_weights(*s, weights);
  std::vector<std::string> paths;
  for (const Source* s : sources) paths.push_back(s->path);
  write_weights(weights, attributes_of(*sources.front()), options, file_path, dir, paths, result);
}

// ---- destinations ----

void refuse_existing(const std::string& destination, const ConvertOptions& options) {
  if (fs::exists(fs::symlink_status(destination)) && !options.force) {
    throw Error(ErrorKind::invalid_argument, destination, "", "already exists; pass --force to replace it");
  }
}

// Builds a directory through build_output_directory (an existing destination is replaced only when it is an
// earlier output), or on a dry run only goes through the motions and says whether it would be replaced.
template <typename Fill>
void build_directory(const std::string& destination, const ConvertOptions& options, ConvertResult& result, Fill fill) {
  if (!options.dry_run) {
    build_output_directory(destination, {}, fill);
    return;
  }
  const std::size_t first = result.files.size();
  fill(destination);
  std::set<std::string> names;
  for (std::size_t i = first; i < result.files.size(); ++i) {
    names.insert(fs::path(result.files[i].destination).lexically_relative(destination).generic_string());
  }
  require_replaceable(destination, names);
}

void rebase(ConvertResult& result, std::size_t from, const std::string& staging, const std::string& destination) {
  for (std::size_t i = from; i < result.files.size(); ++i) {
    auto& d = result.files[i].destination;
    if (d.rfind(staging, 0) == 0) d = destination + d.substr(staging.size());
  }
}

// Copies a file of a checkpoint directory to `to`; config.json gets --dtype's torch_dtype when the weights beside it
// were `converted` (and so cast).
void copy_beside_weights(const std::string& path, const std::string& to, bool converted, const ConvertOptions& options,
                         ConvertResult& result) {
  if (fs::path(path).filename() == "config.json" && converted && options.dtype) {
    write_config_with_dtype(path, to, *options.dtype, options);
    result.files.push_back({path, to, "copied, torch_dtype " + std::string(torch_name(*options.dtype)),
                            options.dry_run ? 0 : file_size_or_zero(to)});
    return;
  }
  if (!options.dry_run) fs_util::copy_file(path, to);
  result.files.push_back({path, to, "copied", options.dry_run ? 0 : file_size_or_zero(to)});
}

void convert_directory(const std::string& source, const std::string& destination, const ConvertOptions& options,
                       ConvertResult& result) {
  const auto weights = find_weights(source);
  std::set<std::string> weight_files;
  if (weights) {
    weight_files.insert(weights->files.begin(), weights->files.end());
    if (weights->index) weight_files.insert(*weights->index);
  }
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(source, ec)) {
    if (fs_util::require_regular_file(entry.path().string())) names.push_back(entry.path().filename().string());
  }
  if (ec) throw Error(ErrorKind::io, source, "", "cannot list directory: " + ec.message());
  std::sort(names.begin(), names.end());
  std::optional<OptimizerShards> shards;
  if (options.consolidate) {
    shards = find_optimizer_shards(source);
    if (!shards)
      throw Error(ErrorKind::invalid_argument, source, "",
                  "has no optimizer shards (optimizer_<rank>.pt) to consolidate");
    if (fs::exists(fs::path(source) / "optimizer.pt"))
      throw Error(ErrorKind::corrupt, source, "", "holds both optimizer.pt and optimizer shards");
  }
  const bool convert_weights_here = weights && !options.copy_weights;

  const std::size_t first = result.files.size();
  std::string used_staging;
  build_directory(destination, options, result, [&](const std::string& out) {
    used_staging = out;
    if (shards) consolidate_optimizer(source, *shards, (fs::path(out) / "optimizer.pt").string(), options, result);
    if (convert_weights_here) {
      std::vector<std::unique_ptr<Source>> loaded;
      if (weights->index)
        loaded = load_index((fs::path(source) / *weights->index).string());
      else
        loaded.push_back(load_source((fs::path(source) / weights->files.front()).string()));
      std::vector<const Source*> views;
      for (const auto& s : loaded) views.push_back(s.get());
      convert_weights(views, (fs::path(out) / single_weights_name(format_of(options.to))).string(), out, options,
                      result);
    }
    for (const auto& name : names) {
      stop_if_interrupted(options.interrupted);
      if (convert_weights_here && weight_files.count(name)) continue;
      if (shards && std::find(shards->files.begin(), shards->files.end(), name) != shards->files.end()) continue;
      const std::string path = (fs::path(source) / name).string();
      if (options.include_state && is_state_file_name(name) && options.to == ConvertTarget::safetensors) {
        const std::string to = (fs::path(out) / state_safetensors_name(name)).string();
        claim_output(result, first, to, path);
        convert_state(*load_source(path), to, options, result);
        continue;
      }
      if (options.include_state && options.to == ConvertTarget::safetensors && name == "training_args.bin") {
        const std::string to = (fs::path(out) / "training_args.json").string();
        claim_output(result, first, to, path);
        training_args_to_json(*load_source(path), to, options, result);
        continue;
      }
      if (options.include_state && options.to == ConvertTarget::pytorch && name.ends_with(".safetensors")) {
        const auto s = load_source(path);
        if (s->has_structure()) {
          const std::string to = (fs::path(out) / restored_state_name(*s)).string();
          claim_output(result, first, to, path);
          convert_state(*s, to, options, result);
          continue;
        }
      }
      const std::string to = (fs::path(out) / name).string();
      claim_output(result, first, to, path);
      copy_beside_weights(path, to, convert_weights_here, options, result);
    }
  });
  if (!options.dry_run) rebase(result, first, used_staging, destination);
}

// ---- consolidating a multi-GPU layout (DeepSpeed ZeRO, FSDP) into one process's files ----

// The training state --include-state carries over: what resuming on one process needs besides weights.
bool is_training_state(const std::string& name) {
  return name == "trainer_state.json" || name == "training_args.bin" || name == "scheduler.pt";
}

// What consolidating one checkpoint writes besides the copies of its other files.
struct Consolidation {
  std::vector<Weight> weights;
  std::vector<std::string> inputs;  // the files the weights come from (progress, the result's source)
  // Files of the layout itself, which the output does not get: the parts consolidated, per-rank RNG states.
  std::function<bool(const std::string& name)> left_out;
  // --include-state's own files, written into the output directory (given the names copied), or null.
  std::function<void(const std::string& out, const std::vector<std::string>& copied)> write_state;
};

// A model directory at `destination`: the consolidated weights (safetensors or torch, sharded with
// --max-shard-size), with --include-state the training state, and the checkpoint's other regular files.
void write_consolidated(const std::string& source, const std::string& destination, const ConvertOptions& options,
                        const Consolidation& c, ConvertResult& result) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(source, ec)) {
    const std::string name = entry.path().filename().string();
    if (c.left_out(name) || (is_training_state(name) && !options.include_state)) continue;
    if (!entry.is_symlink(ec) && entry.is_directory(ec)) continue;  // the layout's own directories
    if (fs_util::require_regular_file(entry.path().string())) names.push_back(name);
  }
  if (ec) throw Error(ErrorKind::io, source, "", "cannot list directory: " + ec.message());
  std::sort(names.begin(), names.end());
  const std::size_t first = result.files.size();
  std::string used_staging;
  build_directory(destination, options, result, [&](const std::string& out) {
    used_staging = out;
    write_weights(c.weights, std::nullopt, options,
                  (fs::path(out) / single_weights_name(format_of(options.to))).string(), out, c.inputs, result);
    if (options.include_state && c.write_state) c.write_state(out, names);
    for (const auto& name : names) {
      stop_if_interrupted(options.interrupted);
      const std::string path = (fs::path(source) / name).string();
      const std::string to = (fs::path(out) / name).string();
      claim_output(result, first, to, path);
      copy_beside_weights(path, to, true, options, result);
    }
  });
  if (!options.dry_run) rebase(result, first, used_staging, destination);
}

// The weights files the Trainer gathered beside a multi-GPU layout (16-bit under DeepSpeed, model.safetensors beside
// FSDP's full state dict): superseded by the consolidated weights, never copied beside them.
std::set<std::string> gathered_weights(const std::string& dir) {
  std::set<std::string> names;
  if (const auto found = find_weights(dir)) {
    names.insert(found->files.begin(), found->files.end());
    if (found->index) names.insert(*found->index);
  }
  return names;
}

// The Trainer's per-rank RNG states mean nothing to one process.
bool is_rng_state(const std::string& name) { return name.rfind("rng_state", 0) == 0; }

// optimizer.pt as torch.optim.AdamW.state_dict() of the consolidated model: the groups of DeepSpeed's base
// optimizer, their parameters numbered in order, each with its own step and the moments cut like the weights.
void write_zero_optimizer(const zero::Checkpoint& checkpoint, const std::string& path, const ConvertOptions& options,
                          Progress& progress) {
  const auto& entries = checkpoint.optimizer_state();
  ConvertOptions as_saved = options;
  as_saved.dtype.reset();  // the optimizer state stays float32, whatever the weights are cast to
  pickle::Graph g;
  std::vector<StorageFill> fills;
  GraphBuilder builder(g, fills, as_saved);
  auto make = [&](pickle::Kind kind) {
    pickle::Node n;
    n.kind = kind;
    return g.add(std::move(n));
  };
  const pickle::NodeId state = make(pickle::Kind::dict);
  for (std::size_t i = 0; i < entries.size(); ++i) {
    const auto& e = entries[i];
    const pickle::NodeId per_param = make(pickle::Kind::dict);
    auto set = [&](const char* key, pickle::NodeId value) {
      const pickle::NodeId name = convert_detail::add_string(g, key);  // adding nodes moves them: no reference held
      g.at(per_param).items.push_back(name);
      g.at(per_param).items.push_back(value);
    };
    // Each parameter its own step tensor: torch increments them in place, so one shared storage would count a
    // group's steps once per parameter.
    if (e.step)
      set("step", builder.tensor(*e.step));
    else if (e.step_source)
      set("step", convert_detail::copy_value(*e.step_source, e.step_node, g, builder));
    set("exp_avg", builder.tensor(e.exp_avg));
    set("exp_avg_sq", builder.tensor(e.exp_avg_sq));
    const pickle::NodeId index = convert_detail::add_integer(g, static_cast<std::int64_t>(i));
    g.at(state).items.push_back(index);
    g.at(state).items.push_back(per_param);
  }
  const pickle::NodeId groups = make(pickle::Kind::list);
  std::int64_t next = 0;
  for (std::size_t k = 0; k < checkpoint.groups().size(); ++k) {
    const pickle::NodeId group =
        convert_detail::copy_value(checkpoint.rank0_optim(), checkpoint.param_group_node(k), g, builder);
    const pickle::NodeId params = make(pickle::Kind::list);
    for (std::size_t j = 0; j < checkpoint.groups()[k].parameters.size(); ++j) {
      const pickle::NodeId index = convert_detail::add_integer(g, next++);
      g.at(params).items.push_back(index);
    }
    auto& items = g.at(group).items;
    for (std::size_t j = 0; j + 1 < items.size(); j += 2) {
      if (g.at(items[j]).kind == pickle::Kind::string && g.at(items[j]).text == "params") items[j + 1] = params;
    }
    g.at(groups).items.push_back(group);
  }
  const pickle::NodeId state_key = convert_detail::add_string(g, "state");
  const pickle::NodeId groups_key = convert_detail::add_string(g, "param_groups");
  const pickle::NodeId root = make(pickle::Kind::dict);
  g.at(root).items = {state_key, state, groups_key, groups};
  g.set_root(root);
  for (const auto& e : entries) progress.total += 2 * convert_detail::nbytes_of(e.exp_avg.shape, DType::float32);
  convert_detail::write_torch_file(path, g, fills, progress);
}

// scheduler.pt from the engine's own scheduler state (when the Trainer left none of its own).
void write_zero_scheduler(const zero::Checkpoint& checkpoint, const std::string& path, const ConvertOptions& options,
                          Progress& progress) {
  pickle::Graph g;
  std::vector<StorageFill> fills;
  GraphBuilder builder(g, fills, options);
  g.set_root(convert_detail::copy_value(checkpoint.rank0_model(), checkpoint.lr_scheduler_node(), g, builder));
  convert_detail::write_torch_file(path, g, fills, progress);
}

// `convert CHECKPOINT --consolidate` of a DeepSpeed checkpoint: the fp32 weights
// get_fp32_state_dict_from_zero_checkpoint returns, and with --include-state one process's optimizer.pt and
// scheduler.pt. Left out: DeepSpeed's own files and the Trainer's gathered 16-bit weights (superseded by the fp32
// ones).
void convert_zero(const std::string& source, const std::string& destination, const ConvertOptions& options,
                  ConvertResult& result) {
  const zero::Checkpoint checkpoint(source);
  if (options.include_state) checkpoint.optimizer_state();  // refused before anything is written
  const std::set<std::string> gathered = gathered_weights(source);
  Consolidation c;
  c.weights = assembled_weights(checkpoint.fp32_state_dict());
  for (const auto& rank : checkpoint.ranks()) c.inputs.push_back(rank.optim);
  c.left_out = [&](const std::string& name) {
    return name == zero::kLatestName || name == "zero_to_fp32.py" || is_rng_state(name) || gathered.count(name) != 0;
  };
  c.write_state = [&](const std::string& out, const std::vector<std::string>& copied) {
    const std::string optimizer = (fs::path(out) / "optimizer.pt").string();
    Progress progress{options, convert_detail::inputs_label(c.inputs)};
    if (!options.dry_run) write_zero_optimizer(checkpoint, optimizer, options, progress);
    result.files.push_back(
        {c.inputs.front(), optimizer, "consolidated", options.dry_run ? 0 : file_size_or_zero(optimizer)});
    const bool engine_scheduler =
        checkpoint.lr_scheduler_node() != 0 &&
        checkpoint.rank0_model().graph().is(checkpoint.lr_scheduler_node(), pickle::Kind::dict);
    if (std::find(copied.begin(), copied.end(), "scheduler.pt") == copied.end() && engine_scheduler) {
      const std::string scheduler = (fs::path(out) / "scheduler.pt").string();
      if (!options.dry_run) write_zero_scheduler(checkpoint, scheduler, options, progress);
      result.files.push_back({checkpoint.rank0_model().path, scheduler, "written from lr_scheduler",
                              options.dry_run ? 0 : file_size_or_zero(scheduler)});
    }
  };
  write_consolidated(source, destination, options, c, result);
}

// `convert CHECKPOINT --consolidate` of an FSDP checkpoint: its model assembled from the DCP chunks of every rank
// (sharded), or pytorch_model_fsdp.bin converted (full). Its optimizer is not consolidated: --include-state is
// refused rather than write a checkpoint without one.
void convert_fsdp(const std::string& source, const FsdpLayout& layout, const std::string& destination,
                  const ConvertOptions& options, ConvertResult& result) {
  if (options.include_state)
    throw Error(ErrorKind::unsupported, source, "",
                "--include-state: an FSDP optimizer's state is not consolidated (only its model is)");
  Consolidation c;
  std::unique_ptr<FsdpCheckpoint> sharded;
  std::unique_ptr<Source> full;
  std::vector<AssembledTensor> tensors;
  if (layout.kind == FsdpKind::sharded) {
    sharded = std::make_unique<FsdpCheckpoint>(source);
    tensors = sharded->model_tensors();
    c.weights = assembled_weights(tensors);
    for (const auto& f : sharded->model().file_sizes()) c.inputs.push_back(f.path);
  } else {
    full = load_source(layout.model_path);
    collect_weights(*full, c.weights);
    c.inputs.push_back(layout.model_path);
  }
  const std::set<std::string> gathered = gathered_weights(source);
  c.left_out = [&](const std::string& name) {
    return name == kFsdpFullModelName || name == kFsdpFullOptimizerName || is_rng_state(name) ||
           gathered.count(name) != 0;
  };
  write_consolidated(source, destination, options, c, result);
}

}  // namespace

bool holds_partitioned_weights(const std::string& source) {
  std::error_code ec;
  if (!fs::is_directory(source, ec)) return false;
  try {
    return zero::has_layout(source) || detect_fsdp(source).has_value();
  } catch (const Error&) {
    return false;  // convert says why it cannot list the directory
  }
}

ConvertResult convert(const std::string& source, const std::string& destination, const ConvertOptions& options) {
  check_dtype_option(options);
  ConvertResult result;
  result.destination = destination;
  std::error_code ec;
  const auto status = fs::status(source, ec);
  if (ec || !fs::exists(status)) throw Error(ErrorKind::not_found, source, "", "no such file or directory");
  refuse_existing(destination, options);
  if (!options.dry_run) {
    fs_util::create_parent_directories(destination);
    fs_util::clear_abandoned_temporaries_of(destination);  // left by an earlier convert, killed
  }
  if (!options.dry_run && fs::exists(fs::symlink_status(destination, ec))) {
    // Whether --force may replace it, from a dry run's names (metadata only), before converting anything.
    ConvertOptions dry_run = options;
    dry_run.dry_run = true;
    dry_run.progress = nullptr;
    convert(source, destination, dry_run);
  }

  if (fs::is_directory(status)) {
    const bool deepspeed = zero::has_layout(source);
    const auto fsdp = deepspeed ? std::nullopt : detect_fsdp(source);
    if ((deepspeed || fsdp) && !options.consolidate) {
      throw Error(ErrorKind::invalid_argument, source, "",
                  std::string("is ") + (deepspeed ? "a DeepSpeed ZeRO" : "an FSDP") +
                      " checkpoint, its weights partitioned among ranks: pass --consolidate to write them as one "
                      "model");
    }
    if (deepspeed)
      convert_zero(source, destination, options, result);
    else if (fsdp)
      convert_fsdp(source, *fsdp, destination, options, result);
    else
      convert_directory(source, destination, options, result);
    return result;
  }
  if (options.consolidate)
    throw Error(ErrorKind::invalid_argument, source, "", "--consolidate takes a checkpoint directory");

  // A single file: an index (merged), weights, or another checkpoint file.
  if (source.ends_with(".index.json")) {
    const auto loaded = load_index(source);
    std::vector<const Source*> views;
    for (const auto& s : loaded) views.push_back(s.get());
    if (options.max_shard_size) {
      std::string staging;
      build_directory(destination, options, result, [&](const std::string& out) {
        staging = out;
        convert_weights(views, "", out, options, result);
      });
      if (!options.dry_run) rebase(result, 0, staging, destination);
    } else {
      convert_weights(views, destination, "", options, result);
    }
    return result;
  }
  const auto s = load_source(source);
  const std::string name = fs::path(source).filename().string();
  if (is_state_dict(s->graph()) && !s->has_structure()) {
    if (options.max_shard_size) {
      std::string staging;
      build_directory(destination, options, result, [&](const std::string& out) {
        staging = out;
        convert_weights({s.get()}, "", out, options, result);
      });
      if (!options.dry_run) rebase(result, 0, staging, destination);
    } else {
      convert_weights({s.get()}, destination, "", options, result);
    }
    return result;
  }
  if (!s->safetensors && name.rfind("training_args", 0) == 0) {
    training_args_to_json(*s, destination, options, result);
    return result;
  }
  convert_state(*s, destination, options, result);
  return result;
}

}  // namespace ckpt::checkpoint
