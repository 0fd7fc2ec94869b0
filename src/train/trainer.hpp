// The embedded trainer's class, shared by its files: trainer.cpp (entry point, setup, the loop), trainer_resume.cpp
// (finding and loading a checkpoint), trainer_save.cpp (writing checkpoints, synchronously or in the background,
// and the end of training); trainer_state (trainer_state.json) is torch-free. The order of random draws and the
// multi-process scheme are described at the top of trainer.cpp.
#pragma once

#include <chrono>
#include <exception>
#include <future>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "checkpoint/lock.hpp"
#include "train/api.hpp"
#include "train/arguments.hpp"
#include "train/data.hpp"
#include "train/distributed.hpp"
#include "train/model.hpp"
#include "train/optim.hpp"
#include "train/rng.hpp"
#include "train/tensors.hpp"
#include "train/trainer_state.hpp"
#include "util/error.hpp"
#include "util/fs.hpp"

namespace ckpt::train {

using pickle::NodeId;
using Clock = std::chrono::steady_clock;
using Parameters = std::vector<std::pair<std::string, at::Tensor>>;

inline double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// ---- what one checkpoint holds, ready to be written ----

struct CheckpointFiles {
  std::int64_t step = 0;
  bool main = true;  // the main process's files: all but the other ranks' rng states and optimizer shards
  bool has_optimizer = true;
  std::string optimizer_name = "optimizer.pt";
  std::string rng_name = "rng_state.pth";
  // With --async-save: (live tensor, snapshot buffer) pairs still to be copied before writing.
  std::vector<std::pair<at::Tensor, at::Tensor>> pending_copies;
  Parameters weights;  // contiguous tensors (copies when the save is asynchronous)
  GraphMaker optimizer, scheduler, scaler, rng, arguments;
  NodeId optimizer_root = 0, scheduler_root = 0, scaler_root = 0, rng_root = 0, arguments_root = 0;
  bool has_scaler = false;
  std::string trainer_state;
  std::string config;
};

struct WeightsOptions {
  bool safetensors = true;
  std::optional<std::uint64_t> max_shard_size;
};

// `durable` false: `dir` is a staging directory whose files the caller fsyncs before renaming it.
// Returns the names of the files written.
std::vector<std::string> write_weights(const std::string& dir, const Parameters& weights, const WeightsOptions& options,
                                       bool durable);
void write_text(const std::string& path, const std::string& text, bool durable);
// Writes this process's files of a checkpoint into the staging directory `dir` and makes each durable (the
// directory itself is the committer's). The weights and trainer_state.json come last but one and last: a
// checkpoint counts as complete once they are there.
void write_checkpoint_files(const std::string& dir, CheckpointFiles& files, const WeightsOptions& options);

class Trainer {
 public:
  Trainer(const TrainRequest& request, TrainResult& result) : request_(request), result_(result) {}
  ~Trainer() {
    // A restored copy left by a failure; if even that fails, the next run clears it as a leftover staging directory.
    try {
      if (restored_dir_) fs_util::remove_tree(*restored_dir_);
    } catch (const Error&) {}
  }
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;
  void run();

 private:
  void emit(TrainEvent::Kind kind, std::string text = {}) const {
    if (!request_.on_event) return;
    TrainEvent e;
    e.kind = kind;
    e.step = state_.global_step;
    e.max_steps = max_steps_;
    e.start_step = start_step_;
    e.elapsed_seconds = seconds_since(started_);
    e.loss = last_loss_;
    e.text = std::move(text);
    request_.on_event(e);
  }
  void warn(const std::string& message) {
    result_.warnings.push_back(message);
    emit(TrainEvent::Kind::warning, message);
  }
  bool interrupted() const { return request_.interrupted && request_.interrupted->load(); }
  bool main_process() const { return rank_ == 0; }

