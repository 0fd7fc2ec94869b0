// CRC-32 (IEEE 802.3, the zip polynomial): carry-less multiplication folding where the CPU has PCLMULQDQ (every
// x86-64 since 2010), slicing-by-8 otherwise and for the last bytes.
#pragma once

#include <cstdint>
#include <span>

namespace ckpt {

// Continues a running CRC: crc32(b, crc32(a)) == crc32(a ++ b). Start with 0.
std::uint32_t crc32(std::span<const std::uint8_t> bytes, std::uint32_t crc = 0);

}  // namespace ckpt
