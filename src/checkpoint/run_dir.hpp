// The run-directory model: which entries of a run directory are checkpoints, in what order, which are complete,
// and what their trainer_state.json says. Shared by inspect, list, rotate, best and the trainer, so every
// command agrees on these rules.
//
// A run directory holds:
//   checkpoint-<digits>/   a checkpoint (complete or not: see assess_completeness)
//   tmp-checkpoint-*/      Hugging Face's staging directory, in progress, never a checkpoint
//   .ckpt-staging-*/       ckpt's trainer's staging directory, in progress, never a checkpoint
//   .ckpt-trash-*/         a checkpoint being deleted (renamed first so it never looks complete)
//   archive/*.ckpt, *.ckpt archived checkpoints (checkpoint/archive.hpp): listed, bounded only by
//                          rotate --keep-archives; the archive/ directory itself is not an entry
//   NAME/ with trainer_state.json
//                          a named checkpoint (`ckpt tag`, save --save-name; checkpoint/named.hpp): a custom
//                          directory assessed as a checkpoint is, listed as named, never rotated, never best or latest
//   any other directory    custom (a milestone copy, an export): listed, never rotated
// Symlinks are never followed.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "format/json.hpp"
#include "util/error.hpp"

namespace ckpt::checkpoint {

inline constexpr const char* kStagingPrefix = ".ckpt-staging-";
inline constexpr const char* kTrashPrefix = ".ckpt-trash-";
inline constexpr const char* kLockName = ".ckpt.lock";
inline constexpr const char* kTrainLockName = ".ckpt.train.lock";

struct CheckpointDir {
  std::string name;  // checkpoint-<step>
  std::string path;
  std::int64_t step = 0;
};

// `checkpoint-<digits>` directories directly inside `run_dir` (symlinks are not followed), ordered by step.
std::vector<CheckpointDir> discover_checkpoints(const std::string& run_dir);

// The step encoded in a `checkpoint-<digits>` name.
std::optional<std::int64_t> checkpoint_step(const std::string& name);

// The weights files of a checkpoint directory in Hugging Face's order of preference: a safetensors index,
// model.safetensors, a pickle index, pytorch_model.bin. Shards are listed from the index's weight_map.
struct WeightsFiles {
  std::optional<std::string> index;  // file name of the index json, when sharded
  std::vector<std::string> files;    // file names of the weights (shards in index order)
};
std::optional<WeightsFiles> find_weights(const std::string& dir);
// The same rule over any set of files (an archive's): `path_of(name)` is where the file of that name can be read, or
// nullopt when there is none.
std::optional<WeightsFiles> find_weights_in(
    const std::function<std::optional<std::string>(const std::string& name)>& path_of);

// A Hugging Face weights index (model.safetensors.index.json, pytorch_model.bin.index.json): its weight_map, read
// by find_weights, convert and inspect --verify alike. Every shard name is a file beside the index (not empty, not
// `.` or `..`, no `/` or NUL); any other name, a non-string, or a missing weight_map object is corrupt.
struct WeightsIndex {
  std::vector<std::pair<std::string, std::string>> tensor_to_file;  // in the index's order
  std::vector<std::string> files;                                   // each shard once, in order of first mention
};
WeightsIndex read_weights_index(const std::string& index_path);

// What list, best and rotate need from a checkpoint's trainer_state.json.
struct TrainerStateSummary {
  std::optional<std::int64_t> global_step;
  std::optional<double> epoch;
  std::optional<std::string> best_model_checkpoint;
  std::optional<double> best_metric;
  std::optional<double> last_loss;  // the newest training log entry's loss
  // Per logged step, the evaluation metrics (eval_*) logged at it; the newest entry wins.
  std::map<std::int64_t, std::map<std::string, double>> eval_by_step;
};
TrainerStateSummary summarize_trainer_state(const json::Json& state);

// The newest entry of a log_history holding a key that `key_matches`; null when none does (or it is no list).
json::Json last_log_with(const json::Json& log_history, const std::function<bool(const std::string&)>& key_matches);

// The newest evaluation logged at or before `step` (its step and metrics), the one a checkpoint of that step
// reports; null when none was.
const std::pair<const std::int64_t, std::map<std::string, double>>* newest_evaluation_at(
    const TrainerStateSummary& state, std::int64_t step);

struct Completeness {
  bool complete = false;
  // Not complete because ckpt cannot read something (a newer format or dtype), not because anything is missing
  // or damaged: such a checkpoint may be perfectly good, so rotation never deletes it.
  bool unreadable = false;
  // trainer_state.json is there (parsed or not): writers put it last, so such a directory was finished by
  // someone, and rotation never deletes it as abandoned.
  bool has_trainer_state = false;
  std::vector<std::string> problems;
  std::optional<TrainerStateSummary> state;  // when trainer_state.json parsed
  // How a multi-GPU run laid out its model and optimizer, when not as one process does: "deepspeed zero-3 x4".
  std::string layout;
};

// Complete: the weights are present (every shard of a sharded set) with readable headers and hold weights (a
// non-empty dict of tensors, not another file under their name: that is unreadable, see above), a sharded optimizer
// has every shard (checkpoint/shards.hpp), and trainer_state.json parses. Reads headers only, never tensor bytes.
// A DeepSpeed ZeRO checkpoint (DeepSpeed's `latest` beside it) holds its weights in its ranks' files instead: complete
// when checkpoint/zero.hpp reads them all and they add up (gathered 16-bit weights, when there, must be readable too).
// So does an FSDP checkpoint (checkpoint/fsdp.hpp: sharded DCP directories, or pytorch_model_fsdp.bin): complete when
// every file its metadata promises is there and holds what it says. A directory with no weights file ckpt knows but a
// subdirectory of another kind is of a layout ckpt cannot assess: unreadable, not incomplete.
// A FIFO, socket or device among its files (or a symlink to one) makes it incomplete and unreadable.
Completeness assess_completeness(const std::string& dir);

// A model directory is what loading a model needs, not resuming training: what best --export, convert of a model
// directory and Hugging Face's save_pretrained write. It is not named checkpoint-N and holds no trainer_state.json and
// no optimizer, scheduler, scaler or RNG file (any of them makes it a checkpoint, complete or not); anything else
// (generation_config.json, training_args.bin, tokenizer files) may be beside its weights.
bool is_model_directory(const std::string& dir);
// Complete: weights as for a checkpoint (every shard, readable headers, holding weights) and config.json, a JSON
// object. Reads headers only.
Completeness assess_model_directory(const std::string& dir);

// Whether `dir`, a directory of a run directory that is none of its checkpoint-N, staging, trash or hidden entries,
// is a named checkpoint: it holds trainer_state.json, as the Trainer's and ckpt's checkpoints do. The one test of
// scan_run (RunEntry::named) and of the commands that make and delete named checkpoints (checkpoint/named.hpp).
bool holds_named_checkpoint(const std::string& dir);

enum class EntryKind { checkpoint, staging, trash, custom, archive };
const char* to_string(EntryKind kind);

struct RunEntry {
  std::string name;
  std::string path;
  EntryKind kind = EntryKind::custom;
  std::optional<std::int64_t> step;  // checkpoints and archives (from the name); named checkpoints (global_step)
  double mtime = 0;                  // newest modification time of the directory and the files directly inside it (age)
  double dir_mtime = 0;              // the directory's own modification time (Hugging Face's use_mtime order)
  std::uint64_t size_bytes = 0;      // regular files below it, symlinks not followed (an archive: its file)
  std::size_t num_files = 0;
  std::uint64_t original_bytes = 0;  // archives: the archived checkpoint's size
  std::string archived_name;         // archives: the archived checkpoint's directory name
  bool complete = false;             // an archive: its manifest reads
  bool unreadable = false;           // see Completeness
  bool has_trainer_state = false;    // see Completeness
  bool named = false;                // custom: a named checkpoint, assessed for completeness as checkpoints are
  std::vector<std::string> problems;
  std::optional<TrainerStateSummary> state;
  std::string layout;  // see Completeness
};

struct RunScan {
  std::string path;
  std::vector<RunEntry> entries;  // checkpoints and archives by step, then the others (named ones too) by name
};

// Reads a run directory: every subdirectory, classified; checkpoints assessed for completeness.
RunScan scan_run(const std::string& run_dir);

// For commands that take a run directory (list, best, latest, rotate), given the wrong path: throws not_found saying
// what `path` is instead (a file; a checkpoint, naming its run directory; a directory holding no checkpoints, naming
// run directories below it), so that a slip in a cron line fails instead of doing nothing forever. A run directory
// with nothing in it yet (it exists and holds only hidden, staging or TensorBoard `runs` entries) is fine:
// returns true for it, false for a run directory with checkpoints or archives (a checkpoint-N directory or an
// archive that scan_run would list; symlinks are not followed).
bool check_run_directory(const std::string& path);

// A run directory for a command of several runs: its path, or why a directory that may hold runs could not be read.
struct RunTarget {
  std::string path;
  std::optional<Error> error;
};

// Bounds of a search for run directories: a tree of runs is neither this deep nor this large, so a search that gets
// there (a loop of bind mounts, a whole file system given by mistake) fails rather than runs on.
struct RunSearchLimits {
  int max_depth = 32;                    // levels of directories below the root
  std::size_t max_directories = 100000;  // directories read, the root included
};

// `--recursive ROOT`: the run directories at or below `root` (itself included), sorted by path, each path `root` as
// given joined with the names below it. A run directory is one check_run_directory accepts as holding checkpoints:
// a checkpoint-N directory or an archive that scan_run would list (the same rule). Each directory is opened through
// its parent, never through a symlink (`root` itself is followed, as given); hidden entries (ckpt's staging and
// trash directories) are skipped, and so are a run's checkpoint-N directories and its archive directory, but not
// its other subdirectories (a sweep's runs nested in a run). A subdirectory that cannot be read is an entry with its
// error (it may hold runs); one that vanishes or turns out no directory meanwhile is passed over. Throws Error
// naming `root`: not_found when it is missing or no directory, io when it cannot be read, unsupported when the
// tree goes beyond `limits`.
std::vector<RunTarget> find_run_directories(const std::string& root, const RunSearchLimits& limits = {});

// The runs of a command of several runs: `run_dirs` as given, in order, then each root's (find_run_directories)
// in turn; a directory reached twice (the same realpath) is handled once, under its first name. A root that fails,
// or holds no run directory at all (not_found: a slip in a cron line must fail, not do nothing forever), is an
// entry with its error.
std::vector<RunTarget> select_runs(const std::vector<std::string>& run_dirs, const std::vector<std::string>& roots);

// The archives directly in `dir` (visible `*.ckpt` files), as scan_run lists them, named `prefix` + file name.
std::vector<RunEntry> scan_archive_dir(const std::string& dir, const std::string& prefix);

// Checkpoints (complete only, if asked) in rotation order: by step, or by the directories' own mtimes as
// Hugging Face does with use_mtime (ties by path; falling back to steps when all mtimes lie within one second,
// as on file systems that do not keep them). Returns indices into scan.entries.
std::vector<std::size_t> ordered_checkpoints(const RunScan& scan, bool complete_only, bool by_mtime);

// Complete checkpoints by step, and with `with_archives` the readable archives of steps no complete checkpoint has
// (ties in scan order). The candidates of best, of latest (newest first) and of resume (the last one).
std::vector<std::size_t> complete_by_step(const RunScan& scan, bool with_archives);

// The complete checkpoint with the highest step: what resume picks (complete_by_step's last, archives aside).
std::optional<std::size_t> newest_complete(const RunScan& scan);

// For `ckpt save --output-dir`: what an earlier run left in `run_dir` that a new run's checkpoints would be mixed
// in with: its checkpoint directories (complete or not) and archives, as scan_run lists them. Staging and trash
// directories are not (the trainer and rotate clear them); nor is anything else: the final weights, config.json,
// training_args.bin and trainer_state.json at the top level, logs, custom directories. Empty when `run_dir` is no
// directory.
std::vector<RunEntry> earlier_checkpoints(const std::string& run_dir);

// The refusal of `ckpt save` into a run directory holding `earlier` (not empty): an invalid_argument error naming
// the newest of them and the ways out, `ckpt resume` (with --from when its default would take another
// checkpoint) and --overwrite-output-dir.
Error earlier_run_error(const std::string& run_dir, const std::vector<RunEntry>& earlier);

// What `resume --from FROM` names. A bare name (one path component) is an entry of the run directory when it holds
// one: RUN_DIR/FROM (checkpoint-N, a named checkpoint), or for checkpoint-N its archive where list shows archives
// (RUN_DIR/archive/checkpoint-N.ckpt, RUN_DIR/checkpoint-N.ckpt); anything else, a bare name the run directory does
// not hold included, is the path as given. Existence only: the caller reads what it names.
std::string resume_source(const std::string& run_dir, const std::string& from);

// A word of a command as messages tell the user to type it: one holding anything a POSIX shell treats specially
// is single-quoted.
std::string shell_word(const std::string& word);

// `ckpt resume RUN_DIR [--from FROM]` as messages tell the user to type it (shell_word).
std::string resume_command(const std::string& run_dir, const std::optional<std::string>& from = std::nullopt);

}  // namespace ckpt::checkpoint
