// The boundary between the `ckpt` binary and the trainer library (libckpt_train.so), which links LibTorch and
// is loaded with dlopen only by `save` and `resume`. Torch-free. Both sides are built from this header by the
// same build, and the library refuses a request whose api_version differs. Errors do not cross the boundary
// as exceptions: the library returns them in TrainResult::error.
#pragma once

#ifndef CKPT_VERSION
#error "CKPT_VERSION must be defined by the build"
#endif

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "train/arguments.hpp"

namespace ckpt::train {

inline constexpr int kApiVersion = 4;
inline constexpr const char* kEntryPoint = "ckpt_train_run";
inline constexpr const char* kLibraryName = "libckpt_train.so";

enum class TrainMode { save, resume };

// What `save` does when the run directory holds an earlier run's checkpoints (checkpoint::earlier_checkpoints).
// Rank 0 decides, holding the trainer lock, once for the whole group.
enum class EarlierRun {
  refuse,     // invalid_argument naming the ways out (checkpoint::earlier_run_error)
  overwrite,  // --overwrite-output-dir: deleted first (checkpoint::clear_earlier_run), then a new run
  resume,     // --resume-if-exists: continued as `ckpt resume RUN_DIR` continues it
};

// What the trainer reports while it runs; the CLI renders these (the library never prints).
struct TrainEvent {
  enum class Kind { progress, log, checkpoint, warning, resumed, overwritten };
  Kind kind = Kind::progress;
  std::int64_t step = 0;
  std::int64_t max_steps = 0;
  std::int64_t start_step = 0;  // the step this process began training at (resumed: the checkpoint's)
  double elapsed_seconds = 0;
  std::optional<double> loss;  // progress: the latest logged training loss
  // log: the record as JSON; checkpoint: its path; warning: the message; resumed: the checkpoint directory or
  // archive restored, before any step is trained; overwritten: a checkpoint directory or archive deleted
  std::string text;
};

// This process's place in a torch.distributed group, from the launcher's environment (RANK, WORLD_SIZE,
// LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT). world_size 1: a single process, no group.
struct DistributedSettings {
  int rank = 0;
  int world_size = 1;
  int local_world_size = 1;  // the processes on this machine, which share its cores
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
};

struct TrainRequest {
  // Checked by the library before it touches anything else: a library from another build is refused.
  int api_version = kApiVersion;
  std::size_t request_size = 0;  // run_trainer sets both to this build's sizeof
  std::size_t result_size = 0;
  const char* build = CKPT_VERSION;
  TrainMode mode = TrainMode::save;
  EarlierRun earlier_run = EarlierRun::refuse;  // save
  std::string run_dir;                          // resume: the run directory
  std::optional<std::string> from;              // resume: checkpoint-N (in run_dir) or a checkpoint directory's path
  // The last step is saved as a checkpoint even when --save-steps does not fall on it: --save-name, which the
  // binary then tags (checkpoint::tag_checkpoint) from TrainResult::last_checkpoint.
  bool checkpoint_at_end = false;
  ArgumentValues given;  // the flags given on the command line, by key
  DistributedSettings distributed;
  std::function<void(const TrainEvent&)> on_event;
  const std::atomic<bool>* interrupted = nullptr;  // set by the CLI's SIGINT handler
};

struct TrainError {
  int kind = 0;  // an ErrorKind
  std::string path;
  std::string where;
  std::string what;
};

struct TrainResult {
  std::string output_dir;
  std::optional<std::string> resumed_from;
  std::int64_t start_step = 0;  // the step training began at: 0, or the checkpoint's
  std::int64_t global_step = 0;
  std::int64_t max_steps = 0;
  // The newest checkpoint holding this run's state (the last it saved, else the one it resumed from) and its
  // step; whether `ckpt resume RUN_DIR` without --from continues from it (it is the run directory's newest
  // complete checkpoint). What an interrupted run's message tells the user to run.
  std::optional<std::string> last_checkpoint;
  std::optional<std::int64_t> last_checkpoint_step;
  bool resume_takes_last_checkpoint = false;
  double epoch = 0;
  std::vector<std::string> checkpoints_saved;    // paths, in order
  std::vector<std::string> checkpoints_removed;  // by save_total_limit
  std::vector<std::string> overwritten;          // an earlier run's checkpoints and archives, by --overwrite-output-dir
  std::optional<std::string> best_model_checkpoint;
  std::optional<double> best_metric;
  std::string best_metric_name;                 // what best_metric measures (metric_for_best_model, eval_ prefixed)
  std::map<std::string, double> final_metrics;  // train_runtime, train_loss, ... and the last eval_*
  // Timings: per checkpoint, how long the training thread stood still for it (the whole write when
  // synchronous; the snapshot and any wait for the previous write with --async-save) and how long writing and
  // committing it took; and how long resume took to load the checkpoint.
  std::vector<double> save_stall_seconds;
  std::vector<double> save_write_seconds;
  std::optional<double> load_seconds;
  std::vector<std::string> warnings;
  bool interrupted = false;
  std::optional<TrainError> error;
};

// The library's one exported symbol, looked up by kEntryPoint.
using EntryFunction = void (*)(const TrainRequest& request, TrainResult& result);

}  // namespace ckpt::train
