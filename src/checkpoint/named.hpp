// Named checkpoints: a checkpoint kept under a name of the user's, RUN_DIR/NAME, beside the checkpoint-N directories
// that rotation manages (`ckpt tag`, `save --save-name`). scan_run recognises one as a directory directly in the run
// directory, not checkpoint-N nor hidden nor staging, holding trainer_state.json (RunEntry::named): list shows it,
// resume --from takes it by NAME, and rotate, best and latest never touch or pick it.
//
// A tag of a live checkpoint hard-links its files: they share inodes with the source's. ckpt never rewrites a
// committed checkpoint's files in place (a checkpoint saved again at the same step is a new directory exchanged with
// the old), so deleting or replacing the source leaves the tag as it was.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "checkpoint/run_dir.hpp"

namespace ckpt::checkpoint {

// Throws Error (invalid_argument, one line) unless `name` may become a named checkpoint of `run_dir`: one directory
// entry (not empty, at most 200 bytes, no `/` or NUL), not hidden (a leading `.`: ckpt's staging and trash), not a
// name rotation owns (checkpoint-<digit>..., which Hugging Face's rotation reads a step from; tmp-checkpoint-*),
// not an archive's (*.ckpt) nor the archive directory's, not a file the Trainer writes at the top of a run
// directory, and nothing there yet (a file, a directory, a symlink: the message says which, and for a named
// checkpoint how to delete it). The error's path is RUN_DIR/NAME when something is in the way, else empty.
void check_new_checkpoint_name(const std::string& run_dir, const std::string& name);

struct TagResult {
  std::string name;
  std::string path;    // RUN_DIR/NAME
  std::string source;  // as list names it: checkpoint-N, archive/checkpoint-N.ckpt, checkpoint-N.ckpt
  std::string source_path;
  EntryKind source_kind = EntryKind::checkpoint;
  std::optional<std::int64_t> step;
  std::size_t files = 0;
  std::size_t hard_linked = 0;  // the others copied (no hard link possible) or, from an archive, restored
};

// `ckpt tag RUN_DIR SOURCE NAME`: RUN_DIR/NAME becomes a complete copy of SOURCE, a checkpoint-N directory of the run
// or an archive of one, named as list names them (nothing else: no aliases). Built in a hidden staging directory
// beside it (fs_util::build_directory) and renamed into place, so NAME appears complete or not at all. A checkpoint's
// regular files are hard-linked (copied where they cannot be), under the run lock so that rotate cannot delete it
// meanwhile; an archive is restored (every sha256 checked) without the lock, which is taken only to publish. Throws
// Error: invalid_argument (a NAME refused by check_new_checkpoint_name, also when it appears meanwhile; a SOURCE
// that is no checkpoint or archive), not_found (no such SOURCE), corrupt or unsupported (an incomplete or unreadable
// source, a symlink or special file in it), io.
TagResult tag_checkpoint(const std::string& run_dir, const std::string& source, const std::string& name);

struct UntagResult {
  std::string name;
  std::string path;
  std::optional<std::int64_t> step;
  std::uint64_t size_bytes = 0;  // of its files, most of them shared with their source when they were linked
};

// `ckpt tag --delete RUN_DIR NAME`: deletes the named checkpoint RUN_DIR/NAME under the run lock as rotate deletes
// (delete_planned: renamed to trash, fsynced, removed). Only a named checkpoint: a symlink, a file, a checkpoint-N,
// any other directory is refused (invalid_argument); nothing there is not_found.
UntagResult delete_named_checkpoint(const std::string& run_dir, const std::string& name);

}  // namespace ckpt::checkpoint
