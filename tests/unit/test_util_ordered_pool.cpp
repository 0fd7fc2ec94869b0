#include <doctest/doctest.h>

#include <atomic>
#include <stdexcept>
#include <vector>

#include "util/ordered_pool.hpp"

TEST_CASE("jobs are consumed in order, each after it was produced, never more than the window ahead") {
  for (unsigned threads : {1u, 2u, 5u}) {
    const std::size_t window = 3;
    std::vector<std::atomic<int>> produced(200);
    std::atomic<std::size_t> consumed{0};
    std::atomic<bool> ahead_too_far{false};
    std::vector<std::size_t> order;
    ckpt::run_ordered(
        produced.size(), threads, window,
        [&](std::size_t job, unsigned worker) {
          CHECK(worker < threads);
          if (job >= consumed.load() + window) ahead_too_far = true;
          produced[job] = 1;
        },
        [&](std::size_t job) {
          CHECK(produced[job].load() == 1);
          order.push_back(job);
          consumed = job + 1;
        });
    CHECK_FALSE(ahead_too_far.load());
    REQUIRE(order.size() == produced.size());
    for (std::size_t i = 0; i < order.size(); ++i) CHECK(order[i] == i);
  }
  ckpt::run_ordered(
      0, 2, 2, [](std::size_t, unsigned) { FAIL("no job"); }, [](std::size_t) { FAIL("no job"); });
}

TEST_CASE("the first exception from either side stops the pool and is rethrown") {
  std::atomic<std::size_t> after{0};
  CHECK_THROWS_WITH_AS(ckpt::run_ordered(
                           1000, 2, 4,
                           [&](std::size_t job, unsigned) {
                             if (job == 10) throw std::runtime_error("produce failed");
                             if (job > 30) ++after;
                           },
                           [](std::size_t) {}),
                       "produce failed", std::runtime_error);
  CHECK(after.load() == 0);
  std::size_t consumed = 0;
  CHECK_THROWS_WITH_AS(ckpt::run_ordered(
                           1000, 2, 4, [](std::size_t, unsigned) {},
                           [&](std::size_t job) {
                             ++consumed;
                             if (job == 5) throw std::runtime_error("consume failed");
                           }),
                       "consume failed", std::runtime_error);
  CHECK(consumed == 6);
}
