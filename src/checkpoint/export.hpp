// Exporting a checkpoint's model as Hugging Face's save_model lays it out: the weights (with a sharded set's
// index and shards), config.json and generation_config.json when present. And the one rule every command that
// replaces a directory whole keeps (best --export, convert -o DIR --force, restoring an archive with --force):
// only an earlier output of ckpt is replaced, never a directory holding anything else.
#pragma once

#include <functional>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace ckpt::checkpoint {

struct ExportResult {
  std::vector<std::string> files;  // names written into the destination
  std::size_t hardlinked = 0;
};

// Files are hard-linked where possible (checkpoint files are never modified in place), copied otherwise;
// missing parent directories are created. A destination that does not exist, or a directory that holds an
// earlier export and nothing else, is built as a staged directory and exchanged with it in one step: it is the
// old export or the new one, never shards of two checkpoints. Into any other directory (the run directory,
// where HF's save_model writes; a repository clone; `.`; a symlink), each file is placed in one step, shards
// before the index and the index before config.json, so a sharded index never names a missing shard.
// Refused (invalid_argument): a destination that is not a directory, and one inside a checkpoint
// (refuse_destination_in_checkpoint), whose files it would replace.
ExportResult export_model(const std::string& checkpoint_dir, const std::string& dest_dir);

// Why `dir` is not an earlier output of ckpt that a new output holding `new_names` (paths relative to it) may
// replace whole; nullopt when it may (or when nothing is there). It may when it is a directory of its own (not
// reached through a symlink, not `.` or `..`, not a mount point) holding only regular files and directories that
// the new output holds too, or that an earlier output holds (its weights by find_weights: a single file or an
// index and the shards it names; config.json, generation_config.json), and their temporaries. Recognised by
// names alone: a file of the same name is taken for an earlier output's.
std::optional<std::string> why_not_replaceable(const std::string& dir, const std::set<std::string>& new_names);

// Throws Error (invalid_argument) saying why_not_replaceable, if anything.
void require_replaceable(const std::string& dir, const std::set<std::string>& new_names);

// fs_util::build_directory for an output of ckpt: an existing destination is replaced only when
// why_not_replaceable, asked just before the exchange with what was built (and `also`), finds nothing against
// it; otherwise Error (invalid_argument) saying why, and the destination is left as it was. Callers that know
// the names beforehand ask why_not_replaceable first, so that nothing is built in vain.
void build_output_directory(const std::string& destination, const std::set<std::string>& also,
                            const std::function<void(const std::string& staging)>& fill);

// Throws invalid_argument when `destination` (symlinks resolved) is or lies inside a checkpoint: a directory
// named checkpoint-<digits> (or a staging or trash directory of one), of any run, whether it exists or not, or
// a directory holding trainer_state.json that is not a run directory (one with checkpoint-<digits> inside).
void refuse_destination_in_checkpoint(const std::string& destination);

}  // namespace ckpt::checkpoint
