#include "util/ordered_pool.hpp"

#include <algorithm>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace ckpt {

void run_ordered(std::size_t count, unsigned threads, std::size_t window,
                 const std::function<void(std::size_t job, unsigned worker)>& produce,
                 const std::function<void(std::size_t job)>& consume) {
  threads = std::max(1u, threads);
  window = std::max<std::size_t>(window, 1);
  std::mutex mutex;
  std::condition_variable changed;
  std::size_t next = 0;      // the next job a worker takes
  std::size_t consumed = 0;  // jobs consumed so far
  std::vector<bool> done(window, false);
  std::exception_ptr error;
  bool stop = false;

  auto work = [&](unsigned worker) {
    for (;;) {
      std::size_t job;
      {
        std::unique_lock lock(mutex);
        changed.wait(lock, [&] { return stop || next >= count || next < consumed + window; });
        if (stop || next >= count) return;
        job = next++;
      }
      try {
        produce(job, worker);
      } catch (...) {
        std::lock_guard lock(mutex);
        if (!error) error = std::current_exception();
        stop = true;
        changed.notify_all();
        return;
      }
      std::lock_guard lock(mutex);
      done[job % window] = true;
      changed.notify_all();
    }
  };

  std::vector<std::thread> pool;
  pool.reserve(threads);
  auto stop_and_join = [&] {
    {
      std::lock_guard lock(mutex);
      stop = true;
      changed.notify_all();
    }
    for (auto& t : pool) t.join();
  };
  try {
    for (unsigned w = 0; w < threads; ++w) pool.emplace_back(work, w);
  } catch (...) {
    stop_and_join();
    throw;
  }
  try {
    for (std::size_t job = 0; job < count; ++job) {
      {
        std::unique_lock lock(mutex);
        changed.wait(lock, [&] { return stop || done[job % window]; });
        if (stop) break;
      }
      consume(job);
      std::lock_guard lock(mutex);
      done[job % window] = false;
      ++consumed;
      changed.notify_all();
    }
  } catch (...) {
    std::lock_guard lock(mutex);
    if (!error) error = std::current_exception();
    stop = true;
    changed.notify_all();
  }
  stop_and_join();
  if (error) std::rethrow_exception(error);
}

}  // namespace ckpt
