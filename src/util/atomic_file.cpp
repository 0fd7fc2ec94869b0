#include "util/atomic_file.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <vector>

#include "util/error.hpp"
#include "util/fs.hpp"
#include "util/mapped_file.hpp"

namespace ckpt {
namespace {

constexpr std::size_t kBufferSize = 1u << 20;
constexpr std::uint64_t kWritebackStep = 64u << 20;
// Direct I/O: offsets, lengths and memory aligned to 4096 suit both 512-byte and 4 KiB logical blocks. The
// buffer is a multiple of 2 MiB so that it can be backed by a transparent huge page.
constexpr std::size_t kDirectAlignment = 4096;
constexpr std::size_t kDirectBufferSize = 8u << 20;

void pwrite_all(int fd, const std::uint8_t* data, std::size_t size, std::uint64_t offset, const std::string& path) {
  while (size > 0) {
    ssize_t n = ::pwrite(fd, data, size, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail_io(path, "write", errno);
    data += n;
    offset += static_cast<std::uint64_t>(n);
    size -= static_cast<std::size_t>(n);
  }
}

void write_all(int fd, const std::uint8_t* data, std::size_t size, const std::string& path) {
  while (size > 0) {
    ssize_t n = ::write(fd, data, size);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail_io(path, "write", errno);
    data += n;
    size -= static_cast<std::size_t>(n);
  }
}

}  // namespace

void AtomicFile::FreeAligned::operator()(std::uint8_t* p) const { std::free(p); }

AtomicFile::AtomicFile(std::string destination, WriteOptions options)
    : destination_(std::move(destination)), durable_(options.durable) {
  const std::filesystem::path dest(destination_);
  temp_ = (dest.parent_path() / ("." + dest.filename().string() + ".tmp-" + fs_util::unique_suffix())).string();
  // Memory first, so that a failed allocation leaves no file behind.
  if (options.direct) {
    void* p = std::aligned_alloc(2u << 20, kDirectBufferSize);
    if (!p) throw std::bad_alloc();
    ::madvise(p, kDirectBufferSize, MADV_HUGEPAGE);  // a hint; 4 KiB pages work too
    aligned_.reset(static_cast<std::uint8_t*>(p));
  } else {
    buffer_.reserve(kBufferSize);
  }
  fd_ = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd_ < 0) fail_create(destination_, errno);
  if (options.direct) direct_fd_ = ::open(temp_.c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC);
}

AtomicFile::~AtomicFile() {
  if (direct_fd_ >= 0) ::close(direct_fd_);
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(temp_.c_str());
}

void AtomicFile::write_direct(std::size_t size) {
  std::size_t done = 0;
  while (done < size && direct_fd_ >= 0) {
    const ssize_t n = ::pwrite(direct_fd_, aligned_.get() + done, size - done, static_cast<off_t>(on_disk_ + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno != EINVAL) fail_io(destination_, "write", errno);
    // Refused (EINVAL: the file system does not take this direct write), or short by an unaligned amount (the
    // disk filled up): the rest goes through the page cache, whose error then names the cause.
    if (n <= 0 || (static_cast<std::size_t>(n) < size - done && n % static_cast<ssize_t>(kDirectAlignment) != 0)) {
      if (n > 0) done += static_cast<std::size_t>(n);
      fall_back_to_buffered();
      break;
    }
    done += static_cast<std::size_t>(n);
  }
  if (done < size) pwrite_all(fd_, aligned_.get() + done, size - done, on_disk_ + done, destination_);
  on_disk_ += size;
  aligned_used_ = 0;
  if (direct_fd_ < 0 && ::lseek(fd_, static_cast<off_t>(on_disk_), SEEK_SET) < 0) fail_io(destination_, "seek", errno);
}

void AtomicFile::fall_back_to_buffered() {
  ::close(direct_fd_);
  direct_fd_ = -1;
}

void AtomicFile::flush() {
  if (direct_fd_ >= 0) return;  // direct mode writes whole buffers; commit writes the partial last one
  if (buffer_.empty()) return;
  write_all(fd_, reinterpret_cast<const std::uint8_t*>(buffer_.data()), buffer_.size(), destination_);
  on_disk_ += buffer_.size();
  buffer_.clear();
  start_writeback();
}

void AtomicFile::start_writeback() {
  if (on_disk_ - written_back_ < kWritebackStep) return;
  // A hint: failure changes nothing, commit's fsync still makes everything durable.
  ::sync_file_range(fd_, static_cast<off64_t>(written_back_), static_cast<off64_t>(on_disk_ - written_back_),
                    SYNC_FILE_RANGE_WRITE);
  written_back_ = on_disk_;
}

void AtomicFile::write(std::span<const std::uint8_t> bytes) {
  // Direct mode until the file system refuses it, then the page cache for the rest.
  while (!bytes.empty() && direct_fd_ >= 0) {
    const std::size_t n = std::min(bytes.size(), kDirectBufferSize - aligned_used_);
    std::memcpy(aligned_.get() + aligned_used_, bytes.data(), n);
    aligned_used_ += n;
    position_ += n;
    bytes = bytes.subspan(n);
    if (aligned_used_ == kDirectBufferSize) write_direct(kDirectBufferSize);
  }
  if (bytes.empty() || direct_fd_ >= 0) return;
  position_ += bytes.size();
  if (buffer_.size() + bytes.size() <= kBufferSize) {
    buffer_.append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    return;
  }
  flush();
  if (bytes.size() >= kBufferSize) {
    write_all(fd_, bytes.data(), bytes.size(), destination_);
    on_disk_ += bytes.size();
    start_writeback();
  } else {
    buffer_.append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  }
}

void AtomicFile::copy_from(const ReadOnlyFile& source, std::uint64_t offset, std::uint64_t length) {
  if (offset > source.size() || length > source.size() - offset) {
    throw Error(ErrorKind::corrupt, source.path(), "byte " + std::to_string(offset), "copy past the end of the file");
  }
  // Direct mode copies through the aligned buffer (the kernel's copy would go through the page cache).
  while (length > 0 && direct_fd_ >= 0) {
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(length, kDirectBufferSize - aligned_used_));
    source.read_at(offset, {aligned_.get() + aligned_used_, n});
    aligned_used_ += n;
    position_ += n;
    offset += n;
    length -= n;
    if (aligned_used_ == kDirectBufferSize) write_direct(kDirectBufferSize);
  }
  flush();
  bool kernel_copy = true;
  while (length > 0) {
    if (kernel_copy) {
      loff_t in = static_cast<loff_t>(offset);
      ssize_t n = ::copy_file_range(source.fd(), &in, fd_, nullptr,
                                    static_cast<std::size_t>(std::min<std::uint64_t>(length, 1u << 30)), 0);
      if (n > 0) {
        offset += static_cast<std::uint64_t>(n);
        length -= static_cast<std::uint64_t>(n);
        position_ += static_cast<std::uint64_t>(n);
        on_disk_ += static_cast<std::uint64_t>(n);
        start_writeback();
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno != EXDEV && errno != EINVAL && errno != ENOSYS && errno != EOPNOTSUPP)
        fail_io(destination_, "copy", errno);
      kernel_copy = false;  // not supported between these files, or the source shrank: fall back to read/write
      if (n == 0) fail_shrank(source.path(), "byte " + std::to_string(offset));
    }
    std::vector<std::uint8_t> chunk(static_cast<std::size_t>(std::min<std::uint64_t>(length, kBufferSize)));
    source.read_at(offset, chunk);
    write_all(fd_, chunk.data(), chunk.size(), destination_);
    offset += chunk.size();
    length -= chunk.size();
    position_ += chunk.size();
    on_disk_ += chunk.size();
    start_writeback();
  }
}

void AtomicFile::commit() {
  if (direct_fd_ >= 0 && aligned_used_ > 0) {
    // The tail padded to the alignment, then the file cut back to its length.
    const std::size_t used = aligned_used_;
    const std::size_t padded = (used + kDirectAlignment - 1) / kDirectAlignment * kDirectAlignment;
    std::memset(aligned_.get() + used, 0, padded - used);
    write_direct(padded);
    on_disk_ -= padded - used;
  }
  flush();
  // Cuts the padded tail back (only direct mode pads).
  if (aligned_ && ::ftruncate(fd_, static_cast<off_t>(position_)) != 0) fail_io(destination_, "truncate", errno);
  if (durable_ && ::fsync(fd_) != 0) fail_io(destination_, "fsync", errno);
  if (direct_fd_ >= 0) {
    ::close(direct_fd_);
    direct_fd_ = -1;
  }
  if (::close(fd_) != 0) {
    fd_ = -1;
    fail_io(destination_, "close", errno);
  }
  fd_ = -1;
  ensure_no_mapped_file_shrank();
  if (durable_) {
    fs_util::durable_rename(temp_, destination_);
  } else if (::rename(temp_.c_str(), destination_.c_str()) != 0) {
    fail_io(destination_, "rename", errno);
  }
  committed_ = true;
}

}  // namespace ckpt
