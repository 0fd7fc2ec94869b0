// Python ints past 64 bits, as pickles store them (little-endian two's complement bytes, LONG1/LONG4) and as
// people and JSON read them (decimal digits).
#pragma once

#include <string>
#include <string_view>

namespace ckpt {

// Decimal digits without sign -> little-endian two's complement bytes of the (negated) value. The caller bounds
// the length: the conversion is quadratic.
std::string twos_complement_from_decimal(std::string_view digits, bool negative);

// Little-endian two's complement bytes -> decimal digits with a leading '-' when negative. Values longer than
// 512 bytes come back as hexadecimal ("0x...", "-0x..."), keeping the quadratic conversion cheap.
std::string decimal_from_twos_complement(const std::string& le_bytes);

}  // namespace ckpt
