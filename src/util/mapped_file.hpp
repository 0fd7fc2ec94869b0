// Read-only access to files: plain reads at offsets, and a memory map of the whole file. Tensor bytes are
// handed out as views into the map, so reading metadata never copies tensor data and the kernel pages in only
// what is touched.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include <sys/types.h>

namespace ckpt {

// "a FIFO", "a socket", "a character device", ...: for messages about a file that is not a regular one.
const char* file_type_name(mode_t mode);

class ReadOnlyFile {
 public:
  // Throws Error (not_found, io; invalid_argument for a directory; unsupported, "not a regular file", for a
  // FIFO, socket or device). Never blocks on one: it is opened O_NONBLOCK and its type checked with fstat before
  // anything is read, so a FIFO where a checkpoint file belongs is an error, not a hang.
  explicit ReadOnlyFile(std::string path);
  ~ReadOnlyFile();
  ReadOnlyFile(const ReadOnlyFile&) = delete;
  ReadOnlyFile& operator=(const ReadOnlyFile&) = delete;
  ReadOnlyFile(ReadOnlyFile&& other) noexcept;
  ReadOnlyFile& operator=(ReadOnlyFile&& other) noexcept;

  const std::string& path() const { return path_; }
  std::uint64_t size() const { return size_; }
  int fd() const { return fd_; }

  // Fills `out` from `offset` with pread: for small reads scattered over a large file, a page fault each
  // through a map (with the kernel's fault-around) costs ~10x a pread. Throws corrupt when past the end.
  void read_at(std::uint64_t offset, std::span<std::uint8_t> out) const;

 private:
  std::string path_;
  int fd_ = -1;
  std::uint64_t size_ = 0;
};

// A map of the whole file. When the file shrinks while mapped (another process truncates or rewrites it in
// place), reading past its new end would raise SIGBUS: a handler installed with the first map replaces the
// vanished pages with zeros, so nothing crashes, and records the file (the lost tail of a last page reads as
// zeros without a fault: the file's size is checked too). Whatever was read from it may then be
// wrong: AtomicFile and build_directory refuse to commit after that, and the CLI reports it as the error.
class MappedFile {
 public:
  explicit MappedFile(std::string path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;

  std::span<const std::uint8_t> bytes() const { return {data_, size_}; }
  std::size_t size() const { return size_; }
  const std::string& path() const { return file_.path(); }
  const ReadOnlyFile& file() const { return file_; }
  void read_at(std::uint64_t offset, std::span<std::uint8_t> out) const { file_.read_at(offset, out); }

 private:
  void release();

  ReadOnlyFile file_;
  const std::uint8_t* data_ = nullptr;
  std::size_t size_ = 0;
  int slot_ = -1;  // this map's entry in the table the SIGBUS handler searches
};

// Throws Error (io) naming a file that shrank while this process had it mapped (reads of the lost part gave
// zeros), live or already unmapped: called before anything derived from mapped input is committed. Once a file
// has shrunk it throws for the rest of the process.
void ensure_no_mapped_file_shrank();

}  // namespace ckpt
