#include "checkpoint/lock.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "checkpoint/run_dir.hpp"
#include "util/error.hpp"
#include "util/mapped_file.hpp"

namespace ckpt::checkpoint {
namespace {

[[noreturn]] void fail_to_lock(const std::string& run_dir, int error_number) {
  if (error_number == ENOENT || error_number == ENOTDIR)
    throw Error(ErrorKind::not_found, run_dir, "", "no such directory");
  std::string what = std::string("cannot lock the run directory: ") + std::strerror(error_number);
  if (error_number == EACCES || error_number == EPERM || error_number == EROFS) what += " (it must be writable)";
  throw Error(ErrorKind::io, run_dir, "", what);
}

}  // namespace

RunLock::RunLock(const std::string& run_dir, bool wait, const char* file_name) {
  const std::string path = (std::filesystem::path(run_dir) / file_name).string();
  // Never through a symlink (a dangling one would have us create a file wherever it points), never a FIFO or
  // device (O_NONBLOCK: opening one must not wait).
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY, 0644);
  if (fd_ < 0 && errno == ELOOP) {
    throw Error(ErrorKind::unsupported, path, "", "is a symlink; the lock file is never followed (remove it)");
  }
  // Failures name the run directory, the user's path; the lock file is named only when it is itself the problem.
  if (fd_ < 0) fail_to_lock(run_dir, errno);
  struct stat st {};
  if (::fstat(fd_, &st) != 0) {
    const int e = errno;
    ::close(fd_);
    fd_ = -1;
    fail_to_lock(run_dir, e);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd_);
    fd_ = -1;
    throw Error(
        ErrorKind::unsupported, path, "",
        std::string("not a regular file (") + file_type_name(st.st_mode) + "); the lock file must be one (remove it)");
  }
  while (::flock(fd_, LOCK_EX | (wait ? 0 : LOCK_NB)) != 0) {
    if (errno == EINTR) continue;
    const int e = errno;
    ::close(fd_);
    fd_ = -1;
    if (e == EWOULDBLOCK)
      throw Error(ErrorKind::locked, run_dir, "",
                  std::string(file_name) == kTrainLockName ? "another trainer is writing into this run directory"
                                                           : "another ckpt process holds the run directory's lock");
    fail_to_lock(run_dir, e);
  }
}

RunLock::~RunLock() {
  if (fd_ >= 0) ::close(fd_);  // closing releases the flock
}

}  // namespace ckpt::checkpoint
