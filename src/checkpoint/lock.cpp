#include "checkpoint/lock.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>

#include "checkpoint/run_dir.hpp"
#include "util/error.hpp"

namespace ckpt::checkpoint {

RunLock::RunLock(const std::string& run_dir, bool wait, const char* file_name) {
  const std::string path = (std::filesystem::path(run_dir) / file_name).string();
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) fail_io(path, "open lock file", errno);
  while (::flock(fd_, LOCK_EX | (wait ? 0 : LOCK_NB)) != 0) {
    if (errno == EINTR) continue;
    const int e = errno;
    ::close(fd_);
    fd_ = -1;
    if (e == EWOULDBLOCK) throw Error(ErrorKind::locked, path, "", std::string(file_name) == kTrainLockName ? "another trainer is writing into this run directory" : "another ckpt process holds the run directory's lock");
    fail_io(path, "lock", e);
  }
}

RunLock::~RunLock() {
  if (fd_ >= 0) ::close(fd_);  // closing releases the flock
}

}  // namespace ckpt::checkpoint
