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

// Creates `dest_dir` if needed; each file is placed in one step (hard link or copy, then rename), and the
// directory is fsynced at the end.
ExportResult export_model(const std::string& checkpoint_dir, const std::string& dest_dir);

}  // namespace ckpt::checkpoint
