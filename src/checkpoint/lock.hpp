// The run directory's advisory lock (flock on RUN_DIR/.ckpt.lock). `rotate` holds it while it deletes and
// the trainer while it commits a checkpoint and rotates, so neither sees the other half-done.
#pragma once

#include <string>

#include "checkpoint/run_dir.hpp"

namespace ckpt::checkpoint {

class RunLock {
 public:
  // Waits for the lock, or with `wait` false throws an Error of kind `locked` when another process holds it.
  // `file_name` selects the lock: kLockName guards commits and deletions; the trainer also holds kTrainLockName
  // for its whole run, so that two trainers never write into one run directory. The lock file is created when
  // missing; a symlink, FIFO or device in its place is an Error of kind unsupported, never followed or waited on.
  RunLock(const std::string& run_dir, bool wait, const char* file_name = kLockName);
  ~RunLock();  // releases the lock; commits nothing
  RunLock(const RunLock&) = delete;
  RunLock& operator=(const RunLock&) = delete;

 private:
  int fd_ = -1;
};

}  // namespace ckpt::checkpoint
