// Writing zip archives the way torch.save does, so that Python's torch.load (and zipfile) read them:
// members stored uncompressed, each member's data starting on a 64-byte boundary (an 'FB' extra field of 'Z'
// padding in the local header), local headers with zero CRC and sizes followed by a data descriptor, the real
// values in the central directory, and always a zip64 end record and locator. See format/zip.hpp's grammar.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "util/atomic_file.hpp"
#include "util/mapped_file.hpp"

namespace ckpt::zip {

class Writer {
 public:
  explicit Writer(AtomicFile& out) : out_(out) {}

  // A member written whole.
  void add(const std::string& name, std::span<const std::uint8_t> data);
  void add(const std::string& name, std::string_view text) {
    add(name, {reinterpret_cast<const std::uint8_t*>(text.data()), text.size()});
  }

  // A member written in pieces, CRC computed as it goes.
  void begin(const std::string& name);
  void append(std::span<const std::uint8_t> data);
  // Appends a range of another file; its bytes pass through a bounded buffer for the CRC.
  void append_file_range(const ReadOnlyFile& source, std::uint64_t offset, std::uint64_t length);
  void end();

  // Writes the central directory and end records. No member may be added afterwards.
  void finish();

 private:
  struct Member {
    std::string name;
    std::uint64_t header_offset = 0;
    std::uint64_t size = 0;
    std::uint32_t crc = 0;
  };

  AtomicFile& out_;
  std::vector<Member> members_;
  bool open_ = false;
};

}  // namespace ckpt::zip