  // Runs `work` on this rank, then, in a group, has every rank agree that it succeeded: when another rank
  // failed, this one throws an error naming it, so every rank stops at the same point.
  template <typename Work>
  void together(const std::string& what, Work&& work);
  // The run itself, once the group (if any) is formed.
  void run_in_group();
  // Resume: the checkpoint directory (rank 0 finds it, restoring an archive if need be; the others are told).
  std::string find_checkpoint();
  void prepare_arguments(const std::string& checkpoint_dir);
  void agree_on_arguments();
  void validate_arguments() const;
  void open_run_directory();
  bool take_over_run_directory();
  void build();
  void restore(const std::string& checkpoint_dir);
  void draw_epoch_order();
  void train();
  void train_step(const at::Tensor& inputs, const at::Tensor& labels);
  void all_reduce_gradients(at::Tensor& loss_value);
  void broadcast_parameter_shares();
  std::map<std::string, double> evaluate();
  void log(json::Json record);
  void save_checkpoint(const std::map<std::string, double>& metrics);
  CheckpointFiles collect(bool copy);
  void commit(CheckpointFiles files);
  void remove_staging_after_failure(const std::string& staging);
  void wait_for_pending_save();
  // Before anything modifies parameters or optimizer state: the asynchronous save's copy of them is done.
  void wait_for_snapshot();
  void finish();
  void load_weights(const std::string& dir);

  const TrainRequest& request_;
  TrainResult& result_;
  Clock::time_point started_ = Clock::now();
  int rank_ = 0;
  int world_size_ = 1;
  std::unique_ptr<ProcessGroup> group_;  // with more than one process
  std::vector<int> owner_;               // --shard-optimizer: per parameter, the rank that steps it
  bool stop_requested_ = false;          // in a group: some rank was interrupted (agreed at the last step)

  Arguments args_;
  std::string run_dir_;
  std::optional<std::string> resume_dir_;
  // Resuming from an archive: the staging directory it was restored into, removed once loaded, and the archive.
  std::optional<std::string> restored_dir_;
  std::string restored_from_;
  std::unique_ptr<checkpoint::RunLock> train_lock_;
  WeightsOptions weights_options_;

  std::unique_ptr<MLP> model_;
  std::unique_ptr<AdamW> optimizer_;
  std::unique_ptr<LinearSchedule> schedule_;
  std::optional<GradScaler> scaler_;
  PythonRandom python_;
  NumpyRandom numpy_;
  SyntheticData data_;
  TrainerState state_;

  std::int64_t max_steps_ = 0;
  std::int64_t start_step_ = 0;  // the global step this process began training at
  std::int64_t steps_per_epoch_ = 0;
  std::int64_t batch_size_ = 0;
  std::vector<std::int64_t> order_;       // this epoch's example order
  std::vector<std::int64_t> rank_order_;  // this rank's examples of it (DistributedSampler's split)
  bool order_drawn_ = false;              // resumed mid-epoch: the replayed order is the current one

  at::Tensor loss_since_log_ = at::zeros({}, at::kFloat);
  double loss_total_ = 0;
  std::int64_t steps_this_process_ = 0;
  std::int64_t last_logged_step_ = 0;
  std::optional<double> last_loss_;
  std::optional<double> last_grad_norm_;
  std::map<std::string, double> last_eval_;

  // --async-save copies into these, kept from one checkpoint to the next so that only the first snapshot pays
  // for fresh memory. Safe to overwrite once the previous write has been waited for.
  std::vector<at::Tensor> snapshot_buffers_;
  // Set while the background thread copies parameters and optimizer state: the next optimizer step, the only
  // thing that modifies them, waits for it; the forward and backward passes run meanwhile.
  std::shared_future<void> snapshot_copied_;
  std::thread pending_save_;
  std::exception_ptr pending_error_;
  bool stopped_early_ = false;  // by Ctrl-C, before max_steps
};

template <typename Work>
void Trainer::together(const std::string& what, Work&& work) {
  if (!group_) {
    work();
    return;
  }
  std::exception_ptr failure;
  std::optional<Error> error;
  try {
    work();
  } catch (const Error& e) {
    failure = std::current_exception();
    error = e;
  } catch (const std::exception& e) {
    failure = std::current_exception();
    error = Error(ErrorKind::io, "", "", e.what());
  }
  group_->agree(error ? &*error : nullptr, what);
  if (failure) std::rethrow_exception(failure);
}

}  // namespace ckpt::train
