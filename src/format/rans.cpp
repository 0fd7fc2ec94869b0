#include "format/rans.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>

#include "util/error.hpp"

namespace ckpt::rans {
namespace {

constexpr std::uint32_t kScaleBits = 12;
constexpr std::uint32_t kTotal = 1u << kScaleBits;
constexpr std::uint32_t kLow = 1u << 16;  // states live in [kLow, 2^32) and move 16 bits at a time
constexpr std::size_t kStates = 4;

// Frequencies summing to kTotal, every present symbol at least 1, close to the counts' proportions.
std::array<std::uint32_t, 256> normalize(const std::array<std::uint64_t, 256>& counts) {
  std::uint64_t n = 0;
  for (auto c : counts) n += c;
  std::array<std::uint32_t, 256> freq{};
  std::uint32_t sum = 0;
  std::size_t largest = 0;
  for (std::size_t s = 0; s < 256; ++s) {
    if (counts[s] == 0) continue;
    freq[s] = std::max<std::uint32_t>(
        1, static_cast<std::uint32_t>(static_cast<double>(counts[s]) * kTotal / static_cast<double>(n)));
    sum += freq[s];
    if (counts[s] > counts[largest]) largest = s;
  }
  // Rounding leaves the sum off by a little; the most frequent symbol absorbs it, unless that would take it
  // below 1 (many rare symbols each rounded up): then the others give back, largest first.
  while (sum != kTotal) {
    if (sum < kTotal) {
      freq[largest] += kTotal - sum;
      sum = kTotal;
      break;
    }
    std::size_t donor = 0;
    for (std::size_t s = 0; s < 256; ++s) {
      if (freq[s] > freq[donor]) donor = s;
    }
    const std::uint32_t take = std::min(sum - kTotal, freq[donor] - 1);
    freq[donor] -= take;
    sum -= take;
  }
  return freq;
}

void put16(std::vector<std::uint8_t>& out, std::uint32_t v) {
  out.push_back(static_cast<std::uint8_t>(v));
  out.push_back(static_cast<std::uint8_t>(v >> 8));
}

}  // namespace

std::array<std::uint64_t, 256> histogram(std::span<const std::uint8_t> bytes) {
  std::array<std::array<std::uint64_t, 256>, 4> partial{};
  std::size_t i = 0;
  for (; i + 4 <= bytes.size(); i += 4) {
    ++partial[0][bytes[i]];
    ++partial[1][bytes[i + 1]];
    ++partial[2][bytes[i + 2]];
    ++partial[3][bytes[i + 3]];
  }
  for (; i < bytes.size(); ++i) ++partial[0][bytes[i]];
  std::array<std::uint64_t, 256> counts{};
  for (std::size_t s = 0; s < 256; ++s) counts[s] = partial[0][s] + partial[1][s] + partial[2][s] + partial[3][s];
  return counts;
}

double entropy_bits(const std::array<std::uint64_t, 256>& counts) {
  std::uint64_t n = 0;
  for (auto c : counts) n += c;
  double bits = 0;
  for (auto c : counts) {
    if (c)
      bits -=
          static_cast<double>(c) / static_cast<double>(n) * std::log2(static_cast<double>(c) / static_cast<double>(n));
  }
  return bits;
}

std::uint64_t estimated_size(const std::array<std::uint64_t, 256>& counts) {
  std::uint64_t n = 0;
  std::size_t symbols = 0;
  for (auto c : counts) {
    n += c;
    symbols += c != 0;
  }
  return static_cast<std::uint64_t>(entropy_bits(counts) * static_cast<double>(n) / 8) + 2 + 3 * symbols + 4 * kStates;
}

void encode(std::span<const std::uint8_t> input, const std::array<std::uint64_t, 256>& counts,
            std::vector<std::uint8_t>& out) {
  const auto freq = normalize(counts);
  std::array<std::uint32_t, 256> cum{};
  std::uint32_t symbols = 0;
  for (std::size_t s = 0, c = 0; s < 256; ++s) {
    cum[s] = static_cast<std::uint32_t>(c);
    c += freq[s];
    symbols += freq[s] != 0;
  }
  put16(out, symbols);
  for (std::size_t s = 0; s < 256; ++s) {
    if (freq[s] == 0) continue;
    out.push_back(static_cast<std::uint8_t>(s));
    put16(out, freq[s]);
  }
  // Encoded backwards (the decoder reads forwards): at most one 16-bit word per symbol; the final states go first.
  const auto stream = std::make_unique_for_overwrite<std::uint8_t[]>(2 * input.size());
  std::uint8_t* end = stream.get() + 2 * input.size();
  std::uint8_t* p = end;
  std::array<std::uint32_t, kStates> state;
  state.fill(kLow);
  for (std::size_t i = input.size(); i-- > 0;) {
    const std::uint8_t s = input[i];
    std::uint32_t x = state[i % kStates];
    const std::uint32_t f = freq[s];
    const std::uint64_t x_max = (std::uint64_t{kLow >> kScaleBits} << 16) * f;  // 2^32 for a lone symbol
    if (x >= x_max) {  // once is enough: x < 2^32 and x_max >= 2^20
      p -= 2;
      p[0] = static_cast<std::uint8_t>(x);
      p[1] = static_cast<std::uint8_t>(x >> 8);
      x >>= 16;
    }
    state[i % kStates] = ((x / f) << kScaleBits) + (x % f) + cum[s];
  }
  out.insert(out.end(), reinterpret_cast<const std::uint8_t*>(state.data()),  // little-endian, as every format here
             reinterpret_cast<const std::uint8_t*>(state.data() + kStates));
  out.insert(out.end(), p, end);
}

void decode(std::span<const std::uint8_t> block, std::span<std::uint8_t> out) {
  std::size_t pos = 0;
  auto need = [&](std::size_t n) {
    if (block.size() - pos < n) fail_corrupt("rans byte " + std::to_string(pos), "the block ends early");
  };
  need(2);
  const std::uint32_t symbols = block[0] | (block[1] << 8);
  pos = 2;
  if (symbols == 0 || symbols > 256) fail_corrupt("rans byte 0", "bad symbol count");
  // Per slot of the 4096: its symbol, the symbol's frequency, and the slot's offset within the symbol's range.
  struct Slot {
    std::uint16_t freq;
    std::uint16_t offset;
    std::uint8_t symbol;
  };
  std::array<Slot, kTotal> slots{};
  std::uint32_t total = 0;
  int previous = -1;
  for (std::uint32_t k = 0; k < symbols; ++k) {
    need(3);
    const std::uint8_t s = block[pos];
    const std::uint32_t f = block[pos + 1] | (block[pos + 2] << 8);
    if (static_cast<int>(s) <= previous || f == 0 || f > kTotal - total)
      fail_corrupt("rans byte " + std::to_string(pos), "bad frequency table");
    previous = s;
    for (std::uint32_t j = 0; j < f; ++j)
      slots[total + j] = {static_cast<std::uint16_t>(f), static_cast<std::uint16_t>(j), s};
    total += f;
    pos += 3;
  }
  if (total != kTotal) fail_corrupt("rans byte 2", "frequencies do not sum to 4096");
  need(4 * kStates);
  std::array<std::uint32_t, kStates> state;
  for (auto& x : state) {
    std::memcpy(&x, block.data() + pos, 4);
    if (x < kLow) fail_corrupt("rans byte " + std::to_string(pos), "bad initial state");
    pos += 4;
  }
  const std::uint8_t* p = block.data() + pos;
  const std::uint8_t* const end = block.data() + block.size();
  // One step of state x: emits a symbol, then takes 16 more bits from the stream when x fell below 2^16. Four
  // states in turn, unrolled so that they stay in registers and their dependency chains overlap.
  auto step = [&](std::uint32_t& x, std::uint8_t& symbol) {
    const Slot& slot = slots[x & (kTotal - 1)];
    symbol = slot.symbol;
    x = slot.freq * (x >> kScaleBits) + slot.offset;
    if (x < kLow) {
      if (end - p < 2) fail_corrupt("rans byte " + std::to_string(block.size()), "the block ends early");
      x = (x << 16) | p[0] | (static_cast<std::uint32_t>(p[1]) << 8);
      p += 2;
    }
  };
  std::uint32_t x0 = state[0], x1 = state[1], x2 = state[2], x3 = state[3];
  const std::size_t n = out.size();
  std::size_t i = 0;
  for (; i + kStates <= n; i += kStates) {
    step(x0, out[i]);
    step(x1, out[i + 1]);
    step(x2, out[i + 2]);
    step(x3, out[i + 3]);
  }
  std::uint32_t* const tail[] = {&x0, &x1, &x2, &x3};
  for (; i < n; ++i) step(*tail[i % kStates], out[i]);
  if (p != end || x0 != kLow || x1 != kLow || x2 != kLow || x3 != kLow) {
    fail_corrupt("rans byte " + std::to_string(p - block.data()), "does not end where its encoding did");
  }
}

}  // namespace ckpt::rans
