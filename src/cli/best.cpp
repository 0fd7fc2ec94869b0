// `ckpt best RUN_DIR [--metric NAME --mode min|max] [--json] [--link NAME] [--export DIR]`
#include <fmt/format.h>

#include <filesystem>
#include <iostream>

#include "checkpoint/best.hpp"
#include "checkpoint/export.hpp"
#include "cli/cli.hpp"
#include "cli/text.hpp"
#include "util/error.hpp"
#include "util/fs.hpp"

namespace ckpt::cli {
namespace {

struct BestOptions {
  std::string run_dir;
  std::string metric;
  std::string mode;
  bool json = false;
  std::string link;
  std::string export_dir;
};

int run_best(const BestOptions& o) {
  checkpoint::BestOptions options;
  if (!o.metric.empty()) options.metric = o.metric;
  if (!o.mode.empty()) options.greater_is_better = o.mode == "max";
  require_run_directory(o.run_dir);
  const auto scan = checkpoint::scan_run(o.run_dir);
  const auto best = checkpoint::find_best(scan, options);
  if (!best) {
    throw Error(ErrorKind::not_found, o.run_dir, "",
                options.metric
                    ? "no complete checkpoint has the metric " + checkpoint::normalize_metric(*options.metric)
                    : "no best checkpoint: trainer_state.json names none and no checkpoint logged eval_loss");
  }
  const auto& entry = scan.entries[best->entry];
  const bool archived = entry.kind == checkpoint::EntryKind::archive;
  if (archived && !o.export_dir.empty()) {
    throw Error(ErrorKind::invalid_argument, entry.path, "--export",
                "the best checkpoint is archived; restore it first (ckpt convert " + entry.path + " --to dir -o DIR)");
  }
  std::optional<checkpoint::ExportResult> exported;
  if (!o.link.empty()) fs_util::replace_symlink(entry.name, (std::filesystem::path(o.run_dir) / o.link).string());
  if (!o.export_dir.empty()) exported = checkpoint::export_model(entry.path, o.export_dir);

  if (o.json) {
    json::Json out{{"name", entry.name},
                   {"path", entry.path},
                   {"step", entry.step ? json::Json(*entry.step) : json::Json(nullptr)},
                   {"archived", archived},
                   {"metric", best->metric.empty() ? json::Json(nullptr) : json::Json(best->metric)},
                   {"value", best->value ? json::Json(*best->value) : json::Json(nullptr)},
                   {"source", best->source}};
    if (!o.link.empty()) out["link"] = (std::filesystem::path(o.run_dir) / o.link).string();
    if (exported)
      out["exported"] = {{"dir", o.export_dir}, {"files", exported->files}, {"hardlinked", exported->hardlinked}};
    std::cout << json::dump(out, 2) << "\n";
  } else {
    // The path alone on stdout, for scripts; which checkpoint and by what on stderr, for the person.
    print_text(printable(entry.path) + "\n");
    std::cout.flush();
    std::string why;
    if (best->value)
      why = fmt::format(" ({} {})", best->metric.empty() ? "best_metric" : printable(best->metric),
                        number_text(best->value));
    std::cerr << "ckpt: best: " << printable(entry.name) << why << "\n";
  }
  return exit_ok;
}

}  // namespace

Action attach_best(CLI::App& sub) {
  auto o = std::make_shared<BestOptions>();
  sub.add_option("RUN_DIR", o->run_dir, "The run directory")->required();
  sub.add_option("--metric", o->metric, "Recompute the best from this metric (eval_ prefixed if missing)");
  sub.add_option("--mode", o->mode, "min or max [default: min for names containing 'loss', else max]")
      ->check(one_of({"min", "max"}));
  sub.add_flag("--json", o->json, "Print details as JSON instead of the path alone");
  sub.add_option("--link", o->link,
                 "Create or atomically replace the relative symlink RUN_DIR/NAME -> checkpoint-N (or its archive); "
                 "only a symlink is replaced")
      ->check(CLI::Validator(
          [](std::string& name) -> std::string {
            if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..") {
              return "'" + name + "' is not a plain name (the link is RUN_DIR/NAME)";
            }
            // A link named like a checkpoint would be listed, rotated and resumed from as one.
            if (checkpoint::checkpoint_step(name))
              return "'" + name + "' would be taken for a checkpoint; choose another name";
            return "";
          },
          "NAME"));
  sub.add_option("--export", o->export_dir,
                 "Write the best model's weights and config.json into DIR (hard links where possible; a new DIR or an "
                 "earlier export is replaced in one step; never inside a checkpoint)");
  return [o] { return run_best(*o); };
}

}  // namespace ckpt::cli
