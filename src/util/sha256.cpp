#include "util/sha256.hpp"

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstring>

namespace ckpt {
namespace {

using State = std::array<std::uint32_t, 8>;

constexpr std::size_t kBlockSize = 64;

// FIPS 180-4 section 4.2.2 and 5.3.3: fractional parts of the cube roots of the first 64 primes, and of the
// square roots of the first 8.
alignas(16) constexpr std::array<std::uint32_t, 64> kRoundConstants = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};
constexpr State kInitialState = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};

std::atomic<bool> force_portable{false};

std::uint32_t load_big_endian(const std::uint8_t* p) {
  return std::uint32_t{p[0]} << 24 | std::uint32_t{p[1]} << 16 | std::uint32_t{p[2]} << 8 | std::uint32_t{p[3]};
}

void compress_portable(State& state, const std::uint8_t* blocks, std::size_t count) {
  using std::rotr;
  for (; count > 0; --count, blocks += kBlockSize) {
    std::array<std::uint32_t, 64> w;
    for (int t = 0; t < 16; ++t) w[t] = load_big_endian(blocks + 4 * t);
    for (int t = 16; t < 64; ++t) {
      const std::uint32_t sigma0 = rotr(w[t - 15], 7) ^ rotr(w[t - 15], 18) ^ (w[t - 15] >> 3);
      const std::uint32_t sigma1 = rotr(w[t - 2], 17) ^ rotr(w[t - 2], 19) ^ (w[t - 2] >> 10);
      w[t] = w[t - 16] + sigma0 + w[t - 7] + sigma1;
    }
    auto [a, b, c, d, e, f, g, h] = state;
    for (int t = 0; t < 64; ++t) {
      const std::uint32_t t1 =
          h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + kRoundConstants[t] + w[t];
      const std::uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      h = g;
      g = f;
      f = e;
      e = d + t1;
      d = c;
      c = b;
      b = a;
      a = t1 + t2;
    }
    state[0] += a;
    state[1] += b;
    state[2] += c;
    state[3] += d;
    state[4] += e;
    state[5] += f;
    state[6] += g;
    state[7] += h;
  }
}

#if defined(__x86_64__)
// The SHA extensions (Intel, "New Instructions Supporting the Secure Hash Algorithm on Intel Architecture
// Processors"). SHA256RNDS2 does two rounds on the working variables packed as ABEF and CDGH; after two rounds
// the new CDGH is the old ABEF, so alternating which register receives the result keeps both in place every
// four rounds. SHA256MSG1/MSG2 extend the message schedule four words at a time.
#define CKPT_SHA __attribute__((target("sha,sse4.1")))

CKPT_SHA inline __m128i load_words(const std::uint8_t* p) {
  const __m128i byte_swap_words = _mm_set_epi64x(0x0c0d0e0f08090a0b, 0x0405060700010203);
  return _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)), byte_swap_words);
}

// Rounds 4*group .. 4*group+3 with the schedule words W[4*group ..].
CKPT_SHA inline void four_rounds(__m128i& abef, __m128i& cdgh, __m128i words, int group) {
  const __m128i words_plus_constants =
      _mm_add_epi32(words, _mm_load_si128(reinterpret_cast<const __m128i*>(kRoundConstants.data() + 4 * group)));
  cdgh = _mm_sha256rnds2_epu32(cdgh, abef, words_plus_constants);
  abef = _mm_sha256rnds2_epu32(abef, cdgh, _mm_shuffle_epi32(words_plus_constants, 0x0E));
}

// W[t..t+3] from W[t-16..t-1], given as four groups of four, oldest first:
// W[t] = W[t-16] + sigma0(W[t-15]) + W[t-7] + sigma1(W[t-2]).
CKPT_SHA inline __m128i next_words(__m128i w16, __m128i w12, __m128i w8, __m128i w4) {
  const __m128i partial = _mm_add_epi32(_mm_sha256msg1_epu32(w16, w12), _mm_alignr_epi8(w4, w8, 4));
  return _mm_sha256msg2_epu32(partial, w4);
}

