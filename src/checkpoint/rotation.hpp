// Rotation: which entries of a run directory to delete, and deleting them so that a crash at any moment
// leaves nothing that looks like a complete checkpoint. Shared by `ckpt rotate` and the trainer's
// save_total_limit.
//
// The policy keeps Hugging Face's save_total_limit semantics (order by step, or by mtime; the best checkpoint
// moved to second-to-last before the oldest are cut; with a limit of 1 and the best not the newest, two stay)
// and closes its holes: only complete checkpoints count, the best is found by name wherever the run was moved,
// the newest complete checkpoint is never deleted, custom directories and young incomplete or staging
// directories are never touched.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "checkpoint/best.hpp"
#include "checkpoint/run_dir.hpp"

namespace ckpt::checkpoint {

struct RotateOptions {
  std::int64_t keep = 0;                   // save_total_limit: at least 1
  std::optional<std::int64_t> keep_every;  // steps divisible by this are kept and not counted
  double stale_after_seconds = 3600;       // older incomplete/staging directories are removed
  bool by_mtime = false;
  BestOptions best;
  // Archive each complete checkpoint into this directory (checkpoint/archive.hpp; relative to the run
  // directory) before deleting it; a checkpoint whose archive cannot be written and read back stays. Inside the
  // run it must be a real directory, no symlink on the way; elsewhere no symlink of another user on the way
  // (rotate throws invalid_argument before doing anything).
  std::optional<std::string> archive_dir;
  // Then keep at most this many archives there (the newest by step, and the best's besides).
  std::optional<std::int64_t> keep_archives;
  int archive_level = 3;
  unsigned archive_threads = 0;
  // Called while a checkpoint is archived: its name, bytes done, bytes in all.
  std::function<void(const std::string&, std::uint64_t, std::uint64_t)> archive_progress;
};

struct Decision {
  std::string name;
  std::string path;
  EntryKind kind = EntryKind::custom;
  std::optional<std::int64_t> step;
  bool remove = false;
  std::string reason;
  std::string archived_to;       // the archive written (or planned) before removing it
  std::uint64_t size_bytes = 0;  // what deleting it frees
};

struct RotationPlan {
  std::vector<Decision> decisions;  // every entry of the run directory, in scan order
  std::optional<std::string> best;
  std::optional<std::string> newest;
};

// Decides, without touching anything. `now` is seconds since the epoch (for staleness).
RotationPlan plan_rotation(const RunScan& scan, const RotateOptions& options, double now);

struct RotationResult {
  RotationPlan plan;
  std::size_t removed = 0;
  std::size_t trash_cleared = 0;  // leftovers of an interrupted earlier deletion
  std::size_t archived = 0;       // archives written by this rotation
  std::size_t archives_removed = 0;
  std::size_t temporaries_cleared = 0;  // archives a killed process left half-written in the archive directory
  std::uint64_t freed_bytes = 0;        // by what was deleted (a dry run: what would be)
  std::uint64_t archived_bytes = 0;     // the archives this rotation wrote
};

// Under the run lock (a dry run takes none and writes nothing): clears leftover trash, scans, plans and
// deletes each chosen entry by renaming it to a hidden trash name first and then removing the tree. Throws Error of
// kind locked when `wait_for_lock` is false and the lock is held. With archive_dir, the checkpoints to delete are first
// archived without holding the lock (a trainer's commit is not held up by compression; an archive already there counts
// when it holds every file's sha256), then the plan is made again under the lock and a checkpoint is deleted only if
// its files are the very ones archived (same inodes, sizes and times): at every moment a checkpoint exists live, or
// archived, or both, until keep_archives removes old archives. A checkpoint that cannot be archived stays; the rest of
// the rotation goes on, then its error is thrown.
RotationResult rotate(const std::string& run_dir, const RotateOptions& options, bool dry_run, bool wait_for_lock);

// Carries out decisions (the caller holds the run lock): the entries marked remove are renamed to hidden trash
// names in the run directory, the run directory fsynced once, then the trees removed (what a kill leaves is trash,
// never a partial checkpoint, cleared by the next rotate); archives are unlinked, and with options.archive_dir the
// abandoned temporaries there cleared. Never through a symlink: a rename moves the entry itself. One entry that
// cannot be deleted (immutable, EACCES) is kept, its decision says why, and the others still go; the first such
// failure is returned for the caller to report. The one way ckpt deletes: rotate, --overwrite-output-dir and tag
// --delete.
std::optional<Error> delete_planned(const std::string& run_dir, const RotateOptions& options, RotationResult& result);

// `ckpt save --overwrite-output-dir`: deletes what an earlier run left (earlier_checkpoints: checkpoint
// directories and archives, in the run directory and its archive/), and leftover trash, as rotate deletes: under
// the run lock, directories renamed to trash, one fsync, then removed; archives unlinked; never through a symlink.
// Before deleting anything, throws unsupported naming the first of them ckpt cannot assess (a layout or format it
// cannot read, a *.ckpt file that is no ckpt archive): someone's data, as rotate never deletes it. Nothing else in
// the run directory is touched. The decisions marked remove are what was deleted.
RotationResult clear_earlier_run(const std::string& run_dir);

}  // namespace ckpt::checkpoint
