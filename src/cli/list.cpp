// `ckpt list RUN_DIR [--json] [--metric NAME] [--mode min|max] [--sort step|mtime]`
#include "cli/list.hpp"

#include <fmt/format.h>

#include <chrono>
#include <iostream>

#include "cli/cli.hpp"
#include "cli/text.hpp"

namespace ckpt::cli {
namespace {

using checkpoint::EntryKind;

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

json::Json optional_number(const std::optional<double>& v) { return v ? json::Json(*v) : json::Json(nullptr); }

struct ListOptions {
  std::string run_dir;
  bool json = false;
  std::string metric;
  std::string mode;
  std::string sort = "step";
};

}  // namespace

json::Json listing_json(const checkpoint::RunListing& listing) {
  json::Json rows = json::Json::array();
  for (const auto& r : listing.rows) {
    json::Json metrics = json::Json::object();
    for (const auto& [k, v] : r.metrics) metrics[k] = v;
    if (r.loss) metrics["loss"] = *r.loss;
    rows.push_back({{"name", r.name},
                    {"path", r.path},
                    {"kind", checkpoint::to_string(r.kind)},
                    {"step", r.step ? json::Json(*r.step) : json::Json(nullptr)},
                    {"epoch", optional_number(r.epoch)},
                    {"complete", r.complete},
                    {"is_best", r.is_best},
                    {"is_latest", r.is_latest},
                    {"global_step", r.global_step ? json::Json(*r.global_step) : json::Json(nullptr)},
                    {"size_bytes", r.size_bytes},
                    {"original_bytes", r.kind == EntryKind::archive ? json::Json(r.original_bytes) : json::Json(nullptr)},
                    {"ratio", r.kind == EntryKind::archive && r.size_bytes ? json::Json(static_cast<double>(r.original_bytes) / static_cast<double>(r.size_bytes))
                                                                            : json::Json(nullptr)},
                    {"num_files", r.num_files},
                    {"mtime", r.mtime},
                    {"metric", optional_number(r.metric)},
                    {"metrics", std::move(metrics)},
                    {"problems", r.problems}});
  }
  return rows;
}

std::string listing_text(const checkpoint::RunListing& listing) {
  if (listing.rows.empty()) return fmt::format("{}: no checkpoints\n", printable(listing.path));
  const double now = now_seconds();
  Table table({"name", "step", "epoch", "loss", listing.metric.value_or("metric"), "", "complete", "size", "age"});
  for (const auto& r : listing.rows) {
    std::string marks;
    if (r.is_best) marks += "best";
    if (r.is_latest) marks += marks.empty() ? "newest" : ",newest";
    std::string complete = r.kind == EntryKind::checkpoint ? (r.complete ? "yes" : "NO")
                           : r.kind == EntryKind::archive  ? (r.complete ? "archived" : "BAD ARCHIVE")
                                                           : checkpoint::to_string(r.kind);
    std::string size = human_bytes(r.size_bytes);
    if (r.kind == EntryKind::archive && r.complete && r.size_bytes) {
      size += fmt::format(" ({:.2f}x)", static_cast<double>(r.original_bytes) / static_cast<double>(r.size_bytes));
    }
    table.add({r.name, r.step ? std::to_string(*r.step) : "-", number_text(r.epoch), number_text(r.loss),
               number_text(r.metric), marks, complete, size, human_age(now - r.mtime)});
  }
  return table.render();
}

Action attach_list(CLI::App& sub) {
  auto o = std::make_shared<ListOptions>();
  sub.add_option("RUN_DIR", o->run_dir, "The run directory (holding checkpoint-N directories)")->required();
  sub.add_flag("--json", o->json, "Print a JSON array of objects on stdout");
  sub.add_option("--metric", o->metric, "Recompute the best from this metric (eval_ prefixed if missing)");
  sub.add_option("--mode", o->mode, "min or max (default: min for names containing 'loss', else max)")
      ->check(CLI::IsMember({"min", "max"}));
  sub.add_option("--sort", o->sort, "Order checkpoints by step or by mtime (Hugging Face's use_mtime rule)")
      ->check(CLI::IsMember({"step", "mtime"}));
  sub.add_flag_callback("--use-mtime", [o] { o->sort = "mtime"; }, "Same as --sort mtime (Hugging Face's use_mtime)");
  return [o] {
    checkpoint::ListOptions options;
    if (!o->metric.empty()) options.best.metric = o->metric;
    if (!o->mode.empty()) options.best.greater_is_better = o->mode == "max";
    options.by_mtime = o->sort == "mtime";
    const auto listing = checkpoint::list_run(o->run_dir, options);
    if (o->json) std::cout << json::dump(listing_json(listing), 2) << "\n";
    else print_text(listing_text(listing));
    return exit_ok;
  };
}

}  // namespace ckpt::cli
