// Resuming: which checkpoint, its arguments (training_args.bin, config.json, given flags), and loading its weights,
// optimizer, schedule, scaler, trainer state and random generators so that training continues bit for bit.
#include <filesystem>

#include "checkpoint/archive.hpp"
#include "checkpoint/best.hpp"
#include "checkpoint/run_dir.hpp"
#include "checkpoint/shards.hpp"
#include "checkpoint/source.hpp"
#include "train/rng_state.hpp"
#include "train/trainer.hpp"
#include "util/direct_reader.hpp"
#include "util/fs.hpp"

namespace ckpt::train {
namespace fs = std::filesystem;
using pickle::Kind;

namespace {

// Before the model is built: the weights files hold every parameter config.json describes, with its shape and
// float32. So a hostile config.json cannot make resume allocate more than the weights files hold.
void check_weights_match(const std::string& dir, const ModelArguments& config) {
  const auto files = checkpoint::find_weights(dir);
  if (!files) throw Error(ErrorKind::corrupt, dir, "", "no weights file");
  std::map<std::string, std::pair<std::vector<std::int64_t>, DType>> stored;
  for (const auto& name : files->files) {
    const auto source = checkpoint::load_source((fs::path(dir) / name).string());
    const auto& g = source->graph();
    if (!g.is(g.root(), Kind::dict)) throw Error(ErrorKind::corrupt, source->path, "", "not a state dict");
    const auto& items = g.at(g.root()).items;
    for (std::size_t i = 0; i + 1 < items.size(); i += 2) {
      if (!g.is(items[i], Kind::string) || !g.is(items[i + 1], Kind::tensor)) continue;
      const auto& t = g.tensors[static_cast<std::size_t>(g.at(items[i + 1]).integer)];
      stored[g.at(items[i]).text] = {t.shape, t.dtype};
    }
  }
  for (const auto& [name, shape] : parameter_shapes(config)) {
    auto it = stored.find(name);
    if (it == stored.end() || it->second.first != shape || it->second.second != DType::float32) {
      throw Error(ErrorKind::invalid_argument, dir, name, "the weights do not match config.json's model");
    }
  }
}

}  // namespace

std::string Trainer::find_checkpoint() {
  std::string dir;
  if (request_.from) {
    dir = checkpoint::resume_source(run_dir_, *request_.from);
    if (checkpoint::is_archive(dir)) {
      // Restored into a staging directory of the run: the trainer lock makes it ours (open_run_directory ran), and
      // a kill leaves it for the next run to clear. A throwaway copy, so nothing is fsynced.
      const std::string staging =
          (fs::path(run_dir_) / (std::string(checkpoint::kStagingPrefix) + "restore-" + fs_util::unique_suffix()))
              .string();
      if (!fs::create_directory(staging)) throw Error(ErrorKind::io, staging, "", "cannot create the directory");
      restored_dir_ = staging;
      result_.resumed_from = dir;
      restored_from_ = dir;
      checkpoint::extract_archive(dir, staging, {}, false);
      dir = staging;
    } else if (!fs::is_directory(dir)) {
      throw Error(ErrorKind::not_found, dir, "", "no such checkpoint directory or archive");
    }
  } else {
    const auto scan = checkpoint::scan_run(run_dir_);
    const auto newest = checkpoint::newest_complete(scan);
    if (!newest) throw Error(ErrorKind::not_found, run_dir_, "", "no complete checkpoint to resume from");
    dir = scan.entries[*newest].path;
  }
  return dir;
}

// `dir` empty: a new run's arguments; else the checkpoint's to resume from.
void Trainer::prepare_arguments(const std::string& dir) {
  if (dir.empty()) {
    args_ = resolve_arguments(request_.given);
    const auto& output = args_.training.output_dir;
    if (!output || output->empty()) throw Error(ErrorKind::invalid_argument, "", "--output-dir", "is required");
    run_dir_ = *output;
    return;
  }
  const auto completeness = checkpoint::assess_completeness(dir);
  if (!completeness.layout.empty()) {
    // DeepSpeed's optimizer state consolidates into one process's files; FSDP's does not (its model does).
    const bool deepspeed = completeness.layout.rfind("deepspeed", 0) == 0;
    throw Error(ErrorKind::unsupported, dir, "",
                completeness.layout +
                    " checkpoint, which ckpt's trainer cannot resume (it resumes checkpoints of one " +
                    "process); `ckpt convert " + checkpoint::shell_word(dir) + " --consolidate" +
                    (deepspeed ? " --include-state" : "") + " -o DIR` writes " + (deepspeed ? "one" : "its model"));
  }
  if (!completeness.complete) {
    throw Error(
        ErrorKind::corrupt, dir, "",
        "incomplete checkpoint: " + (completeness.problems.empty() ? std::string("?") : completeness.problems.front()));
  }
  for (const char* required : {"training_args.bin", "optimizer.pt", "scheduler.pt", "config.json"}) {
    if (!fs::exists(fs::path(dir) / required) &&
        !(required == std::string_view("optimizer.pt") && checkpoint::find_optimizer_shards(dir))) {
      throw Error(ErrorKind::corrupt, (fs::path(dir) / required).string(), "",
                  "missing: the checkpoint cannot be resumed without it");
    }
  }
  // training_args.bin: a plain dict of the arguments table's keys.
  const std::string args_path = (fs::path(dir) / "training_args.bin").string();
  const auto source = checkpoint::load_source(args_path);
  const auto& g = source->graph();
  if (!g.is(g.root(), Kind::dict))
    throw Error(ErrorKind::unsupported, args_path, "", "not a training_args.bin written by ckpt");
  ArgumentValues saved;
  const auto& items = g.at(g.root()).items;
  for (std::size_t i = 0; i + 1 < items.size(); i += 2) {
    if (!g.is(items[i], Kind::string)) throw Error(ErrorKind::corrupt, args_path, "", "a key that is not a string");
    const auto& v = g.at(items[i + 1]);
    ArgValue value;
    switch (v.kind) {
      case Kind::none:
        break;
      case Kind::boolean:
        value = v.flag;
        break;
      case Kind::integer:
        value = v.integer;
        break;
      case Kind::floating:
        value = v.number;
        break;
      case Kind::string:
        value = v.text;
        break;
      default:
        throw Error(ErrorKind::corrupt, args_path, g.at(items[i]).text, "not a plain value");
    }
    saved[g.at(items[i]).text] = std::move(value);
  }
  // config.json decides the model; a model flag given now must agree with it.
  const std::string config_path = (fs::path(dir) / "config.json").string();
  const ModelArguments config = read_config_json(json::parse_file(config_path), config_path);
  check_weights_match(dir, config);
  try {
    args_ = resume_arguments(request_.given, saved, config);
  } catch (const Error& e) {
    // resume_arguments says which file is at fault by the kind.
    throw e.with_context(e.kind() == ErrorKind::corrupt ? args_path : config_path, "");
  }
  args_.training.output_dir = run_dir_;
  resume_dir_ = dir;
  if (!result_.resumed_from) result_.resumed_from = dir;
}

// Every rank resolved the same arguments (a launcher on each host passes its own command line).
void Trainer::agree_on_arguments() {
  if (!group_) return;
  std::string mine;
  for (const auto& spec : argument_specs()) {
    const ArgValue value = spec.get(args_);
    char number[64] = "";
    if (const auto* d = std::get_if<double>(&value)) std::snprintf(number, sizeof number, "%.17g", *d);
    mine += std::string(spec.key) + "=" + std::to_string(value.index()) + ":" + number;
    if (const auto* b = std::get_if<bool>(&value)) mine += *b ? "1" : "0";
    if (const auto* i = std::get_if<std::int64_t>(&value)) mine += std::to_string(*i);
    if (const auto* t = std::get_if<std::string>(&value)) mine += *t;
    mine += '\n';
  }
  const std::string main = group_->share(mine, 0);
  together("to agree on the arguments", [&] {
    if (mine == main) return;
    std::size_t at = 0;
    while (at < mine.size() && at < main.size() && mine[at] == main[at]) ++at;
    const std::size_t line = mine.rfind('\n', at == 0 ? 0 : at - 1);
    const std::size_t begin = line == std::string::npos || at == 0 ? 0 : line + 1;
    const std::string key = mine.substr(begin, mine.find('=', begin) - begin);
    throw Error(ErrorKind::invalid_argument, "", "--" + flag_name(key),
                "differs from rank 0's (every process must be given the same arguments)");
  });
}

void Trainer::load_weights(const std::string& dir) {
  const auto files = checkpoint::find_weights(dir);
  if (!files) throw Error(ErrorKind::not_found, dir, "", "no weights file");
  std::map<std::string, at::Tensor*> wanted;
  for (auto& [name, param] : model_->parameters()) wanted[name] = &param;
  at::NoGradGuard no_grad;
  for (const auto& name : files->files) {
    const auto source = checkpoint::load_source((fs::path(dir) / name).string());
    const auto& g = source->graph();
    if (!g.is(g.root(), Kind::dict)) throw Error(ErrorKind::corrupt, source->path, "", "not a state dict");
    DirectReader reader(source->file().file());
    const auto& items = g.at(g.root()).items;
    for (std::size_t i = 0; i + 1 < items.size(); i += 2) {
      if (!g.is(items[i], Kind::string) || !g.is(items[i + 1], Kind::tensor)) continue;
      auto it = wanted.find(g.at(items[i]).text);
      if (it == wanted.end()) continue;
      read_tensor_into(*source, reader, items[i + 1], *it->second, it->first);  // straight into the parameter
      wanted.erase(it);
    }
  }
  if (!wanted.empty())
    throw Error(ErrorKind::corrupt, dir, wanted.begin()->first, "missing from the checkpoint's weights");
}

void Trainer::restore(const std::string& dir) {
  const fs::path d(dir);
  load_weights(dir);
  {
    // optimizer.pt, or every rank's shard: a run of another world size or sharding takes what it keeps.
    std::vector<std::unique_ptr<checkpoint::Source>> loaded;
    std::vector<const checkpoint::Source*> sources;
    if (fs::exists(d / "optimizer.pt")) {
      sources.push_back(loaded.emplace_back(checkpoint::load_source((d / "optimizer.pt").string())).get());
    } else if (const auto shards = checkpoint::find_optimizer_shards(dir)) {
      for (const auto& name : shards->files)
        sources.push_back(loaded.emplace_back(checkpoint::load_source((d / name).string())).get());
      checkpoint::check_shard_set(sources);
    } else {
      throw Error(ErrorKind::corrupt, (d / "optimizer.pt").string(), "", "missing, and no optimizer shards either");
    }
    optimizer_->load_state_dict(sources, model_->parameters());
  }
  {
    const auto source = checkpoint::load_source((d / "scheduler.pt").string());
    schedule_->load_state_dict(GraphReader{source->graph(), source->path}, source->graph().root());
  }
  if (scaler_) {
    if (fs::exists(d / "scaler.pt")) {
      const auto source = checkpoint::load_source((d / "scaler.pt").string());
      scaler_->load_state_dict(GraphReader{source->graph(), source->path}, source->graph().root());
    } else {
      warn((d / "scaler.pt").string() + " is missing: the loss scale starts over");
    }
  }
  state_.load((d / "trainer_state.json").string());
  if (state_.best_model_checkpoint) {
    // The run may have been copied or moved since that file was written: its best is the checkpoint of that name
    // in this run directory, as `ckpt best` finds it.
    const std::string name = checkpoint::recorded_checkpoint_name(*state_.best_model_checkpoint);
    if (checkpoint::checkpoint_step(name)) state_.best_model_checkpoint = (fs::path(run_dir_) / name).string();
  }
  if (state_.global_step > max_steps_) {
    throw Error(ErrorKind::invalid_argument, dir, "",
                "the checkpoint is at step " + std::to_string(state_.global_step) + ", beyond --max-steps " +
                    std::to_string(max_steps_));
  }
  // Replay the data order up to the current epoch (nothing is computed), then restore the generators.
  const std::int64_t epochs_done = state_.global_step / steps_per_epoch_;
  const bool mid_epoch = state_.global_step % steps_per_epoch_ != 0;
  const std::int64_t n = args_.training.train_examples;
  if (epochs_done > std::int64_t{100'000'000'000} / n) {
    throw Error(ErrorKind::corrupt, dir, "trainer_state.json",
                "global_step " + std::to_string(state_.global_step) + " is beyond any run of this size");
  }
  for (std::int64_t e = 0; e < epochs_done + (mid_epoch ? 1 : 0); ++e) {
    if (interrupted()) throw Error(ErrorKind::interrupted, dir, "", "interrupted while resuming");
    draw_epoch_order();
  }
  order_drawn_ = mid_epoch;
  // Each rank's generators from its own file; with another world size, rank 0's (or the one process's).
  const int saved_world_size = checkpoint::checkpoint_world_size(dir);
  fs::path rng = d / checkpoint::rng_state_name(rank_, saved_world_size);
  if (saved_world_size != world_size_) {
    warn(dir + " was saved by " + std::to_string(saved_world_size) + " process(es) and this run has " +
         std::to_string(world_size_) +
         ": the weights, optimizer and schedule resume, but the data order and random draws differ from the "
         "uninterrupted run's");
    if (!fs::exists(rng)) rng = d / checkpoint::rng_state_name(0, saved_world_size);
  }
  if (fs::exists(rng)) {
    const auto source = checkpoint::load_source(rng.string());
    RngStates states = load_rng_states(*source);
    python_ = states.python;
    numpy_ = states.numpy;
    set_torch_rng_state(states.cpu);
  } else {
    warn(rng.string() + " is missing: training continues, but its random draws differ from the uninterrupted run's");
  }
  state_.epoch = static_cast<double>(state_.global_step) / static_cast<double>(steps_per_epoch_);
  last_logged_step_ = state_.global_step;
  optimizer_->learning_rates().assign(optimizer_->groups().size(), schedule_->last_lr());
}

}  // namespace ckpt::train
