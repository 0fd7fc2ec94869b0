// Bulk reads that take what the page cache already holds and read the rest around it: pages the cache holds
// (mincore of a map of the file, asked once when the reader is made) are read with pread straight into the
// destination, the others with O_DIRECT into an aligned buffer and copied out. For loading a checkpoint's
// gigabytes once (resume): a checkpoint just written through the cache (by torch.save, by the Trainer) loads
// at memory speed, and one on disk is read without allocating page-cache pages, which on this VM costs about as
// much as the disk read itself and would evict what the machine keeps cached. (Asking per read with preadv2's
// RWF_NOWAIT was tried: each miss starts readahead into the cache, and a cold load took 4x longer.) Where the
// file system refuses O_DIRECT, plain pread.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

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
  std::uint64_t page_size_;
  std::vector<unsigned char> resident_;  // per page of the file, whether the cache held it (bit 0)
  struct FreeAligned {
    void operator()(std::uint8_t* p) const;
  };
  std::unique_ptr<std::uint8_t[], FreeAligned> buffer_;
};

}  // namespace ckpt
