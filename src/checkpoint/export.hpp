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

// Files are hard-linked where possible (checkpoint files are never modified in place), copied otherwise.
// A destination that does not exist, or holds only an earlier export (weights, config.json,
// generation_config.json), is built as a staged directory and renamed into place: it is the old export or the
// new one, never shards of two checkpoints. Into any other directory (say the run directory, where HF's
// save_model writes), each file is placed in one step, shards before the index and the index before config.json,
// so a sharded index never names a missing shard.
ExportResult export_model(const std::string& checkpoint_dir, const std::string& dest_dir);

}  // namespace ckpt::checkpoint