CKPT_SHA void compress_sha_ni(State& state, const std::uint8_t* blocks, std::size_t count) {
  // state holds A..H in lanes 0..7; the instructions want ABEF and CDGH with A and C in the top lanes.
  const __m128i abcd = _mm_loadu_si128(reinterpret_cast<const __m128i*>(state.data()));
  const __m128i efgh = _mm_loadu_si128(reinterpret_cast<const __m128i*>(state.data() + 4));
  const __m128i badc = _mm_shuffle_epi32(abcd, 0xB1);
  const __m128i hgfe = _mm_shuffle_epi32(efgh, 0x1B);
  __m128i abef = _mm_alignr_epi8(badc, hgfe, 8);
  __m128i cdgh = _mm_blend_epi16(hgfe, badc, 0xF0);

  for (; count > 0; --count, blocks += kBlockSize) {
    const __m128i abef_before = abef;
    const __m128i cdgh_before = cdgh;
    __m128i w0 = load_words(blocks);
    __m128i w1 = load_words(blocks + 16);
    __m128i w2 = load_words(blocks + 32);
    __m128i w3 = load_words(blocks + 48);
    four_rounds(abef, cdgh, w0, 0);
    four_rounds(abef, cdgh, w1, 1);
    four_rounds(abef, cdgh, w2, 2);
    four_rounds(abef, cdgh, w3, 3);
#pragma GCC unroll 12
    for (int group = 4; group < 16; ++group) {
      const __m128i next = next_words(w0, w1, w2, w3);
      four_rounds(abef, cdgh, next, group);
      w0 = w1;
      w1 = w2;
      w2 = w3;
      w3 = next;
    }
    abef = _mm_add_epi32(abef, abef_before);
    cdgh = _mm_add_epi32(cdgh, cdgh_before);
  }

  const __m128i feba = _mm_shuffle_epi32(abef, 0x1B);
  const __m128i dchg = _mm_shuffle_epi32(cdgh, 0xB1);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(state.data()), _mm_blend_epi16(feba, dchg, 0xF0));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(state.data() + 4), _mm_alignr_epi8(dchg, feba, 8));
}

// CPUID rather than __builtin_cpu_supports("sha"), which clang before 16 rejects.
bool has_sha_extensions() {
  static const bool supported = [] {
    unsigned eax, ebx, ecx, edx;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !(ecx & bit_SSE4_1)) return false;
    return __get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) && (ebx & bit_SHA) != 0;
  }();
  return supported;
}
#endif

void compress(State& state, const std::uint8_t* blocks, std::size_t count) {
#if defined(__x86_64__)
  if (has_sha_extensions() && !force_portable.load(std::memory_order_relaxed)) {
    compress_sha_ni(state, blocks, count);
    return;
  }
#endif
  compress_portable(state, blocks, count);
}

}  // namespace

Sha256::Sha256() { reset(); }

void Sha256::reset() {
  state_ = kInitialState;
  total_bytes_ = 0;
}

void Sha256::update(std::span<const std::uint8_t> bytes) {
  const std::uint8_t* p = bytes.data();
  std::size_t n = bytes.size();
  const std::size_t pending = total_bytes_ % kBlockSize;
  total_bytes_ += n;
  if (pending > 0) {
    const std::size_t taken = std::min(n, kBlockSize - pending);
    std::memcpy(partial_block_.data() + pending, p, taken);
    p += taken;
    n -= taken;
    if (pending + taken < kBlockSize) return;
    compress(state_, partial_block_.data(), 1);
  }
  if (n >= kBlockSize) {
    compress(state_, p, n / kBlockSize);
    p += n / kBlockSize * kBlockSize;
    n %= kBlockSize;
  }
  if (n > 0) std::memcpy(partial_block_.data(), p, n);
}

std::array<std::uint8_t, 32> Sha256::finish() {
  // Padding: 0x80, zeros up to 8 bytes before a block boundary, then the length in bits, big-endian.
  std::size_t used = total_bytes_ % kBlockSize;
  partial_block_[used++] = 0x80;
  if (used > kBlockSize - 8) {
    std::memset(partial_block_.data() + used, 0, kBlockSize - used);
    compress(state_, partial_block_.data(), 1);
    used = 0;
  }
  std::memset(partial_block_.data() + used, 0, kBlockSize - 8 - used);
  const std::uint64_t total_bits = total_bytes_ * 8;
  for (int i = 0; i < 8; ++i) partial_block_[kBlockSize - 1 - i] = static_cast<std::uint8_t>(total_bits >> (8 * i));
  compress(state_, partial_block_.data(), 1);

  std::array<std::uint8_t, 32> digest;
  for (std::size_t i = 0; i < 8; ++i) {
    for (std::size_t j = 0; j < 4; ++j) digest[4 * i + j] = static_cast<std::uint8_t>(state_[i] >> (24 - 8 * j));
  }
  reset();
  return digest;
}

std::string Sha256::hex(const std::array<std::uint8_t, 32>& digest) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(2 * digest.size());
  for (std::uint8_t byte : digest) {
    out += kDigits[byte >> 4];
    out += kDigits[byte & 0x0F];
  }
  return out;
}

std::array<std::uint8_t, 32> sha256(std::span<const std::uint8_t> bytes) {
  Sha256 hasher;
  hasher.update(bytes);
  return hasher.finish();
}

namespace detail {
void sha256_force_portable(bool force) { force_portable.store(force, std::memory_order_relaxed); }
}  // namespace detail

}  // namespace ckpt
