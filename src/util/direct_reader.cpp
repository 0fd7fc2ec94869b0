#include "util/direct_reader.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <new>

#include "util/error.hpp"

namespace ckpt {
namespace {
constexpr std::uint64_t kAlignment = 4096;
constexpr std::size_t kBufferSize = 8u << 20;
}  // namespace

void DirectReader::FreeAligned::operator()(std::uint8_t* p) const { std::free(p); }

DirectReader::DirectReader(const ReadOnlyFile& file)
    : file_(file), page_size_(static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE))) {
  void* p = std::aligned_alloc(2u << 20, kBufferSize);
  if (!p) throw std::bad_alloc();
  ::madvise(p, kBufferSize, MADV_HUGEPAGE);
  buffer_.reset(static_cast<std::uint8_t*>(p));
  direct_fd_ = ::open(("/proc/self/fd/" + std::to_string(file.fd())).c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
  // Which pages the cache holds now. A map and mincore touch no page; without an answer, all read direct.
  if (direct_fd_ >= 0 && file.size() > 0) {
    void* map = ::mmap(nullptr, static_cast<std::size_t>(file.size()), PROT_READ, MAP_SHARED, file.fd(), 0);
    if (map != MAP_FAILED) {
      resident_.resize(static_cast<std::size_t>((file.size() + page_size_ - 1) / page_size_));
      if (::mincore(map, static_cast<std::size_t>(file.size()), resident_.data()) != 0) resident_.clear();
      ::munmap(map, static_cast<std::size_t>(file.size()));
    }
  }
}

DirectReader::~DirectReader() {
  if (direct_fd_ >= 0) ::close(direct_fd_);
}

void DirectReader::read_at(std::uint64_t offset, std::span<std::uint8_t> out) {
  if (offset > file_.size() || out.size() > file_.size() - offset) {
    throw Error(ErrorKind::corrupt, file_.path(), "byte " + std::to_string(offset), "read past the end of the file");
  }
  while (!out.empty() && direct_fd_ >= 0) {
    const std::uint64_t page = offset / page_size_;
    if (page < resident_.size() && (resident_[page] & 1)) {
      // Cached: plain reads of the cached pages from here, straight into the destination.
      std::uint64_t end_page = page;
      while (end_page < resident_.size() && (resident_[end_page] & 1)) ++end_page;
      const std::size_t length =
          static_cast<std::size_t>(std::min<std::uint64_t>(out.size(), end_page * page_size_ - offset));
      file_.read_at(offset, out.first(length));
      out = out.subspan(length);
      offset += length;
      continue;
    }
    // Not cached: one direct read from here, at most the buffer (it may take cached pages along, harmlessly).
    const std::uint64_t start = offset / kAlignment * kAlignment;
    const std::size_t skip = static_cast<std::size_t>(offset - start);
    const std::size_t want = static_cast<std::size_t>(
        std::min<std::uint64_t>(kBufferSize, (skip + out.size() + kAlignment - 1) / kAlignment * kAlignment));
    const ssize_t n = ::pread(direct_fd_, buffer_.get(), want, static_cast<off_t>(start));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EINVAL) {  // refused after all: plain reads for the rest
      ::close(direct_fd_);
      direct_fd_ = -1;
      break;
    }
    if (n < 0) fail_io(file_.path(), "read", errno);
    if (static_cast<std::size_t>(n) <= skip) fail_shrank(file_.path(), "byte " + std::to_string(offset));
    const std::size_t got = std::min(static_cast<std::size_t>(n) - skip, out.size());
    std::memcpy(out.data(), buffer_.get() + skip, got);
    out = out.subspan(got);
    offset += got;
  }
  if (!out.empty()) file_.read_at(offset, out);
}

}  // namespace ckpt
