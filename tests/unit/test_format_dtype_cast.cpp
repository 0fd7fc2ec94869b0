#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "format/dtype_cast.hpp"

using namespace ckpt;

namespace {

std::vector<std::uint16_t> cast_floats(const std::vector<float>& values, DType to) {
  std::vector<std::uint16_t> out(values.size());
  cast_elements({reinterpret_cast<const std::uint8_t*>(values.data()), values.size() * 4}, DType::float32,
                {reinterpret_cast<std::uint8_t*>(out.data()), out.size() * 2}, to);
  return out;
}

}  // namespace

// Expected bits printed by torch 1.13 (Debian) for
// torch.tensor(values).to(torch.float16 / torch.bfloat16).view(torch.int16).
TEST_CASE("float32 to float16 and bfloat16, bit for bit as torch") {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> values = {1.0f,  0.1f,  65504.0f, 65520.0f, 1e5f,        6e-8f,       3e-8f,
                                     1e-6f, -0.0f, inf,      nan,      1.00390625f, 1.01171875f, 3.4e38f};
  CHECK(cast_floats(values, DType::float16) == std::vector<std::uint16_t>{0x3c00, 0x2e66, 0x7bff, 0x7c00, 0x7c00, 0x1,
                                                                          0x1, 0x11, 0x8000, 0x7c00, 0x7e00, 0x3c04,
                                                                          0x3c0c, 0x7c00});
  CHECK(cast_floats(values, DType::bfloat16) == std::vector<std::uint16_t>{0x3f80, 0x3dcd, 0x4780, 0x4780, 0x47c3,
                                                                           0x3381, 0x3301, 0x3586, 0x8000, 0x7f80,
                                                                           0xffff, 0x3f80, 0x3f82, 0x7f80});
  // A negative NaN keeps its sign in float16 (0xfe00)
  CHECK(cast_floats({-nan}, DType::float16) == std::vector<std::uint16_t>{0xfe00});
}

TEST_CASE("half precision widens exactly") {
  for (std::uint32_t bits = 0; bits < 0x10000; ++bits) {
    const auto h = static_cast<std::uint16_t>(bits);
    const float f = half_to_float(h);
    if (std::isnan(f)) {
      CHECK((h & 0x7C00) == 0x7C00);
      continue;
    }
    CHECK(float_to_half(f) == h);  // every half survives a round trip through float
  }
  CHECK(bfloat16_to_float(0x3f80) == 1.0f);
  CHECK(can_cast(DType::float64, DType::bfloat16));
  CHECK_FALSE(can_cast(DType::int64, DType::float32));
}

namespace {

template <typename T>
std::vector<double> widened(const std::vector<T>& values, DType dtype) {
  std::vector<double> out(values.size() * sizeof(T) / element_size(dtype) * (is_complex(dtype) ? 2 : 1));
  widen_to_double({reinterpret_cast<const std::uint8_t*>(values.data()), values.size() * sizeof(T)}, dtype, out);
  return out;
}

}  // namespace

TEST_CASE("every dtype widens to double") {
  CHECK(widened(std::vector<float>{1.5f, -0.1f}, DType::float32) ==
        std::vector<double>{1.5, static_cast<double>(-0.1f)});
  CHECK(widened(std::vector<double>{0.1}, DType::float64) == std::vector<double>{0.1});
  CHECK(widened(std::vector<std::uint16_t>{0x3c00, 0x0001, 0xfc00}, DType::float16) ==
        std::vector<double>{1.0, std::ldexp(1.0, -24), -std::numeric_limits<double>::infinity()});
  CHECK(widened(std::vector<std::uint16_t>{0x3f80, 0xc040}, DType::bfloat16) == std::vector<double>{1.0, -3.0});
  // float8: e5m2 is float16's upper byte; e4m3fn has bias 7, no infinities, 448 its largest value, S.1111.111 NaN.
  CHECK(widened(std::vector<std::uint8_t>{0x3c, 0x7c, 0x01}, DType::float8_e5m2) ==
        std::vector<double>{1.0, std::numeric_limits<double>::infinity(), std::ldexp(1.0, -16)});
  const auto e4m3 = widened(std::vector<std::uint8_t>{0x38, 0x7e, 0x01, 0xb8, 0x7f}, DType::float8_e4m3fn);
  CHECK(std::vector<double>(e4m3.begin(), e4m3.end() - 1) ==
        std::vector<double>{1.0, 448.0, std::ldexp(1.0, -9), -1.0});
  CHECK(std::isnan(e4m3.back()));
  CHECK(widened(std::vector<std::int64_t>{-3, (1ll << 53) + 1}, DType::int64) ==
        std::vector<double>{-3.0, std::ldexp(1.0, 53)});
  CHECK(widened(std::vector<std::uint64_t>{~0ull}, DType::uint64) == std::vector<double>{std::ldexp(1.0, 64)});
  CHECK(widened(std::vector<std::int8_t>{-128, 127}, DType::int8) == std::vector<double>{-128.0, 127.0});
  CHECK(widened(std::vector<std::uint8_t>{0, 1, 2}, DType::boolean) == std::vector<double>{0.0, 1.0, 1.0});
  // A complex element is two doubles, real then imaginary.
  CHECK(widened(std::vector<float>{1.0f, -2.0f, 0.5f, 4.0f}, DType::complex64) ==
        std::vector<double>{1.0, -2.0, 0.5, 4.0});
  CHECK(widened(std::vector<double>{1.0, -2.0}, DType::complex128) == std::vector<double>{1.0, -2.0});
}
