// Parallel work whose results must be used in order: chunks compressed on every core and written to one file in
// sequence, or decompressed and hashed in sequence. Memory stays bounded because only `window` jobs may be done
// ahead of the one being consumed.
#pragma once

#include <cstddef>
#include <functional>

namespace ckpt {

// Runs produce(job, worker) for jobs 0..count-1 on `threads` worker threads (worker in [0, threads)) and
// consume(job) on the calling thread in job order, each job after its produce returned. At most `window` jobs
// are produced ahead of the one being consumed, so results can live in `window` slots indexed by job % window.
// The first exception thrown by either side stops every worker and is rethrown once they have all stopped.
void run_ordered(std::size_t count, unsigned threads, std::size_t window,
                 const std::function<void(std::size_t job, unsigned worker)>& produce,
                 const std::function<void(std::size_t job)>& consume);

}  // namespace ckpt
