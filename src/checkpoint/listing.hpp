// What `ckpt list` (and `inspect` of a run directory) shows: every entry of a run directory with its step,
// completeness, metrics, size, and which checkpoint is the best and which the newest; archived checkpoints
// beside the live ones, with their compression.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "checkpoint/best.hpp"
#include "checkpoint/run_dir.hpp"

namespace ckpt::checkpoint {

struct ListRow {
  std::string name;
  std::string path;
  EntryKind kind = EntryKind::custom;
  std::optional<std::int64_t> step;
  std::optional<double> epoch;
  bool complete = false;
  bool named = false;  // a named checkpoint (RunEntry::named); its step is its trainer_state.json's
  bool is_best = false;
  bool is_latest = false;            // the newest complete checkpoint: what resume picks
  std::uint64_t size_bytes = 0;      // an archive: the archive file's
  std::uint64_t original_bytes = 0;  // an archive: the checkpoint it holds
  std::size_t num_files = 0;
  double mtime = 0;
  std::optional<std::int64_t> global_step;  // from trainer_state.json
  std::optional<double> loss;
  std::optional<double> metric;  // the best-metric's value here, when a metric is known
  std::map<std::string, double> metrics;
  std::vector<std::string> problems;
  std::string layout;  // RunEntry::layout
};

struct RunListing {
  std::string path;
  std::vector<ListRow> rows;
  std::optional<std::string> metric;  // the metric shown in `metric`
};

struct ListOptions {
  BestOptions best;
  bool by_mtime = false;  // order checkpoints by modification time (Hugging Face's rule)
};

RunListing list_run(const std::string& run_dir, const ListOptions& options);

// What a listing's total line counts, per run and over several: checkpoint directories (and how many are complete),
// archives, and the bytes of every entry listed.
struct ListingTotals {
  std::size_t checkpoints = 0;
  std::size_t complete = 0;
  std::size_t archives = 0;
  std::size_t named = 0;
  std::uint64_t size_bytes = 0;
  ListingTotals& operator+=(const ListingTotals& other);
};
ListingTotals totals_of(const RunListing& listing);

}  // namespace ckpt::checkpoint
