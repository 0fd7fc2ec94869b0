#include <doctest/doctest.h>

#include <cstddef>
#include <optional>
#include <vector>

#include "checkpoint/weights_layout.hpp"

using namespace ckpt;

TEST_CASE("weights layout: transformers' greedy sharding") {
  using checkpoint::greedy_shards;
  CHECK(greedy_shards({5, 5, 5}, std::nullopt) == std::vector<std::vector<std::size_t>>{{0, 1, 2}});
  CHECK(greedy_shards({5, 5, 5}, 10) == std::vector<std::vector<std::size_t>>{{0, 1}, {2}});
  // A tensor over the limit gets a shard of its own.
  CHECK(greedy_shards({3, 20, 3}, 10) == std::vector<std::vector<std::size_t>>{{0}, {1}, {2}});
  CHECK(greedy_shards({}, 10) == std::vector<std::vector<std::size_t>>{{}});
  CHECK(checkpoint::shard_name(checkpoint::WeightsFormat::safetensors, 0, 2) == "model-00001-of-00002.safetensors");
  CHECK(checkpoint::index_json(8, {{"b", "f2"}, {"a", "f1"}}) ==
        "{\n  \"metadata\": {\n    \"total_size\": 8\n  },\n  \"weight_map\": {\n    \"a\": \"f1\",\n    \"b\": "
        "\"f2\"\n  }\n}\n");
}
