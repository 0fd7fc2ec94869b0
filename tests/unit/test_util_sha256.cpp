#include <doctest/doctest.h>

#include <algorithm>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "util/sha256.hpp"

namespace {
std::span<const std::uint8_t> bytes_of(std::string_view s) {
  return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

std::string hex_sha256(std::span<const std::uint8_t> bytes) { return ckpt::Sha256::hex(ckpt::sha256(bytes)); }

// Selects the implementation for its lifetime; on a CPU without the SHA extensions both are the portable one.
class ForcePortable {
 public:
  explicit ForcePortable(bool force) { ckpt::detail::sha256_force_portable(force); }
  ~ForcePortable() { ckpt::detail::sha256_force_portable(false); }
  ForcePortable(const ForcePortable&) = delete;
  ForcePortable& operator=(const ForcePortable&) = delete;
};

constexpr bool kBothPaths[] = {false, true};
}  // namespace

TEST_CASE("sha256 matches the FIPS 180-4 examples on both paths") {
  for (bool portable : kBothPaths) {
    CAPTURE(portable);
    ForcePortable path(portable);
    CHECK(hex_sha256(bytes_of("")) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    CHECK(hex_sha256(bytes_of("abc")) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    CHECK(hex_sha256(bytes_of("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")) ==
          "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    const std::string million_a(1'000'000, 'a');
    const std::string million_a_digest = "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0";
    CHECK(hex_sha256(bytes_of(million_a)) == million_a_digest);
    ckpt::Sha256 hasher;
    for (std::size_t at = 0; at < million_a.size(); at += 1000) hasher.update(bytes_of(million_a).subspan(at, 1000));
    CHECK(ckpt::Sha256::hex(hasher.finish()) == million_a_digest);
  }
}

TEST_CASE("sha256 is right at every length up to 300 and for every way of splitting the input") {
  std::vector<std::uint8_t> data(300);
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<std::uint8_t>(i % 251);
  const std::span<const std::uint8_t> all(data);
  for (bool portable : kBothPaths) {
    CAPTURE(portable);
    ForcePortable path(portable);
    // The digest of the digests of data[:n] for n in 0..300, from Python's hashlib.
    ckpt::Sha256 chain;
    for (std::size_t length = 0; length <= all.size(); ++length) {
      const auto whole = ckpt::sha256(all.first(length));
      chain.update(whole);
      ckpt::Sha256 bytewise;
      for (std::size_t i = 0; i < length; ++i) bytewise.update(all.subspan(i, 1));
      REQUIRE(bytewise.finish() == whole);
      for (std::size_t split = 0; split <= length; ++split) {
        ckpt::Sha256 in_three;
        in_three.update(all.first(split));
        in_three.update(all.subspan(split, (length - split) / 2));
        in_three.update(all.first(length).subspan(split + (length - split) / 2));
        REQUIRE(in_three.finish() == whole);
      }
    }
    CHECK(ckpt::Sha256::hex(chain.finish()) == "b90e35153500e9a471591550ee25a954527c6b4448afff95f7949a2ca93300ce");
  }
}

TEST_CASE("sha256 of a megabyte fed in uneven chunks matches hashlib") {
  std::vector<std::uint8_t> data((1 << 20) + 17);
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<std::uint8_t>((i * i + 7 * i) % 256);
  const std::string expected = "b76caf588652f71fc908033dc519668454cda7de4b5909d05f94f8806cf9d3f0";
  const std::span<const std::uint8_t> all(data);
  for (bool portable : kBothPaths) {
    CAPTURE(portable);
    ForcePortable path(portable);
    CHECK(hex_sha256(all) == expected);
    for (std::size_t chunk : {1, 63, 64, 65, 4093, 65536}) {
      CAPTURE(chunk);
      ckpt::Sha256 hasher;
      for (std::size_t at = 0; at < all.size(); at += chunk)
        hasher.update(all.subspan(at, std::min(chunk, all.size() - at)));
      CHECK(ckpt::Sha256::hex(hasher.finish()) == expected);
    }
  }
}

TEST_CASE("sha256's two implementations agree on random data at any length and alignment") {
  std::mt19937 random(20240611);
  std::vector<std::uint8_t> data(70000);
  for (auto& b : data) b = static_cast<std::uint8_t>(random());
  for (int trial = 0; trial < 400; ++trial) {
    const std::size_t offset = random() % 16;
    const std::size_t length = trial < 200 ? random() % 1000 : random() % (data.size() - offset);
    const std::span<const std::uint8_t> part(data.data() + offset, length);
    CAPTURE(offset);
    CAPTURE(length);
    std::array<std::uint8_t, 32> fast;
    {
      ForcePortable path(false);
      fast = ckpt::sha256(part);
    }
    ForcePortable path(true);
    REQUIRE(ckpt::sha256(part) == fast);
  }
}

TEST_CASE("sha256 finish() starts the hasher over, and hex() is lowercase sha256sum form") {
  ckpt::Sha256 hasher;
  hasher.update(bytes_of("some earlier input that must not leak into the next digest"));
  hasher.finish();
  hasher.update(bytes_of("abc"));
  const auto digest = hasher.finish();
  CHECK(ckpt::Sha256::hex(digest) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(ckpt::Sha256::hex(hasher.finish()) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  std::array<std::uint8_t, 32> ramp;
  for (std::size_t i = 0; i < ramp.size(); ++i) ramp[i] = static_cast<std::uint8_t>(i * 8 + 7);
  CHECK(ckpt::Sha256::hex(ramp) == "070f171f272f373f474f575f676f777f878f979fa7afb7bfc7cfd7dfe7eff7ff");
}
