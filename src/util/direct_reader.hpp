// Bulk reads that bypass the page cache: O_DIRECT into an aligned buffer, copied out. For loading a checkpoint's
// gigabytes once (resume), where allocating page-cache pages costs about as much as the disk read itself and
// would evict what the machine keeps cached. Where the file system refuses O_DIRECT, plain pread.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "util/mapped_file.hpp"

namespace ckpt {

class DirectReader {
 public:
  // Reads `file` (kept open by the caller for the reader's life): the O_DIRECT descriptor is opened through
  // /proc/self/fd, so it is the same inode even if the path has since been replaced.
  explicit DirectReader(const ReadOnlyFile& file);
  ~DirectReader();
  DirectReader(const DirectReader&) = delete;
  DirectReader& operator=(const DirectReader&) = delete;

  // Fills `out` from `offset`. Throws corrupt when past the end, io on a read error.
  void read_at(std::uint64_t offset, std::span<std::uint8_t> out);

 private:
  const ReadOnlyFile& file_;
  int direct_fd_ = -1;
  struct FreeAligned {
    void operator()(std::uint8_t* p) const;
  };
  std::unique_ptr<std::uint8_t[], FreeAligned> buffer_;
};

}  // namespace ckpt
