// How Hugging Face lays weights out in a checkpoint directory: file names, the greedy sharding rule of
// save_pretrained (shard_checkpoint), and the index json. Shared by convert and the trainer.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace ckpt::checkpoint {

enum class WeightsFormat { safetensors, pytorch };

std::string single_weights_name(WeightsFormat format);                               // model.safetensors
std::string shard_name(WeightsFormat format, std::size_t index, std::size_t count);  // model-00001-of-00002.safetensors
std::string index_name(WeightsFormat format);                                        // model.safetensors.index.json

// Tensors in state-dict order go to the current shard until the next one would take it past `max_bytes`
// (a tensor larger than the limit gets a shard of its own). Returns indices into `sizes`, per shard; one
// (possibly empty) shard without a limit.
std::vector<std::vector<std::size_t>> greedy_shards(const std::vector<std::uint64_t>& sizes,
                                                    std::optional<std::uint64_t> max_bytes);

// The index json's text: {"metadata": {"total_size": N}, "weight_map": {tensor: file}} with sorted keys,
// indented by 2, with a trailing newline, as transformers writes it.
std::string index_json(std::uint64_t total_size, std::vector<std::pair<std::string, std::string>> tensor_to_file);

}  // namespace ckpt::checkpoint
