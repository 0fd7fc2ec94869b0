// CRC-32 (IEEE 802.3, the zip polynomial), slicing-by-8: fast enough that `--verify` runs near memory speed.
#pragma once

#include <cstdint>
#include <span>

namespace ckpt {

// Continues a running CRC: crc32(b, crc32(a)) == crc32(a ++ b). Start with 0.
std::uint32_t crc32(std::span<const std::uint8_t> bytes, std::uint32_t crc = 0);

}  // namespace ckpt
