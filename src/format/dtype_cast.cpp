#include "format/dtype_cast.hpp"

#include <cmath>
#include <cstring>

#include "util/error.hpp"

namespace ckpt {
namespace {

std::uint32_t bits_of(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

float float_of(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

float load_as_float(const std::uint8_t* p, DType dtype) {
  switch (dtype) {
    case DType::float32: {
      float f;
      std::memcpy(&f, p, 4);
      return f;
    }
    case DType::float64: {
      double d;
      std::memcpy(&d, p, 8);
      return static_cast<float>(d);
    }
    case DType::float16: {
      std::uint16_t h;
      std::memcpy(&h, p, 2);
      return half_to_float(h);
    }
    case DType::bfloat16: {
      std::uint16_t b;
      std::memcpy(&b, p, 2);
      return bfloat16_to_float(b);
    }
    case DType::float8_e5m2:
    case DType::float8_e4m3fn:
    case DType::int64:
    case DType::int32:
    case DType::int16:
    case DType::int8:
    case DType::uint64:
    case DType::uint32:
    case DType::uint16:
    case DType::uint8:
    case DType::boolean:
    case DType::complex128:
    case DType::complex64:
      break;
  }
  fail(ErrorKind::unsupported, "", "cannot cast from " + std::string(torch_name(dtype)));
}

}  // namespace

std::uint16_t float_to_bfloat16(float value) {
  if (std::isnan(value)) return 0x7FC0;
  const std::uint32_t u = bits_of(value);
  const std::uint32_t rounding_bias = ((u >> 16) & 1) + 0x7FFF;
  return static_cast<std::uint16_t>((u + rounding_bias) >> 16);
}

// IEEE float16 from float32 with round to nearest even, via the floating-point unit: scaling by 2^112 and then
// 2^-110 rounds the mantissa at float16's precision (and saturates huge values to infinity); adding a power of
// two chosen from the exponent aligns the result so float16's bits can be read off directly.
std::uint16_t float_to_half(float value) {
  float base = (std::fabs(value) * 0x1.0p+112f) * 0x1.0p-110f;
  const std::uint32_t w = bits_of(value);
  const std::uint32_t shl1_w = w + w;
  const std::uint32_t sign = w & 0x80000000u;
  std::uint32_t bias = shl1_w & 0xFF000000u;
  if (bias < 0x71000000u) bias = 0x71000000u;
  base = float_of((bias >> 1) + 0x07800000u) + base;
  const std::uint32_t bits = bits_of(base);
  const std::uint32_t exp_bits = (bits >> 13) & 0x00007C00u;
  const std::uint32_t mantissa_bits = bits & 0x00000FFFu;
  const std::uint32_t nonsign = exp_bits + mantissa_bits;
  return static_cast<std::uint16_t>((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}

float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000) << 16;
  std::uint32_t exponent = (h >> 10) & 0x1F;
  std::uint32_t mantissa = h & 0x3FF;
  // A NaN comes out quiet, as the float arithmetic torch converts with makes it.
  if (exponent == 0x1F) return float_of(sign | 0x7F800000u | (mantissa << 13) | (mantissa != 0 ? 0x00400000u : 0u));
  if (exponent == 0) {
    if (mantissa == 0) return float_of(sign);
    // subnormal: normalise
    exponent = 127 - 15 + 1;
    while ((mantissa & 0x400) == 0) {
      mantissa <<= 1;
      --exponent;
    }
    mantissa &= 0x3FF;
    return float_of(sign | (exponent << 23) | (mantissa << 13));
  }
  return float_of(sign | ((exponent + 127 - 15) << 23) | (mantissa << 13));
}

float bfloat16_to_float(std::uint16_t bits) { return float_of(static_cast<std::uint32_t>(bits) << 16); }

namespace {

double float8_e4m3fn_to_double(std::uint8_t bits) {
  const int exponent = (bits >> 3) & 0xF;
  const int mantissa = bits & 0x7;
  double v = exponent == 0xF && mantissa == 0x7 ? std::nan("")
             : exponent == 0                    ? std::ldexp(mantissa, -9)
                                                : std::ldexp(8 + mantissa, exponent - 10);
  return (bits & 0x80) ? -v : v;
}

template <typename T>
void widen_each(const std::uint8_t* src, std::size_t count, double* out) {
  for (std::size_t i = 0; i < count; ++i) {
    T v;
    std::memcpy(&v, src + i * sizeof(T), sizeof(T));
    out[i] = static_cast<double>(v);
  }
}

template <typename Bits, typename Widen>
void widen_bits(const std::uint8_t* src, std::size_t count, double* out, Widen widen) {
  for (std::size_t i = 0; i < count; ++i) {
    Bits v;
    std::memcpy(&v, src + i * sizeof(Bits), sizeof(Bits));
    out[i] = widen(v);
  }
}

}  // namespace

namespace {

template <typename T>
void integers_to_floats(const std::uint8_t* in, std::size_t count, std::uint8_t* out) {
  for (std::size_t i = 0; i < count; ++i) {
    T value;
    std::memcpy(&value, in + i * sizeof(T), sizeof(T));
    const float f = static_cast<float>(value);  // one rounding, as torch's
    std::memcpy(out + i * 4, &f, 4);
  }
}

}  // namespace

void integers_to_float32(std::span<const std::uint8_t> src, DType from, std::span<std::uint8_t> dst) {
  const std::size_t count = src.size() / element_size(from);
  switch (from) {
    case DType::int64:
      return integers_to_floats<std::int64_t>(src.data(), count, dst.data());
    case DType::int32:
      return integers_to_floats<std::int32_t>(src.data(), count, dst.data());
    case DType::int16:
      return integers_to_floats<std::int16_t>(src.data(), count, dst.data());
    case DType::int8:
      return integers_to_floats<std::int8_t>(src.data(), count, dst.data());
    case DType::uint8:
    case DType::boolean:
      return integers_to_floats<std::uint8_t>(src.data(), count, dst.data());
    default:
      fail(ErrorKind::unsupported, "", "cannot convert " + std::string(torch_name(from)) + " to float32 as integers");
  }
}

void widen_to_double(std::span<const std::uint8_t> src, DType dtype, std::span<double> out) {
  const std::size_t count = src.size() / element_size(dtype);
  const std::uint8_t* in = src.data();
  double* o = out.data();
  switch (dtype) {
    case DType::float64:
      widen_each<double>(in, count, o);
      break;
    case DType::float32:
      widen_each<float>(in, count, o);
      break;
    case DType::float16:
      widen_bits<std::uint16_t>(in, count, o, [](std::uint16_t h) { return static_cast<double>(half_to_float(h)); });
      break;
    case DType::bfloat16:
      widen_bits<std::uint16_t>(in, count, o,
                                [](std::uint16_t b) { return static_cast<double>(bfloat16_to_float(b)); });
      break;
    // e5m2 is float16's upper byte.
    case DType::float8_e5m2:
      widen_bits<std::uint8_t>(in, count, o, [](std::uint8_t b) {
        return static_cast<double>(half_to_float(static_cast<std::uint16_t>(b << 8)));
      });
      break;
    case DType::float8_e4m3fn:
      widen_bits<std::uint8_t>(in, count, o, float8_e4m3fn_to_double);
      break;
    case DType::int64:
      widen_each<std::int64_t>(in, count, o);
      break;
    case DType::int32:
      widen_each<std::int32_t>(in, count, o);
      break;
    case DType::int16:
      widen_each<std::int16_t>(in, count, o);
      break;
    case DType::int8:
      widen_each<std::int8_t>(in, count, o);
      break;
    case DType::uint64:
      widen_each<std::uint64_t>(in, count, o);
      break;
    case DType::uint32:
      widen_each<std::uint32_t>(in, count, o);
      break;
    case DType::uint16:
      widen_each<std::uint16_t>(in, count, o);
      break;
    case DType::uint8:
      widen_each<std::uint8_t>(in, count, o);
      break;
    case DType::boolean:
      widen_bits<std::uint8_t>(in, count, o, [](std::uint8_t b) { return b != 0 ? 1.0 : 0.0; });
      break;
    case DType::complex128:
      widen_each<double>(in, 2 * count, o);
      break;
    case DType::complex64:
      widen_each<float>(in, 2 * count, o);
      break;
  }
}

bool can_cast(DType from, DType to) { return castable(from) && castable(to); }

void cast_elements(std::span<const std::uint8_t> src, DType from, std::span<std::uint8_t> dst, DType to,
                   bool zero_dim) {
  if (!can_cast(from, to)) {
    fail(ErrorKind::unsupported, "",
         std::string("cannot cast ") + std::string(torch_name(from)) + " to " + std::string(torch_name(to)));
  }
  const std::size_t in_size = element_size(from);
  const std::size_t out_size = element_size(to);
  const std::size_t count = src.size() / in_size;
  if (from == to) {
    std::memcpy(dst.data(), src.data(), src.size());
    return;
  }
  for (std::size_t i = 0; i < count; ++i) {
    const std::uint8_t* in = src.data() + i * in_size;
    std::uint8_t* out = dst.data() + i * out_size;
    if (to == DType::float64) {
      // Widening to double is exact from every source here.
      const double d = from == DType::float32 ? static_cast<double>(load_as_float(in, from)) : load_as_float(in, from);
      std::memcpy(out, &d, 8);
      continue;
    }
    const float f = load_as_float(in, from);
    switch (to) {
      case DType::float32:
        std::memcpy(out, &f, 4);
        break;
      case DType::float16: {
        const std::uint16_t h = float_to_half(f);
        std::memcpy(out, &h, 2);
        break;
      }
      case DType::float64:  // written above, exactly
        break;
      case DType::bfloat16: {
        // torch's vectorised float32 -> bfloat16 kernel (the path every CPU tensor of one or more dimensions
        // takes) writes NaN as 0xFFFF; its scalar conversion (0-d tensors, the other dtypes) as 0x7FC0.
        const std::uint16_t b = from == DType::float32 && !zero_dim && std::isnan(f) ? 0xFFFF : float_to_bfloat16(f);
        std::memcpy(out, &b, 2);
        break;
      }
      case DType::float8_e5m2:
      case DType::float8_e4m3fn:
      case DType::int64:
      case DType::int32:
      case DType::int16:
      case DType::int8:
      case DType::uint64:
      case DType::uint32:
      case DType::uint16:
      case DType::uint8:
      case DType::boolean:
      case DType::complex128:
      case DType::complex64:
        break;
    }
  }
}

}  // namespace ckpt
