#include <doctest/doctest.h>

#include "checkpoint/weights_layout.hpp"
#include "train/arguments.hpp"
#include "train/rng.hpp"
#include "util/error.hpp"

using namespace ckpt;
using namespace ckpt::train;

TEST_CASE("arguments: the command line over the saved arguments over the defaults") {
  const Arguments resolved = resolve_arguments({{"max_steps", std::int64_t{7}}}, {{"max_steps", std::int64_t{3}}, {"seed", std::int64_t{5}}});
  CHECK(get_int(resolved, "max_steps") == 7);
  CHECK(get_int(resolved, "seed") == 5);
  CHECK(get_int(resolved, "save_steps") == 20);
  CHECK_FALSE(get_optional_int(resolved, "save_total_limit"));
  // Python writes 3 for a float that happens to be whole.
  CHECK(get_number(resolve_arguments({{"learning_rate", std::int64_t{3}}}, {}), "learning_rate") == 3.0);
  CHECK_THROWS_AS(resolve_arguments({{"no_such_flag", true}}, {}), Error);
  CHECK_THROWS_AS(resolve_arguments({{"seed", std::string("x")}}, {}), Error);
  CHECK(flag_name("per_device_train_batch_size") == "per-device-train-batch-size");
}

TEST_CASE("weights layout: transformers' greedy sharding") {
  using checkpoint::greedy_shards;
  CHECK(greedy_shards({5, 5, 5}, std::nullopt) == std::vector<std::vector<std::size_t>>{{0, 1, 2}});
  CHECK(greedy_shards({5, 5, 5}, 10) == std::vector<std::vector<std::size_t>>{{0, 1}, {2}});
  // A tensor over the limit gets a shard of its own.
  CHECK(greedy_shards({3, 20, 3}, 10) == std::vector<std::vector<std::size_t>>{{0}, {1}, {2}});
  CHECK(greedy_shards({}, 10) == std::vector<std::vector<std::size_t>>{{}});
  CHECK(checkpoint::shard_name(checkpoint::WeightsFormat::safetensors, 0, 2) == "model-00001-of-00002.safetensors");
  CHECK(checkpoint::index_json(8, {{"b", "f2"}, {"a", "f1"}}) ==
        "{\n  \"metadata\": {\n    \"total_size\": 8\n  },\n  \"weight_map\": {\n    \"a\": \"f1\",\n    \"b\": \"f2\"\n  }\n}\n");
}

// Expected values from /usr/bin/python3: random.seed(42); [random.getrandbits(32) for _ in range(3)] and
// np.random.seed(42); np.random.standard_normal(3).
TEST_CASE("rng: Python's random and numpy's legacy generator") {
  PythonRandom python;
  python.seed(42);
  CHECK(python.getrandbits(32) == 2746317213u);
  CHECK(python.getrandbits(32) == 478163327u);
  CHECK(python.getrandbits(32) == 107420369u);
  NumpyRandom numpy;
  numpy.seed(42);
  CHECK(numpy.standard_normal() == 0.4967141530112327);
  CHECK(numpy.standard_normal() == -0.13826430117118466);
  CHECK(numpy.standard_normal() == 0.6476885381006925);
}
