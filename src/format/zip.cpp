#include "format/zip.hpp"

#include <algorithm>
#include <array>

#include "util/byte_reader.hpp"
#include "util/crc32.hpp"
#include "util/error.hpp"

namespace ckpt::zip {
namespace {

constexpr std::size_t kEndSize = 22;
constexpr std::size_t kCentralFixedSize = 46;
constexpr std::size_t kLocalFixedSize = 30;
constexpr std::uint32_t kAllOnes32 = 0xFFFFFFFFu;

std::string offset_where(std::uint64_t offset) { return "byte " + std::to_string(offset); }

// The end record: the last "PK\5\6" whose comment length reaches exactly to the end of the file, or failing
// that the last one whose fixed part fits (some writers pad after the comment).
std::size_t find_end_record(std::span<const std::uint8_t> file) {
  if (file.size() < kEndSize) fail_corrupt(offset_where(0), "too short for a zip archive (no end record)");
  std::size_t lowest = file.size() > kEndSize + 0xFFFF ? file.size() - kEndSize - 0xFFFF : 0;
  std::optional<std::size_t> loose;
  for (std::size_t pos = file.size() - kEndSize + 1; pos-- > lowest;) {
    const std::uint32_t signature =
        file[pos] | (file[pos + 1] << 8) | (file[pos + 2] << 16) | (std::uint32_t{file[pos + 3]} << 24);
    if (signature != kEndSig) continue;
    std::size_t comment_len = file[pos + 20] | (file[pos + 21] << 8);
    if (pos + kEndSize + comment_len == file.size()) return pos;
    if (!loose) loose = pos;
  }
  if (loose) return *loose;
  fail_corrupt(offset_where(file.size()), "no zip end-of-central-directory record (truncated file?)");
}

struct Directory {
  std::uint64_t count = 0;
  std::uint64_t size = 0;
  std::uint64_t offset = 0;
  std::uint64_t end_of_directory = 0;  // where the directory really ends: the first end record's position
};

Directory read_directory_location(std::span<const std::uint8_t> file, std::size_t end_pos) {
  ByteReader end(file, "the zip end record");
  end.seek(end_pos + 4);
  end.u16le();  // disk
  end.u16le();  // disk with the directory
  end.u16le();  // entries on this disk
  Directory dir;
  dir.count = end.u16le();
  dir.size = end.u32le();
  dir.offset = end.u32le();
  dir.end_of_directory = end_pos;

  // A zip64 locator sits right before the end record when any field overflowed (torch always writes one).
  if (end_pos >= 20) {
    ByteReader loc(file, "the zip64 locator");
    loc.seek(end_pos - 20);
    if (loc.u32le() == kZip64LocatorSig) {
      loc.u32le();
      std::uint64_t declared = loc.u64le();
      // The zip64 end record is 56 bytes and directly precedes the locator; trust its position over the
      // declared offset so prefixed archives work, but require the signature.
      if (end_pos < 20 + 56) fail_corrupt(offset_where(end_pos - 20), "zip64 locator without a zip64 end record");
      std::size_t z64_pos = end_pos - 20 - 56;
      ByteReader z(file, "the zip64 end record");
      z.seek(z64_pos);
      if (z.u32le() != kZip64EndSig) {
        fail_corrupt(offset_where(declared), "zip64 locator points to no zip64 end record");
      }
      z.u64le();
      z.u16le();
      z.u16le();
      z.u32le();
      z.u32le();
      z.u64le();
      std::uint64_t count = z.u64le();
      std::uint64_t size = z.u64le();
      std::uint64_t offset = z.u64le();
      if (dir.count == 0xFFFF || dir.count == count) dir.count = count;
      if (dir.size == kAllOnes32 || dir.size == size) dir.size = size;
      if (dir.offset == kAllOnes32 || dir.offset == offset) dir.offset = offset;
      dir.end_of_directory = z64_pos;
    }
  }
  return dir;
}

}  // namespace

bool looks_like_zip(std::span<const std::uint8_t> file) {
  return file.size() >= 4 && file[0] == 'P' && file[1] == 'K' && file[2] == 3 && file[3] == 4;
}

Archive::Archive(std::span<const std::uint8_t> file, const ReadAt& read_at) : file_(file) {
  std::size_t end_pos = find_end_record(file);
  Directory dir = read_directory_location(file, end_pos);

  // Bytes in front of the archive shift every recorded offset by the same amount.
  std::uint64_t recorded_end = 0;
  if (!checked_add(dir.offset, dir.size, recorded_end) || recorded_end > dir.end_of_directory) {
    fail_corrupt(offset_where(end_pos), "central directory (offset " + std::to_string(dir.offset) + ", size " +
                                            std::to_string(dir.size) + ") does not fit before the end record");
  }
  const std::uint64_t shift = dir.end_of_directory - recorded_end;
  const std::uint64_t cd_start = dir.offset + shift;
  if (dir.count > dir.size / kCentralFixedSize) {
    fail_corrupt(offset_where(end_pos),
                 "declares " + std::to_string(dir.count) + " entries, more than its central directory can hold");
  }

  ByteReader cd(file.subspan(0, static_cast<std::size_t>(cd_start + dir.size)), "the central directory");
  cd.seek(static_cast<std::size_t>(cd_start));
  entries_.reserve(static_cast<std::size_t>(dir.count));
  for (std::uint64_t i = 0; i < dir.count; ++i) {
    const std::size_t at = cd.position();
    if (cd.u32le() != kCentralSig) cd.fail_at(at, "expected a central directory entry (PK\\1\\2)");
    cd.u16le();
    cd.u16le();
    cd.u16le();  // flags
    Entry e;
    e.method = cd.u16le();
    cd.u16le();
    cd.u16le();
    e.crc32 = cd.u32le();
    e.compressed_size = cd.u32le();
    e.size = cd.u32le();
    std::uint16_t name_len = cd.u16le();
    std::uint16_t extra_len = cd.u16le();
    std::uint16_t comment_len = cd.u16le();
    cd.u16le();
    cd.u16le();
    cd.u32le();
    e.header_offset = cd.u32le();
    e.name = std::string(cd.take_chars(name_len));
    ByteReader extra(cd.take(extra_len), "the extra field of '" + e.name + "'", cd.absolute(cd.position() - extra_len));
    while (extra.remaining() >= 4) {
      std::uint16_t id = extra.u16le();
      std::uint16_t len = extra.u16le();
      ByteReader field(extra.take(len), "the zip64 extra field of '" + e.name + "'");
      if (id != 1) continue;
      if (e.size == kAllOnes32) e.size = field.u64le();
      if (e.compressed_size == kAllOnes32) e.compressed_size = field.u64le();
      if (e.header_offset == kAllOnes32) e.header_offset = field.u64le();
    }
    cd.take(comment_len);

    if (by_name_.count(e.name) != 0) fail_corrupt("member '" + e.name + "'", "appears twice in the zip directory");
    std::uint64_t header = 0;
    if (!checked_add(e.header_offset, shift, header) || header > cd_start) {
      fail_corrupt("member '" + e.name + "'",
                   "local header offset " + std::to_string(e.header_offset) + " lies outside the archive");
    }
    e.header_offset = header;
    std::array<std::uint8_t, kLocalFixedSize> fixed{};
    if (header + kLocalFixedSize > cd_start) {
      fail_corrupt("member '" + e.name + "'",
                   "local header at byte " + std::to_string(header) + " runs into the directory");
    }
    if (read_at) {
      read_at(header, fixed);
    } else {
      std::copy_n(file.begin() + static_cast<std::ptrdiff_t>(header), kLocalFixedSize, fixed.begin());
    }
    ByteReader local(fixed, "the local header of '" + e.name + "'", header);
    if (local.u32le() != kLocalSig) local.fail_at(0, "expected a local header (PK\\3\\4) for '" + e.name + "'");
    local.take(22);
    const std::uint64_t local_name_len = local.u16le();
    const std::uint64_t local_extra_len = local.u16le();
    e.data_offset = header + kLocalFixedSize + local_name_len + local_extra_len;
    std::uint64_t data_end = 0;
    if (!checked_add(e.data_offset, e.compressed_size, data_end) || data_end > cd_start) {
      fail_corrupt("member '" + e.name + "'", std::to_string(e.compressed_size) + " bytes of data at byte " +
                                                  std::to_string(e.data_offset) + " run past the archive");
    }
    if (e.method == 0 && e.compressed_size != e.size) {
      fail_corrupt("member '" + e.name + "'", "stored member with different compressed and plain sizes");
    }
    by_name_.emplace(e.name, entries_.size());
    entries_.push_back(std::move(e));
  }
}

const Entry* Archive::find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &entries_[it->second];
}

std::span<const std::uint8_t> Archive::data(const Entry& entry) const {
  if (entry.method != 0) {
    fail(ErrorKind::unsupported, "member '" + entry.name + "'",
         "compressed with zip method " + std::to_string(entry.method) + " (torch.save stores members uncompressed)");
  }
  return file_.subspan(static_cast<std::size_t>(entry.data_offset), static_cast<std::size_t>(entry.size));
}

bool Archive::crc_matches(const Entry& entry) const { return crc32(data(entry)) == entry.crc32; }

}  // namespace ckpt::zip
