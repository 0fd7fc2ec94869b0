#include "checkpoint/best.hpp"

#include <cmath>
#include <filesystem>

namespace ckpt::checkpoint {

std::string normalize_metric(const std::string& name) { return name.rfind("eval_", 0) == 0 ? name : "eval_" + name; }

bool default_greater_is_better(const std::string& metric) { return metric.find("loss") == std::string::npos; }

std::map<std::string, double> eval_metrics_at(const RunEntry& e) {
  const auto* evaluation = e.state && e.step ? newest_evaluation_at(*e.state, *e.step) : nullptr;
  return evaluation ? evaluation->second : std::map<std::string, double>{};
}

std::string recorded_checkpoint_name(std::string recorded) {
  while (recorded.size() > 1 && recorded.back() == '/') recorded.pop_back();
  return std::filesystem::path(recorded).filename().string();
}

std::optional<std::string> best_checkpoint_name(const TrainerStateSummary& state) {
  if (!state.best_model_checkpoint) return std::nullopt;
  return recorded_checkpoint_name(*state.best_model_checkpoint);
}

std::optional<std::string> best_metric_name(const TrainerStateSummary& state) {
  const auto name = best_checkpoint_name(state);
  const auto step = name ? checkpoint_step(*name) : std::nullopt;
  if (!step || !state.best_metric) return std::nullopt;
  const auto* evaluation = newest_evaluation_at(state, *step);
  if (!evaluation) return std::nullopt;
  std::optional<std::string> found;
  for (const auto& [metric, value] : evaluation->second) {
    if (value != *state.best_metric) continue;
    if (found) return std::nullopt;
    found = metric;
  }
  return found;
}

namespace {

std::optional<double> metric_at(const RunEntry& e, const std::string& metric) {
  const auto metrics = eval_metrics_at(e);
  if (auto m = metrics.find(metric); m != metrics.end()) return m->second;
  return std::nullopt;
}

std::optional<BestCheckpoint> recompute(const RunScan& scan, const std::string& metric, bool greater_is_better) {
  std::optional<BestCheckpoint> best;
  for (std::size_t i : complete_by_step(scan, true)) {
    const auto value = metric_at(scan.entries[i], metric);
    if (!value || std::isnan(*value)) continue;
    const bool better = !best || (greater_is_better ? *value > *best->value : *value < *best->value);
    if (better) best = BestCheckpoint{i, metric, value, "recomputed"};
  }
  return best;
}

}  // namespace

std::optional<BestCheckpoint> find_best(const RunScan& scan, const BestOptions& options) {
  if (options.metric) {
    const std::string metric = normalize_metric(*options.metric);
    return recompute(scan, metric, options.greater_is_better.value_or(default_greater_is_better(metric)));
  }
  if (auto newest = newest_complete(scan)) {
    const RunEntry& source = scan.entries[*newest];
    if (const auto name = source.state ? best_checkpoint_name(*source.state) : std::nullopt) {
      // A live checkpoint first; rotated away, its archive.
      for (EntryKind kind : {EntryKind::checkpoint, EntryKind::archive}) {
        for (std::size_t i = 0; i < scan.entries.size(); ++i) {
          const RunEntry& e = scan.entries[i];
          if (e.kind == kind && e.complete && (kind == EntryKind::checkpoint ? e.name : e.archived_name) == *name) {
            return BestCheckpoint{i, best_metric_name(*source.state).value_or(""), source.state->best_metric,
                                  "trainer_state"};
          }
        }
      }
    }
  }
  return recompute(scan, "eval_loss", options.greater_is_better.value_or(false));
}

}  // namespace ckpt::checkpoint
