#include "checkpoint/weights_layout.hpp"

#include <algorithm>
#include <cstdio>

#include "format/json.hpp"

namespace ckpt::checkpoint {

std::string single_weights_name(WeightsFormat format) {
  return format == WeightsFormat::safetensors ? "model.safetensors" : "pytorch_model.bin";
}

std::string shard_name(WeightsFormat format, std::size_t index, std::size_t count) {
  char digits[32];
  std::snprintf(digits, sizeof digits, "-%05zu-of-%05zu", index + 1, count);
  return format == WeightsFormat::safetensors ? "model" + std::string(digits) + ".safetensors"
                                              : "pytorch_model" + std::string(digits) + ".bin";
}

std::string index_name(WeightsFormat format) {
  return format == WeightsFormat::safetensors ? "model.safetensors.index.json" : "pytorch_model.bin.index.json";
}

std::vector<std::vector<std::size_t>> greedy_shards(const std::vector<std::uint64_t>& sizes,
                                                    std::optional<std::uint64_t> max_bytes) {
  std::vector<std::vector<std::size_t>> shards(1);
  std::uint64_t current = 0;
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    if (max_bytes && current > 0 && current + sizes[i] > *max_bytes) {
      shards.emplace_back();
      current = 0;
    }
    shards.back().push_back(i);
    current += sizes[i];
  }
  return shards;
}

std::string index_json(std::uint64_t total_size, std::vector<std::pair<std::string, std::string>> tensor_to_file) {
  std::sort(tensor_to_file.begin(), tensor_to_file.end());
  json::ObjectBuilder weight_map;
  for (const auto& [tensor, file] : tensor_to_file) weight_map.set(tensor, file);
  const json::Json index{{"metadata", {{"total_size", total_size}}}, {"weight_map", weight_map.take()}};
  return json::dump(index, 2) + "\n";
}

}  // namespace ckpt::checkpoint
