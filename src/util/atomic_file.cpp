#include "util/atomic_file.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <vector>

#include "util/error.hpp"
#include "util/fs.hpp"

namespace ckpt {
namespace {

constexpr std::size_t kBufferSize = 1u << 20;
constexpr std::uint64_t kWritebackStep = 64u << 20;

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

AtomicFile::AtomicFile(std::string destination) : destination_(std::move(destination)) {
  const std::filesystem::path dest(destination_);
  temp_ = (dest.parent_path() / ("." + dest.filename().string() + ".tmp-" + fs_util::unique_suffix())).string();
  fd_ = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd_ < 0) fail_io(temp_, "create", errno);
  buffer_.reserve(kBufferSize);
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(temp_.c_str());
}

void AtomicFile::flush() {
  if (buffer_.empty()) return;
  write_all(fd_, reinterpret_cast<const std::uint8_t*>(buffer_.data()), buffer_.size(), destination_);
  on_disk_ += buffer_.size();
  buffer_.clear();
  start_writeback();
}

void AtomicFile::start_writeback() {
  if (on_disk_ - written_back_ < kWritebackStep) return;
  // A hint: failure changes nothing, commit's fsync still makes everything durable.
  ::sync_file_range(fd_, static_cast<off64_t>(written_back_), static_cast<off64_t>(on_disk_ - written_back_), SYNC_FILE_RANGE_WRITE);
  written_back_ = on_disk_;
}

void AtomicFile::write(std::span<const std::uint8_t> bytes) {
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
  flush();
  bool kernel_copy = true;
  while (length > 0) {
    if (kernel_copy) {
      loff_t in = static_cast<loff_t>(offset);
      ssize_t n = ::copy_file_range(source.fd(), &in, fd_, nullptr, static_cast<std::size_t>(std::min<std::uint64_t>(length, 1u << 30)), 0);
      if (n > 0) {
        offset += static_cast<std::uint64_t>(n);
        length -= static_cast<std::uint64_t>(n);
        position_ += static_cast<std::uint64_t>(n);
        on_disk_ += static_cast<std::uint64_t>(n);
        start_writeback();
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno != EXDEV && errno != EINVAL && errno != ENOSYS && errno != EOPNOTSUPP) fail_io(destination_, "copy", errno);
      kernel_copy = false;  // not supported between these files, or the source shrank: fall back to read/write
      if (n == 0) throw Error(ErrorKind::corrupt, source.path(), "byte " + std::to_string(offset), "file shrank while copying");
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
  flush();
  if (::fsync(fd_) != 0) fail_io(destination_, "fsync", errno);
  if (::close(fd_) != 0) {
    fd_ = -1;
    fail_io(destination_, "close", errno);
  }
  fd_ = -1;
  fs_util::durable_rename(temp_, destination_);
  committed_ = true;
}

}  // namespace ckpt
