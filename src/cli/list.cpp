// `ckpt list RUN_DIR... [--recursive ROOT] [--json] [--metric NAME] [--mode min|max] [--sort step|mtime]`
#include "cli/list.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <iostream>

#include "cli/cli.hpp"
#include "cli/several_runs.hpp"
#include "cli/text.hpp"

namespace ckpt::cli {
namespace {

using checkpoint::EntryKind;

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

json::Json optional_number(const std::optional<double>& v) { return v ? json::Json(*v) : json::Json(nullptr); }

struct ListOptions {
  RunSelection runs;
  bool json = false;
  std::string metric;
  std::string mode;
  std::string sort = "step";
};

}  // namespace

json::Json listing_json(const checkpoint::RunListing& listing) {
  json::Json rows = json::Json::array();
  for (const auto& r : listing.rows) {
    json::ObjectBuilder metrics;
    for (const auto& [k, v] : r.metrics) metrics.set(k, v);
    if (r.loss) metrics.set("loss", *r.loss);
    rows.push_back(
        {{"name", r.name},
         {"path", r.path},
         {"kind", checkpoint::to_string(r.kind)},
         {"step", r.step ? json::Json(*r.step) : json::Json(nullptr)},
         {"epoch", optional_number(r.epoch)},
         {"complete", r.complete},
         {"named", r.named},
         {"is_best", r.is_best},
         {"is_latest", r.is_latest},
         {"global_step", r.global_step ? json::Json(*r.global_step) : json::Json(nullptr)},
         {"size_bytes", r.size_bytes},
         {"original_bytes", r.kind == EntryKind::archive ? json::Json(r.original_bytes) : json::Json(nullptr)},
         {"ratio", r.kind == EntryKind::archive && r.size_bytes
                       ? json::Json(static_cast<double>(r.original_bytes) / static_cast<double>(r.size_bytes))
                       : json::Json(nullptr)},
         {"num_files", r.num_files},
         {"mtime", r.mtime},
         {"metric", optional_number(r.metric)},
         {"metrics", metrics.take()},
         {"problems", r.problems},
         {"layout", r.layout.empty() ? json::Json(nullptr) : json::Json(r.layout)}});
  }
  return rows;
}

namespace {

// "3 checkpoints (2 complete), 1 archive, 1.2 MiB"
std::string totals_text(const checkpoint::ListingTotals& t) {
  return fmt::format("{} checkpoint{} ({} complete), {} archive{}, {}{}", t.checkpoints, t.checkpoints == 1 ? "" : "s",
                     t.complete, t.archives, t.archives == 1 ? "" : "s",
                     t.named ? fmt::format("{} named, ", t.named) : "", human_bytes(t.size_bytes));
}

// `out` with {checkpoints, complete, archives, size_bytes}.
json::Json totals_json(const checkpoint::ListingTotals& t, json::Json out = json::Json::object()) {
  out["checkpoints"] = t.checkpoints;
  out["complete"] = t.complete;
  out["archives"] = t.archives;
  out["named"] = t.named;
  out["size_bytes"] = t.size_bytes;
  return out;
}

// The step a staging directory is writing, from its name (tmp-checkpoint-N, .ckpt-staging-checkpoint-N-*).
std::optional<std::int64_t> staging_step(const std::string& name) {
  for (const std::string prefix : {"tmp-", ".ckpt-staging-"}) {
    if (name.rfind(prefix, 0) != 0) continue;
    const std::string rest = name.substr(prefix.size());
    return checkpoint::checkpoint_step(rest.substr(0, rest.find('-', std::string("checkpoint-").size())));
  }
  return std::nullopt;
}

// Epochs as a person reads them: two decimals at most ("2.33", "7.5", "5"); --json keeps the exact value.
std::string epoch_text(const std::optional<double>& epoch) {
  if (!epoch || !std::isfinite(*epoch)) return number_text(epoch);
  std::string text = fmt::format("{:.2f}", *epoch);
  text.erase(text.find_last_not_of('0') + 1);
  if (text.back() == '.') text.pop_back();
  return text;
}

}  // namespace

std::string listing_text(const checkpoint::RunListing& listing) {
  if (listing.rows.empty()) return fmt::format("{}: no checkpoints\n", printable(listing.path));
  const double now = now_seconds();
  // The layout column only for runs that have one (multi-GPU layouts), so other runs' tables stay as they were.
  const bool layouts =
      std::any_of(listing.rows.begin(), listing.rows.end(), [](const auto& r) { return !r.layout.empty(); });
  std::vector<std::string> header = {"name", "step",    "epoch", "loss", listing.metric.value_or("metric"),
                                     "",     "complete"};
  if (layouts) header.push_back("layout");
  header.insert(header.end(), {"size", "age", "note"});
  Table table(header);
  for (const auto& r : listing.rows) {
    std::string marks;
    if (r.is_best) marks += "best";
    if (r.is_latest) marks += marks.empty() ? "newest" : ",newest";
    if (r.named) marks += "named";  // never best or newest: those are checkpoint-N or archives
    std::optional<std::int64_t> step = r.step;
    std::string complete;
    switch (r.kind) {
      case EntryKind::checkpoint:
        complete = r.complete ? "yes" : "NO";
        break;
      case EntryKind::archive:
        complete = r.complete ? "archived" : "BAD ARCHIVE";
        break;
      case EntryKind::staging:
        step = staging_step(r.name);
        complete = step ? fmt::format("(writing step {})", *step) : "staging";
        break;
      default:
        complete = r.named ? (r.complete ? "yes" : "NO") : checkpoint::to_string(r.kind);
    }
    std::string size = human_bytes(r.size_bytes);
    if (r.kind == EntryKind::archive && r.complete && r.size_bytes) {
      size += fmt::format(" ({:.2f}x)", static_cast<double>(r.original_bytes) / static_cast<double>(r.size_bytes));
    }
    std::vector<std::string> row = {r.name,
                                    step ? std::to_string(*step) : "-",
                                    epoch_text(r.epoch),
                                    number_text(r.loss),
                                    number_text(r.metric),
                                    marks,
                                    complete};
    if (layouts) row.push_back(r.layout.empty() ? "-" : r.layout);
    row.insert(row.end(), {size, human_age(now - r.mtime), r.problems.empty() ? "" : r.problems.front()});
    table.add(row);
  }
  return table.render() + "total: " + totals_text(checkpoint::totals_of(listing)) + "\n";
}

namespace {

// Each run under a line naming it (one with nothing to list says so in its one line), a blank line between runs,
// then the totals over them; --json: {"runs": [{"run_dir", "checkpoints": [...], "totals"} or {"run_dir", "error"}],
// "totals"}.
int list_several(const ListOptions& o, const checkpoint::ListOptions& options) {
  checkpoint::ListingTotals overall;
  bool printed = false;
  const SeveralRuns done = for_each_run(o.runs, [&](const std::string& run_dir) -> json::Json {
    require_run_directory(run_dir);
    const auto listing = checkpoint::list_run(run_dir, options);
    const auto totals = checkpoint::totals_of(listing);
    overall += totals;
    if (o.json) return {{"run_dir", run_dir}, {"checkpoints", listing_json(listing)}, {"totals", totals_json(totals)}};
    print_text((printed ? "\n" : "") + (listing.rows.empty() ? "" : printable(run_dir) + ":\n") +
               listing_text(listing));
    printed = true;
    return nullptr;
  });
  if (o.json) {
    const json::Json totals = totals_json(overall, {{"runs", done.handled}, {"failed", done.failed}});
    std::cout << json::dump({{"runs", done.runs}, {"totals", totals}}, 2) << "\n";
  } else {
    print_text((printed ? "\n" : "") + overall_text(done, totals_text(overall)));
  }
  return done.exit_code;
}

}  // namespace

Action attach_list(CLI::App& sub) {
  auto o = std::make_shared<ListOptions>();
  add_run_selection(sub, o->runs);
  sub.add_flag("--json", o->json,
               "Print a JSON array of objects on stdout (several runs: one document of them, with totals)");
  sub.add_option("--metric", o->metric, "Recompute the best from this metric (eval_ prefixed if missing)");
  sub.add_option("--mode", o->mode, "min or max [default: min for names containing 'loss', else max]")
      ->check(one_of({"min", "max"}));
  sub.add_option("--sort", o->sort, "Order checkpoints by step or by mtime (Hugging Face's use_mtime rule)")
      ->check(one_of({"step", "mtime"}));
  sub.add_flag_callback(
      "--use-mtime", [o] { o->sort = "mtime"; }, "Same as --sort mtime (Hugging Face's use_mtime)");
  return [o]() -> int {
    require_runs(o->runs, "list");
    checkpoint::ListOptions options;
    if (!o->metric.empty()) options.best.metric = o->metric;
    if (!o->mode.empty()) options.best.greater_is_better = o->mode == "max";
    options.by_mtime = o->sort == "mtime";
    if (o->runs.several()) return list_several(*o, options);
    const std::string& run_dir = o->runs.run_dirs.front();
    require_run_directory(run_dir);
    const auto listing = checkpoint::list_run(run_dir, options);
    if (o->json)
      std::cout << json::dump(listing_json(listing), 2) << "\n";
    else
      print_text(listing_text(listing));
    return exit_ok;
  };
}

}  // namespace ckpt::cli
