// SHA-256 (FIPS 180-4), streamed: checkpoint files of several GB are hashed while they are compressed or
// restored, so the hash must keep up with the disk. Uses the x86 SHA extensions where the CPU has them (AMD
// since Zen, Intel since Ice Lake), a portable implementation otherwise. Whole blocks are hashed straight from
// the caller's buffer; only a partial block is copied.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>

namespace ckpt {

class Sha256 {
 public:
  Sha256();

  // Any lengths, any number of calls: the digest depends only on the concatenated bytes.
  void update(std::span<const std::uint8_t> bytes);
  // The digest of everything given since construction or the previous finish(); the object then starts over.
  std::array<std::uint8_t, 32> finish();
  // Lowercase hex, 64 characters (the form sha256sum prints).
  static std::string hex(const std::array<std::uint8_t, 32>& digest);

 private:
  void reset();

  std::array<std::uint32_t, 8> state_;
  std::array<std::uint8_t, 64> partial_block_;  // the first total_bytes_ % 64 bytes are pending
  std::uint64_t total_bytes_;
};

std::array<std::uint8_t, 32> sha256(std::span<const std::uint8_t> bytes);

namespace detail {
// For tests: makes every Sha256 use the portable implementation even where the SHA extensions exist (false
// restores the automatic choice), so that both paths can be checked on one machine.
void sha256_force_portable(bool force);
}  // namespace detail

}  // namespace ckpt
