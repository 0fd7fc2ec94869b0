// `ckpt rotate RUN_DIR... [--recursive ROOT] --keep N [--keep-every K] [--stale-after DURATION] [--sort step|mtime]
// [--dry-run]
//  [--no-wait] [--json] [--metric NAME --mode min|max] [--archive] [--archive-dir DIR] [--keep-archives M] [--level N]
//  [--threads N]`
#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <iostream>

#include "checkpoint/archive.hpp"
#include "checkpoint/rotation.hpp"
#include "cli/cli.hpp"
#include "cli/several_runs.hpp"
#include "cli/text.hpp"

namespace ckpt::cli {
namespace {

struct RotateOptions {
  RunSelection runs;
  std::int64_t keep = 0;
  std::int64_t keep_every = 0;
  std::string stale_after = "1h";
  std::string sort = "step";
  std::string metric;
  std::string mode;
  bool dry_run = false;
  bool no_wait = false;
  bool json = false;
  bool quiet = false;
  bool archive = false;
  std::string archive_dir;
  std::string legacy_archive_dir;  // --archive=DIR
  std::int64_t keep_archives = 0;
  int level = checkpoint::kDefaultArchiveLevel;
  unsigned threads = 0;
};

checkpoint::RotateOptions rotate_options(const RotateOptions& o) {
  checkpoint::RotateOptions options;
  options.keep = o.keep;
  if (o.keep_every > 0) options.keep_every = o.keep_every;
  options.stale_after_seconds = parse_duration(o.stale_after).value();  // checked when parsed
  options.by_mtime = o.sort == "mtime";
  if (!o.metric.empty()) options.best.metric = o.metric;
  if (!o.mode.empty()) options.best.greater_is_better = o.mode == "max";
  if (o.archive) options.archive_dir = o.archive_dir.empty() ? std::string(checkpoint::kArchiveDirName) : o.archive_dir;
  if (o.keep_archives > 0) options.keep_archives = o.keep_archives;
  options.archive_level = o.level;
  options.archive_threads = o.threads;
  return options;
}

checkpoint::RotationResult rotate_run(const RotateOptions& o, checkpoint::RotateOptions options,
                                      const std::string& run_dir) {
  require_run_directory(run_dir);
  return with_progress(!o.quiet && !o.json, "archiving", [&](ProgressLine& progress) {
    options.archive_progress = [&progress](const std::string& name, std::uint64_t done, std::uint64_t total) {
      progress.set_label("archiving " + printable(name));
      progress.update(done, total);
    };
    return checkpoint::rotate(run_dir, options, o.dry_run, !o.no_wait);
  });
}

json::Json rotation_json(const RotateOptions& o, const std::string& run_dir, const checkpoint::RotationResult& result) {
  json::Json decisions = json::Json::array();
  for (const auto& d : result.plan.decisions) {
    decisions.push_back({{"name", d.name},
                         {"path", d.path},
                         {"kind", checkpoint::to_string(d.kind)},
                         {"step", d.step ? json::Json(*d.step) : json::Json(nullptr)},
                         {"action", d.remove ? "delete" : "keep"},
                         {"archived_to", d.archived_to.empty() ? json::Json(nullptr) : json::Json(d.archived_to)},
                         {"reason", d.reason}});
  }
  return {{"run_dir", run_dir},
          {"dry_run", o.dry_run},
          {"best", result.plan.best ? json::Json(*result.plan.best) : json::Json(nullptr)},
          {"newest", result.plan.newest ? json::Json(*result.plan.newest) : json::Json(nullptr)},
          {"removed", result.removed},
          {"archived", result.archived},
          {"archives_removed", result.archives_removed},
          {"temporaries_cleared", result.temporaries_cleared},
          {"freed_bytes", result.freed_bytes},
          {"archived_bytes", result.archived_bytes},
          {"decisions", std::move(decisions)}};
}

// What it freed (would free) and archived: "freed 1.2 MiB, archived 800.0 KiB into 2 archives".
std::string freed_text(const RotateOptions& o, std::uint64_t freed_bytes, std::size_t archived,
                       std::uint64_t archived_bytes) {
  std::string text = fmt::format("{} {}", o.dry_run ? "would free" : "freed", human_bytes(freed_bytes));
  if (archived > 0)
    text +=
        fmt::format(", archived {} into {} archive{}", human_bytes(archived_bytes), archived, archived == 1 ? "" : "s");
  return text;
}

// Printed at all: with --dry-run, or without --quiet.
bool prints_text(const RotateOptions& o) { return !o.json && (o.dry_run || !o.quiet); }

std::string rotation_text(const RotateOptions& o, const checkpoint::RotationResult& result) {
  Table table({"name", "action", "reason"});
  for (const auto& d : result.plan.decisions) {
    if (!o.dry_run && !d.remove) continue;
    std::string action = d.remove ? (o.dry_run ? "would delete" : "deleted") : "keep";
    if (d.remove && !d.archived_to.empty())
      action = (o.dry_run ? "would archive to " : "archived to ") + d.archived_to + ", " + action;
    table.add({d.name, action, d.reason});
  }
  return table.render() + freed_text(o, result.freed_bytes, result.archived, result.archived_bytes) + "\n";
}

int run_rotate(const RotateOptions& o) {
  const std::string& run_dir = o.runs.run_dirs.front();
  const auto result = rotate_run(o, rotate_options(o), run_dir);
  if (o.json)
    std::cout << json::dump(rotation_json(o, run_dir, result), 2) << "\n";
  else if (prints_text(o))
    print_text(rotation_text(o, result));
  return exit_ok;
}

// Each run's report under a line naming it, a blank line between runs, then the totals over them; --json: {"runs":
// [each run's single-run document, or {"run_dir", "error"}], "totals"}.
int rotate_several(const RotateOptions& o) {
  const checkpoint::RotateOptions options = rotate_options(o);
  checkpoint::RotationResult overall;
  bool printed = false;
  const SeveralRuns done = for_each_run(o.runs, [&](const std::string& run_dir) -> json::Json {
    const auto result = rotate_run(o, options, run_dir);
    overall.removed += result.removed;
    overall.archived += result.archived;
    overall.archives_removed += result.archives_removed;
    overall.freed_bytes += result.freed_bytes;
    overall.archived_bytes += result.archived_bytes;
    if (o.json) return rotation_json(o, run_dir, result);
    if (prints_text(o)) print_text((printed ? "\n" : "") + printable(run_dir) + ":\n" + rotation_text(o, result));
    printed = true;
    return nullptr;
  });
  if (o.json) {
    const json::Json totals{{"runs", done.handled},
                            {"failed", done.failed},
                            {"removed", overall.removed},
                            {"archived", overall.archived},
                            {"archives_removed", overall.archives_removed},
                            {"freed_bytes", overall.freed_bytes},
                            {"archived_bytes", overall.archived_bytes}};
    std::cout << json::dump({{"runs", done.runs}, {"totals", totals}}, 2) << "\n";
  } else if (prints_text(o)) {
    print_text((printed ? "\n" : "") +
               overall_text(done, freed_text(o, overall.freed_bytes, overall.archived, overall.archived_bytes)));
  }
  return done.exit_code;
}

// Whether an archive directory would be one for several runs: elsewhere than inside each of them.
bool shared_by_runs(const std::string& archive_dir) {
  const std::filesystem::path dir(archive_dir);
  return dir.is_absolute() ||
         std::any_of(dir.begin(), dir.end(), [](const std::filesystem::path& part) { return part == ".."; });
}

}  // namespace

Action attach_rotate(CLI::App& sub) {
  auto o = std::make_shared<RotateOptions>();
  add_run_selection(sub, o->runs);
  sub.add_option("--keep", o->keep,
                 "Keep N complete checkpoints, the best counting toward N as in Hugging Face's save_total_limit (with "
                 "N=1 and an older best, two stay); the newest complete always stays")
      ->required()
      ->transform(positive_integer());
  sub.add_option("--keep-every", o->keep_every,
                 "Also keep every checkpoint whose step is divisible by K (not counted in N)")
      ->transform(positive_integer());
  sub.add_option("--stale-after", o->stale_after,
                 "Remove staging directories and abandoned checkpoints (incomplete, no trainer_state.json) older than "
                 "this (e.g. 30m, 2h, 1d) [default: 1h]")
      ->check(CLI::Validator(
          [](std::string& text) {
            return parse_duration(text) ? std::string() : "'" + text + "' is not a duration (e.g. 90s, 30m, 1h, 2d)";
          },
          "DURATION"));
  sub.add_option("--sort", o->sort,
                 "Order checkpoints by step or by mtime (falls back to step when mtimes lie within 1 s)")
      ->check(one_of({"step", "mtime"}));
  sub.add_flag_callback(
      "--use-mtime", [o] { o->sort = "mtime"; }, "Same as --sort mtime (Hugging Face's use_mtime)");
  sub.add_option("--metric", o->metric,
                 "Find the best by this metric instead of trainer_state.json's best_model_checkpoint");
  sub.add_option("--mode", o->mode, "min or max for --metric")->check(one_of({"min", "max"}));
  // A flag, never taking the next word (`rotate --keep 3 --archive RUN` once archived into RUN); the old spelling
  // --archive=DIR still works, with a note. CLI11 stores "true" for the flag given alone.
  CLI::Option* archive = sub.add_flag(
      "--archive", o->legacy_archive_dir,
      "Archive each checkpoint as a compressed .ckpt file into RUN_DIR/archive (or --archive-dir) before deleting it");
  CLI::Option* archive_dir = sub.add_option(
      "--archive-dir", o->archive_dir,
      "Archive into DIR instead (implies --archive; relative to RUN_DIR; no symlink on the way inside the run)");
  sub.add_option("--keep-archives", o->keep_archives,
                 "With --archive: keep at most M archives there (the newest, and the best's)")
      ->transform(positive_integer());
  sub.add_option("--level", o->level, "zstd level for --archive [default: 3]")->transform(integer_between(1, 19));
  sub.add_option("--threads", o->threads, "Threads for --archive [default: every core]")
      ->transform(integer_between(1, 256));
  sub.add_flag("--dry-run", o->dry_run, "Show each directory with keep or delete and the reason; change nothing");
  sub.add_flag("--no-wait", o->no_wait,
               "Fail with exit status 75 instead of waiting when another ckpt holds the run's lock");
  sub.add_flag("--json", o->json, "Print the decisions as JSON");
  sub.add_flag("-q,--quiet", o->quiet, "Print nothing unless there is an error");
  return [o, archive, archive_dir] {
    require_runs(o->runs, "rotate");
    o->archive = archive->count() > 0 || archive_dir->count() > 0;
    if (o->keep_archives > 0 && !o->archive) throw UsageError("--keep-archives needs --archive (or --archive-dir)");
    const bool legacy = !o->legacy_archive_dir.empty() && o->legacy_archive_dir != "true";
    if (legacy) {
      if (archive_dir->count() > 0) throw UsageError("--archive: give the directory once, as --archive-dir DIR");
      o->archive_dir = o->legacy_archive_dir;
    }
    if (o->runs.several() && o->archive && shared_by_runs(o->archive_dir)) {
      throw UsageError(
          "--archive-dir: with several runs, a directory inside each run (relative, no ..): all runs' archives in one "
          "would collide");
    }
    if (legacy) std::cerr << "ckpt: note: --archive=DIR is deprecated; use --archive-dir DIR\n";
    return o->runs.several() ? rotate_several(*o) : run_rotate(*o);
  };
}

}  // namespace ckpt::cli
