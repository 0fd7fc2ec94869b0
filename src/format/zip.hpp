// Reading zip archives as torch.save writes them (and as other zip writers might), from a memory-mapped file.
//
// Grammar (all integers little-endian; only what we read is named):
//   file        = [any prefix bytes] local_entry* central_entry* [zip64_end zip64_locator] end [comment]
//   local_entry = "PK\3\4" u16 version u16 flags u16 method u16 time u16 date u32 crc u32 csize u32 usize
//                 u16 name_len u16 extra_len name extra data [descriptor]
//   descriptor  = ["PK\7\8"] u32 crc (u32|u64) csize (u32|u64) usize      ; after data when flags & 8
//   central_entry = "PK\1\2" u16 made_by u16 version u16 flags u16 method u16 time u16 date u32 crc
//                 u32 csize u32 usize u16 name_len u16 extra_len u16 comment_len u16 disk u16 int_attr
//                 u32 ext_attr u32 local_offset name extra comment
//   extra       = (u16 id u16 len bytes[len])*   ; id 1 (zip64): u64 usize, u64 csize, u64 local_offset, u32
//                                                ; disk, each present only when its 32-bit field is all ones
//   zip64_end   = "PK\6\6" u64 size u16 made_by u16 version u32 disk u32 cd_disk u64 n_disk u64 n_total
//                 u64 cd_size u64 cd_offset ...
//   zip64_locator = "PK\6\7" u32 disk u64 zip64_end_offset u32 disks
//   end         = "PK\5\6" u16 disk u16 cd_disk u16 n_disk u16 n_total u32 cd_size u32 cd_offset u16 comment_len
// The central directory is authoritative (torch writes zero sizes in local headers). When bytes precede the
// archive, every offset is shifted by the same amount, recovered from where the end record really is.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

namespace ckpt::zip {

// The records' signatures ("PK\3\4", ...) as little-endian u32s, shared by the reader and the writer (zip_writer).
inline constexpr std::uint32_t kLocalSig = 0x04034b50;
inline constexpr std::uint32_t kDescriptorSig = 0x08074b50;
inline constexpr std::uint32_t kCentralSig = 0x02014b50;
inline constexpr std::uint32_t kEndSig = 0x06054b50;
inline constexpr std::uint32_t kZip64EndSig = 0x06064b50;
inline constexpr std::uint32_t kZip64LocatorSig = 0x07064b50;

struct Entry {
  std::string name;
  std::uint16_t method = 0;  // 0 stored; anything else we refuse to read (torch never compresses)
  std::uint32_t crc32 = 0;
  std::uint64_t compressed_size = 0;
  std::uint64_t size = 0;
  std::uint64_t header_offset = 0;  // of the local header, in file offsets
  std::uint64_t data_offset = 0;    // of the first data byte, in file offsets
};

// Copies `out.size()` bytes at `offset` of the file. The local headers are scattered over the whole file; read
// through a memory map each costs a page fault (~25 us on this project's machines, most of `inspect`'s time on
// a large file), so a reader of a mapped file passes pread here.
using ReadAt = std::function<void(std::uint64_t offset, std::span<std::uint8_t> out)>;

class Archive {
 public:
  // Parses the central directory and every local header (through `read_at` when given, else from `file`).
  // Throws corrupt Error with a byte offset or member.
  explicit Archive(std::span<const std::uint8_t> file, const ReadAt& read_at = {});

  const std::vector<Entry>& entries() const { return entries_; }
  const Entry* find(const std::string& name) const;

  // The stored bytes of `entry`, a view into the file. Throws unsupported for compressed members.
  std::span<const std::uint8_t> data(const Entry& entry) const;

  // Recomputes the member's CRC-32 and compares it with the central directory's.
  bool crc_matches(const Entry& entry) const;

 private:
  std::span<const std::uint8_t> file_;
  std::vector<Entry> entries_;
  std::unordered_map<std::string, std::size_t> by_name_;
};

// True when the bytes start like a zip local header.
bool looks_like_zip(std::span<const std::uint8_t> file);

}  // namespace ckpt::zip
