#include "checkpoint/rotation.hpp"

#include <cstdio>
#include <cerrno>
#include <algorithm>
#include <chrono>
#include <filesystem>

#include "checkpoint/lock.hpp"
#include "util/error.hpp"
#include "util/fs.hpp"

namespace ckpt::checkpoint {
namespace fs = std::filesystem;

RotationPlan plan_rotation(const RunScan& scan, const RotateOptions& options, double now) {
  if (options.keep < 1) throw Error(ErrorKind::invalid_argument, "", "--keep", "must be at least 1");
  if (options.keep_every && *options.keep_every < 1) throw Error(ErrorKind::invalid_argument, "", "--keep-every", "must be at least 1");

  RotationPlan plan;
  for (const auto& e : scan.entries) plan.decisions.push_back({e.name, e.path, e.kind, e.step, false, ""});

  const auto best = find_best(scan, options.best);
  const auto newest = newest_complete(scan);
  if (best) plan.best = scan.entries[best->entry].name;
  if (newest) plan.newest = scan.entries[*newest].name;

  // Entries outside the save_total_limit set first.
  for (std::size_t i = 0; i < scan.entries.size(); ++i) {
    const RunEntry& e = scan.entries[i];
    Decision& d = plan.decisions[i];
    const bool stale = now - e.mtime > options.stale_after_seconds;
    switch (e.kind) {
      case EntryKind::custom: d.reason = "custom directory, never rotated"; break;
      case EntryKind::trash: d.remove = true; d.reason = "leftover of an interrupted deletion"; break;
      case EntryKind::staging:
        d.remove = stale;
        d.reason = stale ? "staging directory, stale" : "staging directory, may be in progress";
        break;
      case EntryKind::checkpoint:
        if (!e.complete && e.unreadable) {
          d.reason = "holds a format ckpt cannot read, never deleted";
        } else if (!e.complete) {
          d.remove = stale;
          d.reason = stale ? "incomplete, stale" : "incomplete, may be in progress";
        } else if (options.keep_every && *e.step % *options.keep_every == 0) {
          d.reason = "step divisible by --keep-every";
        }
        break;
    }
  }

  // Hugging Face's _sorted_checkpoints and _rotate_checkpoints over the complete checkpoints that count.
  std::vector<std::size_t> sorted;
  for (std::size_t i : ordered_checkpoints(scan, true, options.by_mtime)) {
    if (plan.decisions[i].reason.empty()) sorted.push_back(i);
  }
  if (best) {
    auto it = std::find(sorted.begin(), sorted.end(), best->entry);
    if (it != sorted.end()) {
      for (auto i = static_cast<std::size_t>(it - sorted.begin()); i + 2 < sorted.size(); ++i) std::swap(sorted[i], sorted[i + 1]);
    }
  }
  std::int64_t limit = options.keep;
  if (best && limit == 1 && !sorted.empty() && sorted.back() != best->entry) limit = 2;
  const std::size_t cut = sorted.size() > static_cast<std::size_t>(limit) ? sorted.size() - static_cast<std::size_t>(limit) : 0;
  for (std::size_t k = 0; k < sorted.size(); ++k) {
    Decision& d = plan.decisions[sorted[k]];
    if (k >= cut) {
      d.reason = best && sorted[k] == best->entry ? "best checkpoint" : "within --keep " + std::to_string(options.keep);
    } else if (newest && sorted[k] == *newest) {
      d.reason = "newest complete checkpoint";
    } else if (best && sorted[k] == best->entry) {
      d.reason = "best checkpoint";
    } else {
      d.remove = true;
      d.reason = "beyond --keep " + std::to_string(options.keep);
    }
  }
  return plan;
}

RotationResult rotate(const std::string& run_dir, const RotateOptions& options, bool dry_run, bool wait_for_lock) {
  // A dry run only reads, so it neither takes the lock nor creates the lock file.
  std::optional<RunLock> lock;
  if (!dry_run) lock.emplace(run_dir, wait_for_lock);
  const double now = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  RotationResult result;
  result.plan = plan_rotation(scan_run(run_dir), options, now);
  if (dry_run) return result;
  // First every victim is renamed to a hidden trash name, so a crash from here on leaves trash, never a
  // partial checkpoint-N; one fsync makes all the renames durable before any byte is removed.
  std::vector<std::string> trash;
  for (const Decision& d : result.plan.decisions) {
    if (!d.remove) continue;
    if (d.kind == EntryKind::trash) {
      trash.push_back(d.path);
      ++result.trash_cleared;
      continue;
    }
    const std::string to = (fs::path(run_dir) / (std::string(kTrashPrefix) + d.name + "-" + fs_util::unique_suffix())).string();
    if (::rename(d.path.c_str(), to.c_str()) != 0) {
      if (errno == ENOENT) continue;  // already gone
      fail_io(d.path, "rename to " + to, errno);
    }
    trash.push_back(to);
    ++result.removed;
  }
  if (trash.empty()) return result;
  fs_util::fsync_directory(run_dir);
  for (const auto& path : trash) fs_util::remove_tree(path);
  return result;
}

}  // namespace ckpt::checkpoint
