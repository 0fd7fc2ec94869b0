// An order-0 entropy coder for bytes (range asymmetric numeral systems, four interleaved states), for the byte
// planes of archives whose symbols are skewed but not repetitive: a float's exponent byte carries about two bits
// of information, which zstd's fast levels code in 2.6 (their matches cost more than they save) and this coder in
// 2.0. One block encodes one plane whose length the caller knows.
//
// Grammar (integers little-endian):
//   block  = count:u16 (symbol:u8 frequency:u16){count} state:u32 x4 byte*
//   The frequencies (symbols strictly increasing, each at least 1) sum to 4096. Symbol i of the plane is decoded
//   from state i mod 4; every state starts at 2^16 or above, reads the next 16-bit word of the block whenever a
//   symbol takes it below 2^16, and ends at exactly 2^16 with every byte read.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <vector>

namespace ckpt::rans {

// The byte counts of `bytes`.
std::array<std::uint64_t, 256> histogram(std::span<const std::uint8_t> bytes);

// Order-0 entropy of bytes with this histogram, in bits per byte (0 for no bytes).
double entropy_bits(const std::array<std::uint64_t, 256>& counts);

// Close to the size encode() will produce for bytes with this histogram (for choosing a codec without encoding).
std::uint64_t estimated_size(const std::array<std::uint64_t, 256>& counts);

// Appends the block encoding `input` (not empty) to `out`; `counts` must be histogram(input).
void encode(std::span<const std::uint8_t> input, const std::array<std::uint64_t, 256>& counts,
            std::vector<std::uint8_t>& out);

// Decodes `block` into exactly out.size() bytes. Throws a corrupt Error for a block that is not exactly such an
// encoding.
void decode(std::span<const std::uint8_t> block, std::span<std::uint8_t> out);

}  // namespace ckpt::rans
