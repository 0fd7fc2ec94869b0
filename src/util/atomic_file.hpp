// Writing a file so that it appears complete or not at all: the bytes go to a temporary file beside the
// destination, and commit() fsyncs it, renames it over the destination and fsyncs the directory. Destroying an
// AtomicFile that was not committed removes the temporary file; a destructor never commits.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "util/mapped_file.hpp"

namespace ckpt {

class AtomicFile {
 public:
  explicit AtomicFile(std::string destination);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(std::span<const std::uint8_t> bytes);
  void write(std::string_view text) { write({reinterpret_cast<const std::uint8_t*>(text.data()), text.size()}); }
  // Appends `length` bytes of `source` from `offset`, in the kernel when it can (copy_file_range), so large
  // copies neither pass through user memory nor grow this process's resident set.
  void copy_from(const ReadOnlyFile& source, std::uint64_t offset, std::uint64_t length);

  std::uint64_t position() const { return position_; }
  const std::string& destination() const { return destination_; }
  const std::string& temporary_path() const { return temp_; }

  // Makes the file durable under its final name. Throws Error (io) naming the destination.
  void commit();

 private:
  void flush();
  // Starts writing back what has accumulated, so that commit's fsync overlaps with the copying instead of
  // following it.
  void start_writeback();

  std::string destination_;
  std::string temp_;
  int fd_ = -1;
  std::uint64_t position_ = 0;
  std::uint64_t on_disk_ = 0;       // bytes handed to the kernel (position_ less what is buffered)
  std::uint64_t written_back_ = 0;  // bytes whose writeback was started
  std::string buffer_;  // small writes are gathered here; large ones go straight through
  bool committed_ = false;
};

}  // namespace ckpt
