// The run-directory model: which subdirectories are checkpoints, in what order, and which are complete.
// Shared by inspect, list, rotate, best and the trainer, so every command agrees on these rules.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace ckpt::checkpoint {

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

struct Completeness {
  bool complete = false;
  std::vector<std::string> problems;
};

// Complete: the weights are present (every shard of a sharded set) with readable headers, and
// trainer_state.json parses. Reads headers only, never tensor bytes.
Completeness assess_completeness(const std::string& dir);

}  // namespace ckpt::checkpoint
