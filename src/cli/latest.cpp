// `ckpt latest RUN_DIR [--verify] [--archives [--restore-to DIR]] [--json]`: the checkpoint a job script resumes from.
#include <fmt/format.h>

#include <filesystem>
#include <iostream>

#include "checkpoint/archive.hpp"
#include "checkpoint/inspect.hpp"
#include "checkpoint/run_dir.hpp"
#include "cli/cli.hpp"
#include "cli/text.hpp"
#include "util/error.hpp"

namespace ckpt::cli {
namespace {

using checkpoint::EntryKind;
using checkpoint::RunEntry;

struct LatestOptions {
  std::string run_dir;
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

json::Json entry_json(const RunEntry& entry) {
  return {{"name", entry.name},
          {"path", entry.path},
          {"step", entry.step ? json::Json(*entry.step) : json::Json(nullptr)},
          {"kind", checkpoint::to_string(entry.kind)}};
}

int run_latest(const LatestOptions& o) {
  require_run_directory(o.run_dir);
  const auto scan = checkpoint::scan_run(o.run_dir);
  // Newest first, as resume picks: the highest step among complete checkpoints (scan_run's paths join RUN_DIR as
  // given with the name, so the path printed is the one the user would type).
  const auto by_step = checkpoint::complete_by_step(scan, o.archives);
  const RunEntry* chosen = nullptr;
  std::vector<Skipped> skipped;
  for (auto it = by_step.rbegin(); it != by_step.rend(); ++it) {
    const RunEntry& entry = scan.entries[*it];
    auto errors = o.verify ? verification_errors(entry) : std::vector<std::string>{};
    if (errors.empty()) {
      chosen = &entry;
      break;
    }
    if (!o.json) {
      std::cerr << "ckpt: latest: skipped " << printable(entry.name) << ": verification failed: " << printable(errors.front())
                << (errors.size() > 1 ? fmt::format(" (and {} more)", errors.size() - 1) : "") << "\n";
    }
    skipped.push_back({&entry, std::move(errors)});
  }
  if (!chosen) {
    if (!skipped.empty()) {
      throw Error(ErrorKind::corrupt, o.run_dir, "", fmt::format("no complete checkpoint verifies ({} failed --verify)", skipped.size()));
    }
    const std::size_t archived = o.archives ? 0 : checkpoint::complete_by_step(scan, true).size();
    throw Error(ErrorKind::not_found, o.run_dir, "",
                archived ? fmt::format("no complete checkpoint ({} archived: --archives considers them)", archived) : "no complete checkpoint");
  }

  std::optional<std::string> restored_to;
  if (!o.restore_to.empty() && chosen->kind == EntryKind::archive) {
    // Only ever a new directory: a job script's scratch path holding anything must not be replaced by a guess.
    std::error_code ec;
    if (std::filesystem::exists(std::filesystem::symlink_status(o.restore_to, ec))) {
      throw Error(ErrorKind::invalid_argument, o.restore_to, "--restore-to", "already exists; restore into a new directory");
    }
    with_progress(!o.json, "restoring", [&](ProgressLine& progress) {
      checkpoint::ArchiveOptions options;
      options.progress = [&progress](std::uint64_t done, std::uint64_t total) { progress.update(done, total); };
      return checkpoint::restore_archive(chosen->path, o.restore_to, options);
    });
    restored_to = o.restore_to;
  }

  if (o.json) {
    json::Json out = entry_json(*chosen);
    if (restored_to) out["restored_to"] = *restored_to;
    json::Json skipped_json = json::Json::array();
    for (const auto& s : skipped) {
      json::Json item = entry_json(*s.entry);
      item["errors"] = s.errors;
      skipped_json.push_back(std::move(item));
    }
    out["skipped"] = std::move(skipped_json);
    std::cout << json::dump(out, 2) << "\n";
    return exit_ok;
  }
  // The path alone on stdout, for $(...); what happened on the way on stderr, for the job's log.
  print_text(printable(restored_to.value_or(chosen->path)) + "\n");
  std::cout.flush();
  if (!skipped.empty()) std::cerr << "ckpt: latest: " << printable(chosen->name) << " is the newest that verifies\n";
  if (restored_to) std::cerr << "ckpt: latest: restored " << printable(chosen->name) << " into " << printable(*restored_to) << "\n";
  return exit_ok;
}

}  // namespace

Action attach_latest(CLI::App& sub) {
  auto o = std::make_shared<LatestOptions>();
  sub.add_option("RUN_DIR", o->run_dir, "The run directory")->required();
  sub.add_flag("--verify", o->verify,
               "Check the checkpoint fully first (as inspect --verify does); fall back to the next newest that verifies, saying so on stderr");
  CLI::Option* archives = sub.add_flag("--archives", o->archives,
                                       "Consider archived checkpoints too (RUN_DIR/*.ckpt, RUN_DIR/archive/*.ckpt), for steps no complete checkpoint has");
  sub.add_option("--restore-to", o->restore_to, "When the newest is an archive, restore it into DIR (a new directory) and print DIR")
      ->needs(archives);
  sub.add_flag("--json", o->json, "Print details as JSON instead of the path alone");
  return [o] { return run_latest(*o); };
}

}  // namespace ckpt::cli
