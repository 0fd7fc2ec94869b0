// A file that lives in memory only (a memfd), for parsers that read files by path given bytes that are in no file
// of their own (a file inside an archive). Sparse: what is never written reads as zeros and takes no memory.
#pragma once

#include <cstdint>
#include <span>
#include <string>

namespace ckpt {

class MemoryFile {
 public:
  // An empty file of `size` bytes; `name` only labels it (/proc/self/fd shows it). Throws Error (io).
  MemoryFile(const std::string& name, std::uint64_t size);
  ~MemoryFile();
  MemoryFile(const MemoryFile&) = delete;
  MemoryFile& operator=(const MemoryFile&) = delete;

  // /proc/self/fd/N: opens this file for as long as the object lives. Errors of readers name it; callers that know
  // what the bytes are rename them (Error::with_context cannot: the path is already set).
  const std::string& path() const { return path_; }
  std::uint64_t size() const { return size_; }

  // Writes `bytes` at `offset`, which the caller keeps within size(). Throws Error (io).
  void write_at(std::uint64_t offset, std::span<const std::uint8_t> bytes);

 private:
  int fd_ = -1;
  std::uint64_t size_ = 0;
  std::string path_;
};

}  // namespace ckpt
