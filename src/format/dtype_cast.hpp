// Casting floating tensor bytes between float32, float16, bfloat16 (and from float64) exactly as torch 1.13's
// `.to(dtype)` does on x86 CPUs: round to nearest even; overflow to infinity; float16 subnormals kept; float16
// NaN is 0x7E00 with its sign; bfloat16 NaN is 0xFFFF from float32 (the vectorised kernel) and 0x7FC0 from
// a 0-d tensor or the other dtypes (the scalar conversion); float16 NaNs widen to quiet float32 NaNs.
#pragma once

#include <cstdint>
#include <span>

#include "format/dtype.hpp"

namespace ckpt {

// True when `from` -> `to` is a cast this module performs (both floating, among f64/f32/f16/bf16).
bool can_cast(DType from, DType to);

// Converts `count` elements; `src` holds count * element_size(from) bytes, `dst` count * element_size(to).
// `zero_dim`: the elements are a 0-d tensor's or a strided view's, which torch converts with its scalar code
// (NaN differs).
void cast_elements(std::span<const std::uint8_t> src, DType from, std::span<std::uint8_t> dst, DType to,
                   bool zero_dim = false);

// Converts integer or bool elements to float32 as torch's Tensor.float() does (the nearest float). `dst` holds
// 4 bytes per element of `src`. Throws unsupported for a dtype that is no integer.
void integers_to_float32(std::span<const std::uint8_t> src, DType from, std::span<std::uint8_t> dst);

// Every element of `src` (little-endian, contiguous) as doubles, in order: `out` holds one per element, two (real,
// imaginary) for a complex dtype. Exact for every dtype but 64-bit integers beyond 2^53, which round to the nearest
// double; bool is 0 or 1; float8 e4m3fn's NaN (S.1111.111) is NaN.
void widen_to_double(std::span<const std::uint8_t> src, DType dtype, std::span<double> out);

std::uint16_t float_to_bfloat16(float value);
std::uint16_t float_to_half(float value);
float half_to_float(std::uint16_t bits);
float bfloat16_to_float(std::uint16_t bits);

}  // namespace ckpt
