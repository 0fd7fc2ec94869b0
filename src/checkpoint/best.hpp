// Which checkpoint of a run is the best: Hugging Face's rule, shared by `ckpt best`, `list`, `rotate` and the
// trainer.
#pragma once

#include <map>
#include <optional>
#include <string>

#include "checkpoint/run_dir.hpp"

namespace ckpt::checkpoint {

struct BestOptions {
  std::optional<std::string> metric;      // recompute with this metric ("eval_" is prefixed if missing)
  std::optional<bool> greater_is_better;  // default: false for names containing "loss", else true
};

struct BestCheckpoint {
  std::size_t entry = 0;        // index into RunScan::entries
  std::string metric;           // the metric compared (from trainer_state: best_metric_name); empty when unknown
  std::optional<double> value;  // its value at the best checkpoint
  std::string source;           // "trainer_state" or "recomputed"
};

// The evaluation metrics a checkpoint reached: the newest evaluation logged at or before its step, from its
// own trainer_state.json (empty when none).
std::map<std::string, double> eval_metrics_at(const RunEntry& entry);

// The name of a checkpoint a trainer_state.json records by path (best_model_checkpoint): its last path component,
// so absolute, relative and stale paths of a moved run all work (a trailing separator is dropped first, as
// Python's Path does).
std::string recorded_checkpoint_name(std::string recorded);
// recorded_checkpoint_name of best_model_checkpoint, when there is one.
std::optional<std::string> best_checkpoint_name(const TrainerStateSummary& state);

// Which metric best_metric is, which trainer_state.json does not record: the evaluation metric logged at
// best_model_checkpoint's step (the newest evaluation at or before it) whose value is exactly best_metric, when
// exactly one is (the Trainer stores the logged value itself); nullopt when none or several are.
std::optional<std::string> best_metric_name(const TrainerStateSummary& state);

// "loss" -> "eval_loss"; names already starting with "eval_" are kept.
std::string normalize_metric(const std::string& name);
bool default_greater_is_better(const std::string& metric);

// Without a metric: best_model_checkpoint from the newest complete checkpoint's trainer_state.json, resolved by
// best_checkpoint_name inside the run directory, to the live checkpoint or else its archive, its metric named by
// best_metric_name; when that names neither, recomputed with eval_loss. Recomputing considers
// archives too (an archive only for a step with no live checkpoint). With a metric: recomputed from every complete
// checkpoint's own log_history (the newest evaluation at or before its step), only a strict improvement
// counting, so ties stay with the earlier step. Nullopt when no checkpoint has the metric.
std::optional<BestCheckpoint> find_best(const RunScan& scan, const BestOptions& options);

}  // namespace ckpt::checkpoint
