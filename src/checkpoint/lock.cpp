#include "checkpoint/lock.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>

#include "checkpoint/run_dir.hpp"
#include "util/error.hpp"
#include "util/mapped_file.hpp"

namespace ckpt::checkpoint {

RunLock::RunLock(const std::string& run_dir, bool wait, const char* file_name) {
  const std::string path = (std::filesystem::path(run_dir) / file_name).string();
  // Never through a symlink (a dangling one would have us create a file wherever it points), never a FIFO or
  // device (O_NONBLOCK: opening one must not wait).
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY, 0644);
  if (fd_ < 0 && errno == ELOOP) {
    throw Error(ErrorKind::unsupported, path, "", "is a symlink; the lock file is never followed (remove it)");
  }
  if (fd_ < 0) fail_io(path, "open lock file", errno);
  struct stat st {};
  if (::fstat(fd_, &st) != 0) {
    const int e = errno;
    ::close(fd_);
    fd_ = -1;
    fail_io(path, "stat lock file", e);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd_);
    fd_ = -1;
    throw Error(ErrorKind::unsupported, path, "", std::string("not a regular file (") + file_type_name(st.st_mode) + "); the lock file must be one (remove it)");
  }
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
