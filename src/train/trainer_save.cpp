// Writing checkpoints: this process's files into a staging directory, committed by rank 0 once every rank's part
// is durable; with --async-save the copy and the write run in the background. And the end of training.
#include <cstring>
#include <filesystem>

#include "checkpoint/best.hpp"
#include "checkpoint/rotation.hpp"
#include "checkpoint/run_dir.hpp"
#include "checkpoint/shards.hpp"
#include "checkpoint/weights_layout.hpp"
#include "format/safetensors.hpp"
#include "train/rng_state.hpp"
#include "train/trainer.hpp"
#include "util/atomic_file.hpp"
#include "util/fs.hpp"

namespace ckpt::train {
namespace fs = std::filesystem;
using checkpoint::RunLock;
using pickle::NodeId;

std::vector<std::string> write_weights(const std::string& dir, const Parameters& weights, const WeightsOptions& options,
                                       bool durable) {
  const WriteOptions write_options{.direct = true, .durable = durable};
  const auto format = options.safetensors ? checkpoint::WeightsFormat::safetensors : checkpoint::WeightsFormat::pytorch;
  std::vector<std::uint64_t> sizes;
  std::uint64_t total = 0;
  for (const auto& [name, t] : weights) {
    sizes.push_back(t.nbytes());
    total += t.nbytes();
  }
  const auto shards = checkpoint::greedy_shards(sizes, options.max_shard_size);
  std::vector<std::pair<std::string, std::string>> index;
  for (std::size_t k = 0; k < shards.size(); ++k) {
    const std::string name =
        shards.size() == 1 ? checkpoint::single_weights_name(format) : checkpoint::shard_name(format, k, shards.size());
    const std::string path = (fs::path(dir) / name).string();
    if (options.safetensors) {
      std::vector<safetensors::OutputTensor> layout;
      std::map<std::string, const at::Tensor*> by_name;
      for (std::size_t i : shards[k]) {
        const auto& [tensor_name, t] = weights[i];
        layout.push_back({tensor_name, to_dtype(t.scalar_type()), t.sizes().vec()});
        by_name[tensor_name] = &t;
      }
      safetensors::write_file(
          path, std::move(layout), {{"format", "pt"}},
          [&](const safetensors::OutputTensor& t, AtomicFile& out) { out.write(bytes_of(*by_name.at(t.name))); },
          write_options);
    } else {
      // A plain dict per file, as transformers' shard_checkpoint hands torch.save.
      GraphMaker out;
      std::vector<NodeId> items;
      for (std::size_t i : shards[k]) {
        items.push_back(out.text(weights[i].first));
        items.push_back(out.tensor(weights[i].second));
      }
      out.write(path, out.dict(std::move(items)), durable);
    }
    for (std::size_t i : shards[k]) index.emplace_back(weights[i].first, name);
  }
  std::vector<std::string> written;
  for (const auto& [tensor, file] : index) {
    if (written.empty() || written.back() != file) written.push_back(file);
  }
  if (shards.size() > 1) {
    AtomicFile out((fs::path(dir) / checkpoint::index_name(format)).string(), write_options);
    out.write(checkpoint::index_json(total, std::move(index)));
    out.commit();
    written.push_back(checkpoint::index_name(format));
  }
  return written;
}

void write_text(const std::string& path, const std::string& text, bool durable) {
  AtomicFile out(path, {.durable = durable});
  out.write(text);
  out.commit();
}

void write_checkpoint_files(const std::string& dir, CheckpointFiles& files, const WeightsOptions& options) {
  const fs::path d(dir);
  std::vector<std::string> paths;
  auto path = [&](const std::string& name) { return paths.emplace_back((d / name).string()); };
  if (files.main) {
    for (const auto& name : write_weights(dir, files.weights, options, false)) paths.push_back((d / name).string());
  }
  if (files.has_optimizer) files.optimizer.write(path(files.optimizer_name), files.optimizer_root, false);
  files.rng.write(path(files.rng_name), files.rng_root, false);
  if (files.main) {
    files.scheduler.write(path("scheduler.pt"), files.scheduler_root, false);
    if (files.has_scaler) files.scaler.write(path("scaler.pt"), files.scaler_root, false);
    files.arguments.write(path("training_args.bin"), files.arguments_root, false);
    write_text(path("config.json"), files.config, false);
    write_text(path("trainer_state.json"), files.trainer_state, false);
  }
  fs_util::fsync_files(paths);
}

CheckpointFiles Trainer::collect(bool copy) {
  CheckpointFiles files;
  files.step = state_.global_step;
  files.main = main_process();
  files.rng_name = checkpoint::rng_state_name(rank_, world_size_);
  if (!owner_.empty()) files.optimizer_name = checkpoint::optimizer_shard_name(rank_);
  files.has_optimizer = files.main || !owner_.empty();
  files.rng_root = rng_state_dict(files.rng, RngStates{python_, numpy_, torch_rng_state()});
  if (!files.main) {
    // Its rng state and its optimizer shard; never asynchronous (validate_arguments).
    if (files.has_optimizer) files.optimizer_root = optimizer_->state_dict(files.optimizer);
    return files;
  }
  std::size_t slot = 0;
  auto snapshot = [&](const at::Tensor& t) {
    if (slot == snapshot_buffers_.size()) snapshot_buffers_.emplace_back();
    at::Tensor& buffer = snapshot_buffers_[slot++];
    if (!buffer.defined() || buffer.sizes() != t.sizes() || buffer.scalar_type() != t.scalar_type())
      buffer = empty_large(t.sizes(), t.scalar_type());
    files.pending_copies.emplace_back(t, buffer);
    return buffer;
  };
  for (const auto& [name, p] : model_->parameters())
    files.weights.emplace_back(name, copy ? snapshot(p.detach()) : p.detach());
  const AdamW optimizer = copy ? optimizer_->snapshot(snapshot) : *optimizer_;
  files.optimizer_root = optimizer.state_dict(files.optimizer);
  files.scheduler_root = schedule_->state_dict(files.scheduler);
  if (scaler_) {
    files.has_scaler = true;
    files.scaler_root = scaler_->state_dict(files.scaler);
  }
  std::vector<NodeId> items;
  for (const auto& spec : argument_specs()) {
    if (spec.scope != ArgScope::training) continue;
    items.push_back(files.arguments.text(spec.key));
    const ArgValue v = spec.get(args_);
    if (const auto* b = std::get_if<bool>(&v))
      items.push_back(files.arguments.boolean(*b));
    else if (const auto* i = std::get_if<std::int64_t>(&v))
      items.push_back(files.arguments.integer(*i));
    else if (const auto* d = std::get_if<double>(&v))
      items.push_back(files.arguments.number(*d));
    else if (const auto* s = std::get_if<std::string>(&v))
      items.push_back(files.arguments.text(*s));
    else
      items.push_back(files.arguments.none());
  }
  files.arguments_root = files.arguments.dict(std::move(items));
  files.trainer_state = state_.to_text();
  files.config = json::dump_python_sorted(config_json(model_->config()), 2) + "\n";
  return files;
}

// Best effort, so that the error reported is the one that stopped the save; a leftover is cleared later.
void Trainer::remove_staging_after_failure(const std::string& staging) {
  try {
    if (main_process()) fs_util::remove_tree(staging);
  } catch (const Error&) {}
}

// Writes into a hidden staging directory, then renames it to checkpoint-<step> under the run lock (replacing a
// checkpoint of the same step, as a run resumed from an earlier one does), then rotates. In a group, rank 0 makes
// the staging directory and tells the others its name; each rank writes its files; only when every rank says
// its files are durable does rank 0 commit, and the others hear whether it did.
void Trainer::commit(CheckpointFiles files) {
  const std::string name = "checkpoint-" + std::to_string(files.step);
  const fs::path run(run_dir_);
  std::string staging;
  together("to create the staging directory of " + name, [&] {
    if (!main_process()) return;
    staging = (run / (std::string(checkpoint::kStagingPrefix) + name + "-" + fs_util::unique_suffix())).string();
    std::error_code ec;
    fs::create_directory(staging, ec);
    if (ec) throw Error(ErrorKind::io, staging, "", "cannot create the staging directory: " + ec.message());
  });
  if (group_) staging = group_->share(staging, 0);
  try {
    together("to write its part of " + name, [&] { write_checkpoint_files(staging, files, weights_options_); });
    together("to commit " + name, [&] {
      if (!main_process()) return;
      fs_util::fsync_directory(staging);
      RunLock lock(run_dir_, true);
      const std::string final_path = (run / name).string();
      if (fs::exists(fs::symlink_status(final_path))) {
        // A checkpoint of the same step (a run resumed from an earlier one): the two directories trade names in
        // one step, so at every instant checkpoint-N is one complete checkpoint or the other; the old one, now
        // under the staging name, is then removed (or cleared as a leftover by the next start).
        fs_util::exchange(staging, final_path);
      } else {
        fs_util::durable_rename(staging, final_path);
      }
    });
  } catch (const Error& e) {
    remove_staging_after_failure(staging);
    throw e.named_in(staging, (run / name).string());  // where the user will look for the file
  } catch (...) {
    remove_staging_after_failure(staging);
    throw;
  }
  if (!main_process()) return;
  try {
    fs_util::remove_tree(staging);
  } catch (const Error&) {
    // Only a leftover: the next start, or rotate, clears it.
  }
  result_.checkpoints_saved.push_back((run / name).string());
  result_.last_checkpoint = result_.checkpoints_saved.back();
  result_.last_checkpoint_step = files.step;
  if (const auto limit = args_.training.save_total_limit) {
    checkpoint::RotateOptions options;
    options.keep = *limit;
    const auto rotation = checkpoint::rotate(run_dir_, options, false, true);
    for (const auto& d : rotation.plan.decisions) {
      if (d.remove) result_.checkpoints_removed.push_back(d.path);
    }
  }
}

void Trainer::wait_for_snapshot() {
  if (!snapshot_copied_.valid()) return;
  const auto start = Clock::now();
  snapshot_copied_.wait();
  snapshot_copied_ = {};
  result_.save_stall_seconds.back() += seconds_since(start);
}

void Trainer::wait_for_pending_save() {
  if (pending_save_.joinable()) pending_save_.join();
  snapshot_copied_ = {};
  if (pending_error_) std::rethrow_exception(std::exchange(pending_error_, nullptr));
}

void Trainer::save_checkpoint(const std::map<std::string, double>& metrics) {
  // Hugging Face's rule, in _save_checkpoint: a strict improvement of this step's metric makes it the best.
  const std::string metric = checkpoint::normalize_metric(args_.training.metric_for_best_model);
  if (auto it = metrics.find(metric); it != metrics.end()) {
    const bool greater_is_better =
        args_.training.greater_is_better.value_or(checkpoint::default_greater_is_better(metric));
    const double value = it->second;
    if (!state_.best_metric || !state_.best_model_checkpoint ||
        (greater_is_better ? value > *state_.best_metric : value < *state_.best_metric)) {
      state_.best_metric = value;
      state_.best_model_checkpoint =
          (fs::path(run_dir_) / ("checkpoint-" + std::to_string(state_.global_step))).string();
    }
  }
  const bool async = args_.training.async_save;
  const auto start = Clock::now();
  wait_for_snapshot();
  wait_for_pending_save();
  CheckpointFiles files = collect(async);
  if (!async) {
    commit(std::move(files));
    result_.save_stall_seconds.push_back(seconds_since(start));
    result_.save_write_seconds.push_back(seconds_since(start));
    if (main_process()) emit(TrainEvent::Kind::checkpoint, result_.checkpoints_saved.back());
    return;
  }
  result_.save_stall_seconds.push_back(seconds_since(start));
  std::promise<void> copied;
  snapshot_copied_ = copied.get_future().share();
  // The background thread alone touches result_'s checkpoint lists until it is joined.
  pending_save_ = std::thread([this, files = std::move(files), copied = std::move(copied)]() mutable {
    const auto write_start = Clock::now();
    for (const auto& [live, buffer] : files.pending_copies)
      std::memcpy(buffer.data_ptr(), live.data_ptr(), live.nbytes());
    files.pending_copies.clear();
    copied.set_value();
    try {
      commit(std::move(files));
      result_.save_write_seconds.push_back(seconds_since(write_start));
    } catch (...) {
      pending_error_ = std::current_exception();
    }
  });
}

// Hugging Face's end of train(): the best model loaded when asked, the training metrics logged, and then
// save_model() and save_state(): weights, config.json, training_args.bin and trainer_state.json in the run
// directory.
void Trainer::finish() {
  if (args_.training.load_best_model_at_end && state_.best_model_checkpoint) {
    const fs::path best = fs::path(run_dir_) / fs::path(*state_.best_model_checkpoint).filename();
    if (fs::is_directory(best))
      load_weights(best.string());
    else
      warn("the best checkpoint " + best.string() + " is gone; the final model is the last one");
  }
  const double runtime = seconds_since(started_);
  const double steps = static_cast<double>(steps_this_process_);
  json::Json record = json::Json::object();
  record["epoch"] = state_.epoch;
  record["step"] = state_.global_step;
  record["total_flos"] = state_.total_flos;
  record["train_loss"] = steps > 0 ? loss_total_ / steps : 0.0;
  record["train_runtime"] = round_to(runtime, 4);
  record["train_samples_per_second"] = round_to(steps * static_cast<double>(batch_size_ * world_size_) / runtime, 3);
  record["train_steps_per_second"] = round_to(steps / runtime, 3);
  for (const auto& [k, v] : record.items()) {
    if (v.is_number()) result_.final_metrics[k] = v.get<double>();
  }
  for (const auto& [k, v] : last_eval_) result_.final_metrics[k] = v;
  log(std::move(record));
  CheckpointFiles files = collect(false);
  const auto written = write_weights(run_dir_, files.weights, weights_options_, true);
  // Weights of another layout left by an earlier run (an index, shards, the other format) would shadow these.
  for (const auto& entry : fs::directory_iterator(run_dir_)) {
    const std::string name = entry.path().filename().string();
    const bool weights =
        name == "model.safetensors" || name == "pytorch_model.bin" || name.ends_with(".index.json") ||
        ((name.starts_with("model-") || name.starts_with("pytorch_model-")) && name.find("-of-") != std::string::npos);
    if (weights && entry.is_regular_file() && std::find(written.begin(), written.end(), name) == written.end())
      fs::remove(entry.path());
  }
  write_text((fs::path(run_dir_) / "config.json").string(), files.config, true);
  files.arguments.write((fs::path(run_dir_) / "training_args.bin").string(), files.arguments_root, true);
  write_text((fs::path(run_dir_) / "trainer_state.json").string(), files.trainer_state, true);
}

}  // namespace ckpt::train
