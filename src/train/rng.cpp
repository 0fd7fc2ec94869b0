#include "train/rng.hpp"

#include <cmath>

namespace ckpt::train {

namespace {
constexpr std::uint32_t kMatrixA = 0x9908b0dfu;
constexpr std::uint32_t kUpperMask = 0x80000000u;
constexpr std::uint32_t kLowerMask = 0x7fffffffu;
constexpr int kShift = 397;
}  // namespace

void MT19937::init_genrand(std::uint32_t seed) {
  key[0] = seed;
  for (int i = 1; i < kWords; ++i) {
    key[i] = 1812433253u * (key[i - 1] ^ (key[i - 1] >> 30)) + static_cast<std::uint32_t>(i);
  }
  pos = kWords;
}

void MT19937::init_by_array(const std::vector<std::uint32_t>& init_key) {
  init_genrand(19650218u);
  const std::size_t length = init_key.size();
  std::size_t i = 1;
  std::size_t j = 0;
  for (std::size_t k = std::max<std::size_t>(kWords, length); k > 0; --k) {
    key[i] = (key[i] ^ ((key[i - 1] ^ (key[i - 1] >> 30)) * 1664525u)) + init_key[j] + static_cast<std::uint32_t>(j);
    ++i;
    ++j;
    if (i >= kWords) {
      key[0] = key[kWords - 1];
      i = 1;
    }
    if (j >= length) j = 0;
  }
  for (std::size_t k = kWords - 1; k > 0; --k) {
    key[i] = (key[i] ^ ((key[i - 1] ^ (key[i - 1] >> 30)) * 1566083941u)) - static_cast<std::uint32_t>(i);
    ++i;
    if (i >= kWords) {
      key[0] = key[kWords - 1];
      i = 1;
    }
  }
  key[0] = 0x80000000u;
  pos = kWords;
}

void MT19937::twist() {
  for (int k = 0; k < kWords; ++k) {
    const std::uint32_t y = (key[k] & kUpperMask) | (key[(k + 1) % kWords] & kLowerMask);
    key[k] = key[(k + kShift) % kWords] ^ (y >> 1) ^ ((y & 1u) ? kMatrixA : 0u);
  }
  pos = 0;
}

std::uint32_t MT19937::next() {
  if (pos >= kWords) twist();
  std::uint32_t y = key[pos++];
  y ^= y >> 11;
  y ^= (y << 7) & 0x9d2c5680u;
  y ^= (y << 15) & 0xefc60000u;
  y ^= y >> 18;
  return y;
}

void PythonRandom::seed(std::uint64_t n) {
  // random_seed: the absolute value's 32-bit words, least significant first; zero is one word.
  std::vector<std::uint32_t> words;
  do {
    words.push_back(static_cast<std::uint32_t>(n));
    n >>= 32;
  } while (n != 0);
  mt.init_by_array(words);
  gauss_next.reset();
}

std::uint32_t PythonRandom::getrandbits(int k) { return mt.next() >> (32 - k); }

std::uint32_t PythonRandom::randbelow(std::uint32_t n) {
  int k = 0;
  while (k < 32 && (n >> k) != 0) ++k;  // n.bit_length()
  std::uint32_t r = getrandbits(k);
  while (r >= n) r = getrandbits(k);
  return r;
}

void NumpyRandom::seed(std::uint32_t n) {
  mt.init_genrand(n);
  has_gauss = false;
  gauss = 0.0;
}

double NumpyRandom::random_double() {
  const std::int32_t a = static_cast<std::int32_t>(mt.next() >> 5);
  const std::int32_t b = static_cast<std::int32_t>(mt.next() >> 6);
  return (a * 67108864.0 + b) / 9007199254740992.0;
}

double NumpyRandom::standard_normal() {
  if (has_gauss) {
    const double value = gauss;
    has_gauss = false;
    gauss = 0.0;
    return value;
  }
  double x1 = 0;
  double x2 = 0;
  double r2 = 0;
  do {
    x1 = 2.0 * random_double() - 1.0;
    x2 = 2.0 * random_double() - 1.0;
    r2 = x1 * x1 + x2 * x2;
  } while (r2 >= 1.0 || r2 == 0.0);
  const double f = std::sqrt(-2.0 * std::log(r2) / r2);
  gauss = f * x1;
  has_gauss = true;
  return f * x2;
}

}  // namespace ckpt::train
