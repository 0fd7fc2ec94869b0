// A read-only memory map of a whole file. Tensor bytes are handed out as views into it, so reading metadata
// never copies tensor data and the kernel pages in only what is touched.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

namespace ckpt {

class MappedFile {
 public:
  // Throws Error (not_found, io) naming `path`. An empty file maps to an empty span.
  explicit MappedFile(std::string path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;

  std::span<const std::uint8_t> bytes() const { return {data_, size_}; }

  // Copies bytes with pread instead of touching the map: for small reads scattered over a large file, a page
  // fault each (with the kernel's fault-around) costs ~10x a pread. Throws corrupt when past the end.
  void read_at(std::uint64_t offset, std::span<std::uint8_t> out) const;
  std::size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  void release();

  std::string path_;
  int fd_ = -1;
  const std::uint8_t* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace ckpt
