#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <map>
#include <string>

#include "checkpoint/best.hpp"

using namespace ckpt;
using checkpoint::BestOptions;
using checkpoint::EntryKind;
using checkpoint::RunEntry;
using checkpoint::RunScan;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// A complete checkpoint-STEP whose trainer_state.json logged `metrics` as its evaluation at STEP.
RunEntry checkpoint_at(std::int64_t step, std::map<std::string, double> metrics) {
  RunEntry e;
  e.name = "checkpoint-" + std::to_string(step);
  e.path = "run/" + e.name;
  e.kind = EntryKind::checkpoint;
  e.step = step;
  e.complete = true;
  e.state.emplace();
  e.state->global_step = step;
  if (!metrics.empty()) e.state->eval_by_step[step] = std::move(metrics);
  return e;
}

// The name of the checkpoint find_best picks, or "none".
std::string best_of(const RunScan& scan, const BestOptions& options) {
  const auto best = checkpoint::find_best(scan, options);
  return best ? scan.entries[best->entry].name : "none";
}

BestOptions metric(const std::string& name, std::optional<bool> greater_is_better = std::nullopt) {
  return BestOptions{name, greater_is_better};
}

}  // namespace

TEST_CASE("best: a metric is looked up as eval_NAME, and greater is better unless its name holds 'loss'") {
  CHECK(checkpoint::normalize_metric("loss") == "eval_loss");
  CHECK(checkpoint::normalize_metric("eval_accuracy") == "eval_accuracy");
  CHECK(checkpoint::default_greater_is_better("eval_accuracy"));
  CHECK_FALSE(checkpoint::default_greater_is_better("eval_loss"));
  CHECK_FALSE(checkpoint::default_greater_is_better("eval_val_loss_smoothed"));

  RunScan scan{"run",
               {checkpoint_at(10, {{"eval_loss", 0.5}, {"eval_accuracy", 0.7}}),
                checkpoint_at(20, {{"eval_loss", 0.3}, {"eval_accuracy", 0.6}}),
                checkpoint_at(30, {{"eval_loss", 0.4}, {"eval_accuracy", 0.8}})}};
  CHECK(best_of(scan, metric("loss")) == "checkpoint-20");
  CHECK(best_of(scan, metric("eval_loss")) == "checkpoint-20");
  CHECK(best_of(scan, metric("accuracy")) == "checkpoint-30");
  // --greater-is-better overrides what the name suggests.
  CHECK(best_of(scan, metric("loss", true)) == "checkpoint-10");
  CHECK(best_of(scan, metric("accuracy", false)) == "checkpoint-20");

  const auto best = checkpoint::find_best(scan, metric("accuracy"));
  REQUIRE(best);
  CHECK(best->metric == "eval_accuracy");
  CHECK(best->value == 0.8);
  CHECK(best->source == "recomputed");
}

TEST_CASE("best: ties stay with the earlier step, whichever direction is better") {
  RunScan scan{"run",
               {checkpoint_at(10, {{"eval_loss", 0.5}}), checkpoint_at(20, {{"eval_loss", 0.2}}),
                checkpoint_at(30, {{"eval_loss", 0.2}}), checkpoint_at(40, {{"eval_loss", 0.5}})}};
  CHECK(best_of(scan, metric("loss")) == "checkpoint-20");
  CHECK(best_of(scan, metric("loss", true)) == "checkpoint-10");
}

TEST_CASE("best: checkpoints without the metric, or with NaN, are passed over; none with it is no best") {
  RunScan scan{"run",
               {checkpoint_at(10, {{"eval_loss", kNaN}}), checkpoint_at(20, {}),
                checkpoint_at(30, {{"eval_loss", 0.9}}), checkpoint_at(40, {{"eval_accuracy", 0.1}})}};
  CHECK(best_of(scan, metric("loss")) == "checkpoint-30");
  // NaN is never better than a number, in either direction, nor taken when it comes first.
  CHECK(best_of(scan, metric("loss", true)) == "checkpoint-30");
  CHECK(best_of(scan, metric("perplexity")) == "none");
  CHECK(best_of(RunScan{"run", {}}, metric("loss")) == "none");
  CHECK(best_of(RunScan{"run", {checkpoint_at(10, {{"eval_loss", kNaN}})}}, metric("loss")) == "none");
}

