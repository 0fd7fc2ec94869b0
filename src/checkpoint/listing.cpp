#include "checkpoint/listing.hpp"

#include <set>

namespace ckpt::checkpoint {

RunListing list_run(const std::string& run_dir, const ListOptions& options) {
  const RunScan scan = scan_run(run_dir);
  const auto best = find_best(scan, options.best);
  const auto newest = newest_complete(scan);
  RunListing listing;
  listing.path = run_dir;
  listing.metric = options.best.metric             ? std::optional(normalize_metric(*options.best.metric))
                   : best && !best->metric.empty() ? std::optional(best->metric)
                                                   : std::optional<std::string>("eval_loss");

  // By step, the scan's own order: checkpoints and archives by step (an archive after the live checkpoint of its
  // step), then the rest by name. By mtime, the checkpoints in Hugging Face's order first.
  std::vector<std::size_t> order;
  if (options.by_mtime) order = ordered_checkpoints(scan, false, true);
  const std::set<std::size_t> listed(order.begin(), order.end());
  for (std::size_t i = 0; i < scan.entries.size(); ++i) {
    if (!listed.count(i)) order.push_back(i);
  }
  for (std::size_t i : order) {
    const RunEntry& e = scan.entries[i];
    if (e.kind == EntryKind::trash) continue;
    ListRow row;
    row.name = e.name;
    row.path = e.path;
    row.kind = e.kind;
    row.step = e.step;
    row.complete = e.complete;
    row.named = e.named;
    row.is_best = best && best->entry == i;
    row.is_latest = newest && *newest == i;
    row.size_bytes = e.size_bytes;
    row.original_bytes = e.original_bytes;
    row.num_files = e.num_files;
    row.mtime = e.mtime;
    row.problems = e.problems;
    row.layout = e.layout;
    if (e.state) {
      row.epoch = e.state->epoch;
      row.global_step = e.state->global_step;
      row.loss = e.state->last_loss;
    }
    row.metrics = eval_metrics_at(e);
    if (auto m = row.metrics.find(*listing.metric); m != row.metrics.end()) row.metric = m->second;
    listing.rows.push_back(std::move(row));
  }
  return listing;
}

ListingTotals& ListingTotals::operator+=(const ListingTotals& other) {
  checkpoints += other.checkpoints;
  complete += other.complete;
  archives += other.archives;
  named += other.named;
  size_bytes += other.size_bytes;
  return *this;
}

ListingTotals totals_of(const RunListing& listing) {
  ListingTotals totals;
  for (const auto& r : listing.rows) {
    totals.checkpoints += r.kind == EntryKind::checkpoint;
    totals.complete += r.kind == EntryKind::checkpoint && r.complete;
    totals.archives += r.kind == EntryKind::archive;
    totals.named += r.named;
    totals.size_bytes += r.size_bytes;
  }
  return totals;
}

}  // namespace ckpt::checkpoint
