// What `ckpt inspect` reports: a single file, a checkpoint directory or a run directory, summarised from
// metadata alone (tensor bytes are read only by `verify`). The JSON shape is docs/inspect-json.md.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "checkpoint/file_kind.hpp"
#include "format/dtype.hpp"
#include "format/json.hpp"
#include "format/pickle.hpp"
#include "util/error.hpp"

namespace ckpt::checkpoint {

struct Source;

struct NonFinite {
  std::uint64_t nan = 0;
  std::uint64_t inf = 0;
};

struct TensorSummary {
  std::string name;
  DType dtype = DType::uint8;
  std::vector<std::int64_t> shape;
  std::vector<std::int64_t> stride;
  std::uint64_t nbytes = 0;
  std::optional<std::string> storage;  // torch storage key; none in safetensors
  std::int64_t storage_offset = 0;
  std::optional<std::string> tied_to;  // an earlier tensor that is the very same view
  std::optional<NonFinite> nonfinite;  // counted by verify, floating tensors only
};

struct Verification {
  std::vector<std::string> checks;  // what was checked
  std::vector<std::string> errors;  // what failed; empty when everything passed
  bool ok() const { return errors.empty(); }
};

struct FileReport {
  std::string path;
  std::string file;  // base name
  std::uint64_t size_bytes = 0;
  std::string format;  // torch_zip, safetensors, json, other
  FileKind kind = FileKind::other;
  std::vector<TensorSummary> tensors;        // weights only
  json::Json fields = json::Json::object();  // the kind's summary fields
  std::optional<Verification> verify;
  std::optional<Error> error;  // set instead of the summary when the file could not be read (directory reports)

  // Internal to cross-file checks: per optimizer parameter index, the shape of its state tensors.
  std::vector<std::pair<std::int64_t, std::vector<std::int64_t>>> optimizer_state_shapes;
};

struct DtypeTotal {
  DType dtype = DType::uint8;
  std::uint64_t tensors = 0;
  std::uint64_t parameters = 0;
  std::uint64_t bytes = 0;
};

// What a checkpoint (or model) directory's report starts with, from what inspect reads anyway: trainer_state.json,
// the weights' headers and the files' sizes and kinds, never tensor bytes.
struct CheckpointSummary {
  std::optional<std::int64_t> step;  // trainer_state.json's global_step, else the directory name's
  std::optional<double> epoch;
  std::optional<double> loss;                   // the newest training log entry's
  std::optional<std::int64_t> eval_step;        // the newest evaluation at or before `step`
  std::map<std::string, double> metrics;        // its eval_* values
  std::optional<std::string> best_checkpoint;   // best_checkpoint_name (checkpoint/best.hpp)
  std::optional<std::string> best_metric_name;  // best_metric_name (checkpoint/best.hpp)
  std::optional<double> best_metric;
  std::uint64_t size_bytes = 0;  // of its files
  // Of the model's weights (a sharded set's shards; adapter weights when there are no others), counted as each
  // weights report counts them: tied views once. None without readable weights.
  std::optional<std::uint64_t> parameters;
  std::vector<DtypeTotal> dtypes;  // in order of first appearance
};

struct CheckpointReport {
  std::string path;
  std::string name;
  std::optional<std::int64_t> step;
  bool model_directory = false;  // checkpoint/run_dir.hpp's is_model_directory: complete as one, not as a checkpoint
  bool complete = false;
  std::vector<std::string> problems;  // why it is not complete, or inconsistencies between its files
  int world_size = 1;                 // processes that wrote it (checkpoint/shards.hpp)
  bool optimizer_sharded = false;     // optimizer_<rank>.pt instead of optimizer.pt
  std::vector<FileReport> files;      // a DeepSpeed checkpoint's rank files too, named TAG/FILE
  CheckpointSummary summary;
  // A DeepSpeed ZeRO checkpoint's own account (docs/inspect-json.md "deepspeed"): stage, ranks, groups, sizes;
  // null for any other checkpoint or when its files could not be read (then `problems` says why).
  json::Json deepspeed;
  // A sharded FSDP checkpoint's (docs/inspect-json.md "fsdp"): ranks, dtypes, parameters, its DCP files; else null.
  json::Json fsdp;
  std::string layout;                  // checkpoint/run_dir.hpp Completeness::layout
  std::optional<Verification> verify;  // cross-file checks, with --verify
};

struct InspectOptions {
  bool verify = false;
};

// Throws Error for an unreadable or corrupt file.
FileReport inspect_file(const std::string& path, const InspectOptions& options);

// inspect_file for a file of a checkpoint directory, which may hold files of no format ckpt knows (a README,
// tokenizer files): such a file is reported as FileKind::other, not refused.
FileReport inspect_checkpoint_file(const std::string& path, const InspectOptions& options);
// A torch.save file another reader has already loaded and checked (a DeepSpeed rank file, checkpoint/zero.hpp), as a
// file of `kind`: its size, with verify the CRCs of its zip members. What it holds is that reader's to report, so
// its values are not read again.
FileReport inspect_loaded_file(const Source& file, FileKind kind, const InspectOptions& options);

// Never throws for a bad member file: its report carries the error and the checkpoint is incomplete. A model
// directory (is_model_directory) is judged complete as one (assess_model_directory).
CheckpointReport inspect_checkpoint(const std::string& dir, const InspectOptions& options);

// inspect_checkpoint for a checkpoint of a run, which a rotate (or the trainer, replacing it with another of its
// step) may take away while it is read: nullopt when the directory is gone or is another one by the end, whatever
// reading it gave (missing files are then no corruption). Errors of a checkpoint still there are thrown as ever.
std::optional<CheckpointReport> inspect_run_checkpoint(const std::string& dir, const InspectOptions& options);

// What fails a checkpoint report: member files that could not be read, their failed checks (`FILE: message`) and
// the checks across files. inspect --verify passes a checkpoint, and latest --verify picks it, when this is empty.
std::vector<std::string> verification_errors(const CheckpointReport& report);

// What inspect shows of one generator of an RNG state file (python, numpy: the position in its state; cpu: its size;
// cuda: how many and their size); null for another generator or one not of the shape the Trainer saves.
json::Json rng_generator_summary(const pickle::Graph& graph, std::string_view generator, pickle::NodeId value);

enum class PathKind { file, checkpoint, run };
// A directory holding checkpoint-N subdirectories is a run; a checkpoint-N, or one holding trainer_state.json,
// weights or config.json, a checkpoint (or model) directory; any other directory a run.
PathKind classify_path(const std::string& path);

}  // namespace ckpt::checkpoint
