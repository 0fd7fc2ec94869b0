// A bounds-checked cursor over untrusted bytes. Every read checks the length against what remains first, so a
// declared size can never run past the buffer; failures throw a corrupt Error naming the byte offset.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>

#include "util/error.hpp"

namespace ckpt {

class ByteReader {
 public:
  // `base_offset` is added to positions in messages, so a reader over a zip member reports file offsets.
  ByteReader(std::span<const std::uint8_t> bytes, std::string what, std::uint64_t base_offset = 0)
      : bytes_(bytes), what_(std::move(what)), base_offset_(base_offset) {}

  std::size_t position() const { return pos_; }
  std::size_t size() const { return bytes_.size(); }
  std::size_t remaining() const { return bytes_.size() - pos_; }
  bool at_end() const { return pos_ == bytes_.size(); }
  void seek(std::size_t pos) {
    if (pos > bytes_.size()) fail_at(pos, "offset past the end of " + what_);
    pos_ = pos;
  }

  std::uint8_t u8() { return take(1)[0]; }
  std::uint16_t u16le() { return static_cast<std::uint16_t>(le(2)); }
  std::uint32_t u32le() { return static_cast<std::uint32_t>(le(4)); }
  std::uint64_t u64le() { return le(8); }
  std::int32_t i32le() { return static_cast<std::int32_t>(u32le()); }

  // Returns a view of the next `n` bytes and advances past them.
  std::span<const std::uint8_t> take(std::uint64_t n) {
    if (n > remaining()) {
      fail_at(pos_,
              "needs " + std::to_string(n) + " bytes but only " + std::to_string(remaining()) + " remain in " + what_);
    }
    auto view = bytes_.subspan(pos_, static_cast<std::size_t>(n));
    pos_ += static_cast<std::size_t>(n);
    return view;
  }
  std::string_view take_chars(std::uint64_t n) {
    auto view = take(n);
    return {reinterpret_cast<const char*>(view.data()), view.size()};
  }

  [[noreturn]] void fail_at(std::size_t pos, const std::string& message) const {
    fail_corrupt("byte " + std::to_string(base_offset_ + pos), message);
  }
  std::uint64_t absolute(std::size_t pos) const { return base_offset_ + pos; }

 private:
  std::uint64_t le(int n) {
    auto view = take(static_cast<std::uint64_t>(n));
    std::uint64_t v = 0;
    for (int i = n - 1; i >= 0; --i) v = (v << 8) | view[static_cast<std::size_t>(i)];
    return v;
  }

  std::span<const std::uint8_t> bytes_;
  std::string what_;
  std::uint64_t base_offset_;
  std::size_t pos_ = 0;
};

// Overflow-checked arithmetic for sizes read from files: false when the result does not fit.
inline bool checked_mul(std::uint64_t a, std::uint64_t b, std::uint64_t& out) {
  return !__builtin_mul_overflow(a, b, &out);
}
inline bool checked_add(std::uint64_t a, std::uint64_t b, std::uint64_t& out) {
  return !__builtin_add_overflow(a, b, &out);
}

}  // namespace ckpt
