#pragma once
// Whether work is linear in its input, tested without a deadline: its time is compared with a reference of known
// growth measured side by side in the same process, a ratio that a slow, shared or sanitizer-instrumented machine
// leaves about the same.

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <map>
#include <string>

namespace ckpt::test {

// The time work(n) takes over the time a std::map takes to index n distinct string keys (n log n), the fastest
// of two runs each. Linear or n log n work stays within a small multiple of it; work quadratic in n, at a few
// hundred thousand, takes hundreds of times as long.
template <class Work>
double time_relative_to_a_map(std::size_t n, Work work) {
  const auto seconds = [](auto&& run) {
    const auto started = std::chrono::steady_clock::now();
    run();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  };
  const auto index_keys = [n] {
    std::map<std::string, std::size_t> keys;
    for (std::size_t i = 0; i < n; ++i) keys.emplace("key" + std::to_string(i), i);
  };
  double work_time = 1e300;
  double reference_time = 1e300;
  for (int run = 0; run < 2; ++run) {
    work_time = std::min(work_time, seconds([&] { work(n); }));
    reference_time = std::min(reference_time, seconds(index_keys));
  }
  return work_time / std::max(reference_time, 1e-9);
}

}  // namespace ckpt::test