TEST_CASE("best: a checkpoint reports the newest evaluation at or before its step, never a later one") {
  RunScan scan{"run", {checkpoint_at(10, {}), checkpoint_at(20, {})}};
  // Evaluations logged at steps 5 and 15 by the run; checkpoint-10 saw only the first.
  for (auto& e : scan.entries) {
    e.state->eval_by_step[5] = {{"eval_loss", 0.9}};
    e.state->eval_by_step[15] = {{"eval_loss", 0.1}};
  }
  CHECK(checkpoint::eval_metrics_at(scan.entries[0]) == std::map<std::string, double>{{"eval_loss", 0.9}});
  CHECK(checkpoint::eval_metrics_at(scan.entries[1]) == std::map<std::string, double>{{"eval_loss", 0.1}});
  CHECK(best_of(scan, metric("loss")) == "checkpoint-20");
}

TEST_CASE("best: incomplete checkpoints and custom directories are never the best") {
  RunScan scan{"run", {checkpoint_at(10, {{"eval_loss", 0.5}}), checkpoint_at(20, {{"eval_loss", 0.1}})}};
  scan.entries[1].complete = false;
  RunEntry named = checkpoint_at(30, {{"eval_loss", 0.01}});
  named.name = "final";
  named.kind = EntryKind::custom;
  named.named = true;
  scan.entries.push_back(named);
  CHECK(best_of(scan, metric("loss")) == "checkpoint-10");
}

TEST_CASE(
    "best without a metric: best_model_checkpoint of the newest complete checkpoint, by its last path component") {
  RunScan scan{"run",
               {checkpoint_at(10, {{"eval_loss", 0.2}, {"eval_accuracy", 0.9}}),
                checkpoint_at(20, {{"eval_loss", 0.1}}), checkpoint_at(30, {{"eval_loss", 0.3}})}};
  // What the newest checkpoint records wins over what recomputing eval_loss would find (checkpoint-20).
  scan.entries[2].state->best_model_checkpoint = "/elsewhere/old-run/checkpoint-10/";
  scan.entries[2].state->best_metric = 0.9;
  scan.entries[2].state->eval_by_step[10] = {{"eval_loss", 0.2}, {"eval_accuracy", 0.9}};
  auto best = checkpoint::find_best(scan, {});
  REQUIRE(best);
  CHECK(scan.entries[best->entry].name == "checkpoint-10");
  CHECK(best->source == "trainer_state");
  CHECK(best->metric == "eval_accuracy");  // the metric logged at step 10 whose value is best_metric
  CHECK(best->value == 0.9);

  // A best_metric two metrics share names no metric.
  scan.entries[2].state->eval_by_step[10] = {{"eval_loss", 0.9}, {"eval_accuracy", 0.9}};
  best = checkpoint::find_best(scan, {});
  REQUIRE(best);
  CHECK(best->metric.empty());

  // Rotated away: its archive is the best.
  RunEntry archive;
  archive.name = "checkpoint-10.ckpt";
  archive.kind = EntryKind::archive;
  archive.archived_name = "checkpoint-10";
  archive.step = 10;
  archive.complete = true;
  scan.entries.erase(scan.entries.begin());
  scan.entries.push_back(archive);
  best = checkpoint::find_best(scan, {});
  REQUIRE(best);
  CHECK(scan.entries[best->entry].name == "checkpoint-10.ckpt");

  // Naming nothing the run holds: recomputed with eval_loss, smaller better.
  scan.entries.pop_back();
  best = checkpoint::find_best(scan, {});
  REQUIRE(best);
  CHECK(scan.entries[best->entry].name == "checkpoint-20");
  CHECK(best->source == "recomputed");
  CHECK(best->metric == "eval_loss");
}

TEST_CASE("best: recorded checkpoint paths are reduced to their last component, as Python's Path does") {
  CHECK(checkpoint::recorded_checkpoint_name("/data/run/checkpoint-500") == "checkpoint-500");
  CHECK(checkpoint::recorded_checkpoint_name("run/checkpoint-500//") == "checkpoint-500");
  CHECK(checkpoint::recorded_checkpoint_name("checkpoint-500") == "checkpoint-500");
  CHECK(checkpoint::recorded_checkpoint_name("/") == "");
}
