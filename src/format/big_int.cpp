#include "format/big_int.hpp"

#include <cstdint>
#include <vector>

namespace ckpt {
namespace {

constexpr std::size_t kMaxDecimalBytes = 512;

void negate(std::vector<std::uint8_t>& bytes) {
  unsigned carry = 1;
  for (auto& b : bytes) {
    unsigned v = static_cast<std::uint8_t>(~b) + carry;
    b = static_cast<std::uint8_t>(v & 0xFF);
    carry = v >> 8;
  }
}

}  // namespace

std::string twos_complement_from_decimal(std::string_view digits, bool negative) {
  std::vector<std::uint8_t> mag;  // little-endian magnitude
  for (char d : digits) {
    unsigned carry = static_cast<unsigned>(d - '0');
    for (auto& b : mag) {
      unsigned v = b * 10u + carry;
      b = static_cast<std::uint8_t>(v & 0xFF);
      carry = v >> 8;
    }
    while (carry) {
      mag.push_back(static_cast<std::uint8_t>(carry & 0xFF));
      carry >>= 8;
    }
  }
  mag.push_back(0);  // room for the sign bit
  if (negative) negate(mag);
  return std::string(mag.begin(), mag.end());
}

std::string decimal_from_twos_complement(const std::string& le_bytes) {
  std::vector<std::uint8_t> mag(le_bytes.begin(), le_bytes.end());
  const bool negative = !mag.empty() && (mag.back() & 0x80);
  if (negative) negate(mag);
  while (!mag.empty() && mag.back() == 0) mag.pop_back();
  if (mag.empty()) return "0";
  if (mag.size() > kMaxDecimalBytes) {
    static const char* hex_digits = "0123456789abcdef";
    std::string hex = negative ? "-0x" : "0x";
    for (auto it = mag.rbegin(); it != mag.rend(); ++it) {
      hex += hex_digits[*it >> 4];
      hex += hex_digits[*it & 15];
    }
    return hex;
  }
  std::string decimal;
  while (!mag.empty()) {  // repeated division by 10, most significant byte first
    unsigned remainder = 0;
    for (auto it = mag.rbegin(); it != mag.rend(); ++it) {
      unsigned cur = (remainder << 8) | *it;
      *it = static_cast<std::uint8_t>(cur / 10);
      remainder = cur % 10;
    }
    decimal += static_cast<char>('0' + remainder);
    while (!mag.empty() && mag.back() == 0) mag.pop_back();
  }
  if (negative) decimal += '-';
  return std::string(decimal.rbegin(), decimal.rend());
}

}  // namespace ckpt
