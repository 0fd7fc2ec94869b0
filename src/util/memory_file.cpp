#include "util/memory_file.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>

#include "util/error.hpp"

namespace ckpt {

MemoryFile::MemoryFile(const std::string& name, std::uint64_t size) : size_(size) {
  fd_ = ::memfd_create(name.c_str(), MFD_CLOEXEC);
  if (fd_ < 0) fail_io(name, "memfd_create", errno);
  if (::ftruncate(fd_, static_cast<off_t>(size)) != 0) {
    const int e = errno;
    ::close(fd_);
    fail_io(name, "ftruncate", e);
  }
  path_ = "/proc/self/fd/" + std::to_string(fd_);
}

MemoryFile::~MemoryFile() { ::close(fd_); }

void MemoryFile::write_at(std::uint64_t offset, std::span<const std::uint8_t> bytes) {
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::pwrite(fd_, bytes.data() + done, bytes.size() - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail_io(path_, "write", n < 0 ? errno : EIO);
    done += static_cast<std::size_t>(n);
  }
}

}  // namespace ckpt
