// Exporting a checkpoint's model as Hugging Face's save_model lays it out: the weights (with a sharded set's
// index and shards), config.json and generation_config.json when present.
#pragma once

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
// A destination that is not a directory is refused (invalid_argument).
ExportResult export_model(const std::string& checkpoint_dir, const std::string& dest_dir);

}  // namespace ckpt::checkpoint
