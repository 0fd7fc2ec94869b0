// Writing a file so that it appears complete or not at all: the bytes go to a temporary file beside the
// destination, and commit() fsyncs it, renames it over the destination and fsyncs the directory. Destroying an
// AtomicFile that was not committed removes the temporary file; a destructor never commits.
//
// WriteOptions::direct is for large files written from memory (the trainer's checkpoints): bytes are gathered
// in an aligned buffer and written with O_DIRECT, bypassing the page cache, whose page allocation and copying
// cost more than the disk write itself; the tail is padded to the block size and the file truncated back.
// Where the file system refuses O_DIRECT (tmpfs) the file is written buffered instead.
// WriteOptions::durable false makes commit() only rename: the caller fsyncs the file (fs_util::fsync_files)
// and its directory later, for files written into a staging directory that becomes visible only when renamed
// whole, after every file in it is durable. Their fsyncs then overlap instead of each waiting its turn.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "util/mapped_file.hpp"

namespace ckpt {

struct WriteOptions {
  bool direct = false;
  bool durable = true;
};

class AtomicFile {
 public:
  explicit AtomicFile(std::string destination, WriteOptions options = {});
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
  // Direct mode: writes the aligned buffer's first `size` bytes (a multiple of the alignment) at on_disk_.
  void write_direct(std::size_t size);
  // Leaves direct mode for the rest of the file (the file system refused an O_DIRECT write); the caller
  // writes what is left of the buffer through the page cache.
  void fall_back_to_buffered();
  // Starts writing back what has accumulated, so that commit's fsync overlaps with the copying instead of
  // following it.
  void start_writeback();

  std::string destination_;
  std::string temp_;
  int fd_ = -1;
  std::uint64_t position_ = 0;
  std::uint64_t on_disk_ = 0;       // bytes handed to the kernel (position_ less what is buffered)
  std::uint64_t written_back_ = 0;  // bytes whose writeback was started
  std::string buffer_;              // small writes are gathered here; large ones go straight through
  bool committed_ = false;
  bool durable_ = true;
  int direct_fd_ = -1;  // the temporary file opened with O_DIRECT, in direct mode
  struct FreeAligned {
    void operator()(std::uint8_t* p) const;
  };
  std::unique_ptr<std::uint8_t[], FreeAligned> aligned_;  // direct mode's buffer
  std::size_t aligned_used_ = 0;
};

}  // namespace ckpt
