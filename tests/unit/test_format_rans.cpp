#include <doctest/doctest.h>

#include <cmath>
#include <random>
#include <vector>

#include "format/rans.hpp"
#include "util/error.hpp"

using namespace ckpt;

namespace {

std::vector<std::uint8_t> encode(const std::vector<std::uint8_t>& input) {
  std::vector<std::uint8_t> out;
  rans::encode(input, rans::histogram(input), out);
  return out;
}

std::vector<std::uint8_t> decode(const std::vector<std::uint8_t>& block, std::size_t n) {
  std::vector<std::uint8_t> out(n);
  rans::decode(block, out);
  return out;
}

// Geometric symbols, as a float's exponent byte: P(k) = 2^-(k+1).
std::vector<std::uint8_t> geometric(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::uint8_t> v(n);
  for (auto& b : v) {
    int k = 0;
    while ((rng() & 1) && k < 40) ++k;
    b = static_cast<std::uint8_t>(120 - k);
  }
  return v;
}

}  // namespace

TEST_CASE("rANS round-trips every length, one symbol, all 256 symbols and skewed data") {
  std::mt19937 rng(1);
  for (std::size_t n = 1; n < 70; ++n) {
    std::vector<std::uint8_t> v(n);
    for (auto& b : v) b = static_cast<std::uint8_t>(rng() % 5);
    CHECK(decode(encode(v), n) == v);
  }
  const std::vector<std::uint8_t> constant(100000, 7);
  const auto block = encode(constant);
  CHECK(block.size() == 2 + 3 + 16);  // one symbol costs nothing
  CHECK(decode(block, constant.size()) == constant);
  std::vector<std::uint8_t> all(300000);
  for (auto& b : all) b = static_cast<std::uint8_t>(rng());
  CHECK(decode(encode(all), all.size()) == all);
  // Many rare symbols beside one dominant one: every present symbol keeps a frequency of at least 1.
  std::vector<std::uint8_t> rare(1 << 20, 0);
  for (std::size_t s = 1; s < 256; ++s) rare[s * 997] = static_cast<std::uint8_t>(s);
  CHECK(decode(encode(rare), rare.size()) == rare);
}

TEST_CASE("rANS codes geometric symbols within 1% of their entropy, and its estimate is close") {
  const auto v = geometric(1 << 20, 2);
  const auto counts = rans::histogram(v);
  double bits = 0;
  for (auto c : counts) {
    if (c) bits -= static_cast<double>(c) * std::log2(static_cast<double>(c) / static_cast<double>(v.size()));
  }
  const auto block = encode(v);
  CHECK(static_cast<double>(block.size()) < bits / 8 * 1.01 + 64);
  CHECK(std::abs(static_cast<double>(rans::estimated_size(counts)) - static_cast<double>(block.size())) <
        0.01 * static_cast<double>(block.size()));
  CHECK(decode(block, v.size()) == v);
}

TEST_CASE("damaged rANS blocks are refused, never decoded into something else silently") {
  const auto v = geometric(5000, 3);
  const auto good = encode(v);
  std::mt19937 rng(4);
  int refused = 0;
  for (int trial = 0; trial < 2000; ++trial) {
    auto bad = good;
    bad[rng() % bad.size()] ^= static_cast<std::uint8_t>(1u << (rng() % 8));
    try {
      decode(bad, v.size());
    } catch (const Error& e) {
      CHECK(e.kind() == ErrorKind::corrupt);
      ++refused;
    }
  }
  // The final-state check catches almost every flip (the archive's CRC catches the rest before decoding).
  CHECK(refused > 1900);
  for (std::size_t cut = 0; cut < good.size(); cut += 7) {
    CHECK_THROWS_AS(
        decode(std::vector<std::uint8_t>(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(cut)), v.size()),
        Error);
  }
  CHECK_THROWS_AS(decode(good, v.size() + 1), Error);
  CHECK_THROWS_AS(decode(good, v.size() - 1), Error);
}
