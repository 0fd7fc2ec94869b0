#include <doctest/doctest.h>

#include <string_view>
#include <vector>

#include "util/crc32.hpp"

namespace {
std::span<const std::uint8_t> bytes_of(std::string_view s) {
  return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}
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

namespace {
// The bitwise definition, the reference for the fast paths.
std::uint32_t crc32_bitwise(std::span<const std::uint8_t> bytes) {
  std::uint32_t crc = 0xFFFFFFFFu;
  for (std::uint8_t b : bytes) {
    crc ^= b;
    for (int k = 0; k < 8; ++k) crc = (crc & 1) ? 0xEDB88320u ^ (crc >> 1) : crc >> 1;
  }
  return ~crc;
}
}  // namespace

TEST_CASE("crc32's folded path equals the bitwise definition at every length, offset and split") {
  std::vector<std::uint8_t> data(5000);
  std::uint32_t x = 12345;
  for (auto& b : data) b = static_cast<std::uint8_t>((x = x * 1103515245u + 12345u) >> 16);
  for (std::size_t offset : {0, 1, 7, 15}) {
    for (std::size_t length = 0; length + offset <= 700; ++length) {
      const std::span<const std::uint8_t> part(data.data() + offset, length);
      REQUIRE(ckpt::crc32(part) == crc32_bitwise(part));
    }
  }
  const std::span<const std::uint8_t> all(data);
  for (std::size_t split : {0, 1, 63, 64, 65, 1000, 4999}) {
    CHECK(ckpt::crc32(all.subspan(split), ckpt::crc32(all.first(split))) == crc32_bitwise(all));
  }
  std::vector<std::uint8_t> ones(1 << 16, 0xFF);
  CHECK(ckpt::crc32(ones) == crc32_bitwise(ones));
}
