// `ckpt latest RUN_DIR... [--recursive ROOT] [--verify] [--archives [--restore-to DIR]] [--json]`: the checkpoint a job
// script resumes from.
#include <fmt/format.h>

#include <filesystem>
#include <iostream>

#include "checkpoint/archive.hpp"
#include "checkpoint/inspect.hpp"
#include "checkpoint/run_dir.hpp"
#include "cli/cli.hpp"
#include "cli/several_runs.hpp"
#include "cli/text.hpp"
#include "util/error.hpp"

namespace ckpt::cli {
namespace {

using checkpoint::EntryKind;
using checkpoint::RunEntry;

struct LatestOptions {
  RunSelection runs;
  bool verify = false;
  bool archives = false;
  std::string restore_to;
  bool json = false;
};

struct Skipped {
  const RunEntry* entry;
  std::vector<std::string> errors;
};

// inspect --verify's verdict on a checkpoint or an archive of the run: what failed; nothing when it passed.
std::vector<std::string> verification_errors(const RunEntry& entry) {
  checkpoint::InspectOptions verify;
  verify.verify = true;
  if (entry.kind == EntryKind::archive) {
    const auto report = checkpoint::inspect_file(entry.path, verify);
    return report.verify ? report.verify->errors : std::vector<std::string>{};
  }
  const auto report = checkpoint::inspect_run_checkpoint(entry.path, verify);
  if (!report) return {"deleted or replaced while it was verified"};
  return checkpoint::verification_errors(*report);
}

// `out` with {name, path, step, kind} of `entry`.
json::Json entry_json(const RunEntry& entry, json::Json out = json::Json::object()) {
  out["name"] = entry.name;
  out["path"] = entry.path;
  out["step"] = entry.step ? json::Json(*entry.step) : json::Json(nullptr);
  out["kind"] = checkpoint::to_string(entry.kind);
  return out;
}

// What latest found in a run. `chosen` and `skipped` point into `scan`'s entries, which moving it keeps in place.
struct Latest {
  checkpoint::RunScan scan;
  const RunEntry* chosen = nullptr;
  std::vector<Skipped> skipped;
  std::optional<std::string> restored_to;
};

// The newest complete checkpoint of `run_dir` (that verifies, with --verify), and what was skipped on the way, said on
// stderr as it happens (without --json), naming a checkpoint by `label` (its name, or with several runs its path).
Latest latest_of(const LatestOptions& o, const std::string& run_dir, std::string (*label)(const RunEntry&)) {
  require_run_directory(run_dir);
  Latest latest;
  latest.scan = checkpoint::scan_run(run_dir);
  const auto& scan = latest.scan;
  // Newest first, as resume picks: the highest step among complete checkpoints (scan_run's paths join RUN_DIR as
  // given with the name, so the path printed is the one the user would type).
  const auto by_step = checkpoint::complete_by_step(scan, o.archives);
  for (auto it = by_step.rbegin(); it != by_step.rend(); ++it) {
    const RunEntry& entry = scan.entries[*it];
    auto errors = o.verify ? verification_errors(entry) : std::vector<std::string>{};
    if (errors.empty()) {
      latest.chosen = &entry;
      break;
    }
    if (!o.json) {
      std::cerr << "ckpt: latest: skipped " << printable(label(entry))
                << ": verification failed: " << printable(errors.front())
                << (errors.size() > 1 ? fmt::format(" (and {} more)", errors.size() - 1) : "") << "\n";
    }
    latest.skipped.push_back({&entry, std::move(errors)});
  }
  const RunEntry* chosen = latest.chosen;
  if (!chosen) {
    if (!latest.skipped.empty()) {
      throw Error(ErrorKind::corrupt, run_dir, "",
                  fmt::format("no complete checkpoint verifies ({} failed --verify)", latest.skipped.size()));
    }
    const std::size_t archived = o.archives ? 0 : checkpoint::complete_by_step(scan, true).size();
    throw Error(ErrorKind::not_found, run_dir, "",
                archived ? fmt::format("no complete checkpoint ({} archived: --archives considers them)", archived)
                         : "no complete checkpoint");
  }
  if (!o.json && !latest.skipped.empty())
    std::cerr << "ckpt: latest: " << printable(label(*chosen)) << " is the newest that verifies\n";

  if (!o.restore_to.empty() && chosen->kind == EntryKind::archive) {
    // Only ever a new directory: a job script's scratch path holding anything must not be replaced by a guess.
    std::error_code ec;
    if (std::filesystem::exists(std::filesystem::symlink_status(o.restore_to, ec))) {
      throw Error(ErrorKind::invalid_argument, o.restore_to, "--restore-to",
                  "already exists; restore into a new directory");
    }
    with_progress(!o.json, "restoring", [&](ProgressLine& progress) {
      checkpoint::ArchiveOptions options;
      options.progress = [&progress](std::uint64_t done, std::uint64_t total) { progress.update(done, total); };
      return checkpoint::restore_archive(chosen->path, o.restore_to, options);
    });
    latest.restored_to = o.restore_to;
  }
  return latest;
}

// `out` (empty, or a run's {"run_dir"}) with {name, path, step, kind, restored_to when restored, skipped}.
json::Json latest_json(const Latest& latest, json::Json out) {
  out = entry_json(*latest.chosen, std::move(out));
  if (latest.restored_to) out["restored_to"] = *latest.restored_to;
  json::Json skipped_json = json::Json::array();
  for (const auto& s : latest.skipped) {
    json::Json item = entry_json(*s.entry);
    item["errors"] = s.errors;
    skipped_json.push_back(std::move(item));
  }
  out["skipped"] = std::move(skipped_json);
  return out;
}

std::string name_of(const RunEntry& entry) { return entry.name; }
std::string path_of(const RunEntry& entry) { return entry.path; }

int run_latest(const LatestOptions& o) {
  const Latest latest = latest_of(o, o.runs.run_dirs.front(), name_of);
  if (o.json) {
    std::cout << json::dump(latest_json(latest, json::Json::object()), 2) << "\n";
    return exit_ok;
  }
  // The path alone on stdout, for $(...); what happened on the way on stderr, for the job's log.
  print_text(printable(latest.restored_to.value_or(latest.chosen->path)) + "\n");
  std::cout.flush();
  if (latest.restored_to) {
    std::cerr << "ckpt: latest: restored " << printable(latest.chosen->name) << " into "
              << printable(*latest.restored_to) << "\n";
  }
  return exit_ok;
}

// A line `RUN_DIR<TAB>PATH` per run (a run without one: its error on stderr, nothing on stdout); --json: {"runs":
// [{"run_dir", name, path, step, kind, skipped} or {"run_dir", "error"}]}.
int latest_several(const LatestOptions& o) {
  const SeveralRuns done = for_each_run(o.runs, [&](const std::string& run_dir) -> json::Json {
    const Latest latest = latest_of(o, run_dir, path_of);
    if (o.json) return latest_json(latest, {{"run_dir", run_dir}});
    std::cout << printable(run_dir) << '\t' << printable(latest.chosen->path) << '\n';
    return nullptr;
  });
  if (o.json) std::cout << json::dump({{"runs", done.runs}}, 2) << "\n";
  return done.exit_code;
}

}  // namespace

Action attach_latest(CLI::App& sub) {
  auto o = std::make_shared<LatestOptions>();
  add_run_selection(sub, o->runs);
  sub.add_flag("--verify", o->verify,
               "Check the checkpoint fully first (as inspect --verify does); fall back to the next newest that "
               "verifies, saying so on stderr");
  CLI::Option* archives = sub.add_flag("--archives", o->archives,
                                       "Consider archived checkpoints too (RUN_DIR/*.ckpt, RUN_DIR/archive/*.ckpt), "
                                       "for steps no complete checkpoint has");
  sub.add_option("--restore-to", o->restore_to,
                 "When the newest is an archive, restore it into DIR (a new directory) and print DIR")
      ->needs(archives);
  sub.add_flag("--json", o->json,
               "Print details as JSON instead of the path alone (several runs: one document of them)");
  return [o] {
    require_runs(o->runs, "latest");
    if (!o->runs.several()) return run_latest(*o);
    if (!o->restore_to.empty())
      throw UsageError("--restore-to restores one run's archive: give one RUN_DIR, not several");
    return latest_several(*o);
  };
}

}  // namespace ckpt::cli
