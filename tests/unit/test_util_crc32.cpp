#include <doctest/doctest.h>

#include <string_view>

#include "util/crc32.hpp"

namespace {
std::span<const std::uint8_t> bytes_of(std::string_view s) { return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()}; }
}  // namespace

TEST_CASE("crc32 matches the standard check value and continues across chunks") {
  // "123456789" -> 0xCBF43926 is the CRC-32/ISO-HDLC check value (zlib's crc32).
  CHECK(ckpt::crc32(bytes_of("123456789")) == 0xCBF43926u);
  CHECK(ckpt::crc32(bytes_of("")) == 0u);
  const std::string_view text = "The quick brown fox jumps over the lazy dog";
  CHECK(ckpt::crc32(bytes_of(text)) == 0x414FA339u);
  for (std::size_t split = 0; split <= text.size(); ++split) {
    CHECK(ckpt::crc32(bytes_of(text.substr(split)), ckpt::crc32(bytes_of(text.substr(0, split)))) == 0x414FA339u);
  }
}
