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
  const std::vector<float> values = {1.0f, 0.1f, 65504.0f, 65520.0f, 1e5f, 6e-8f, 3e-8f, 1e-6f, -0.0f, inf, nan,
                                     1.00390625f, 1.01171875f, 3.4e38f};
  CHECK(cast_floats(values, DType::float16) == std::vector<std::uint16_t>{0x3c00, 0x2e66, 0x7bff, 0x7c00, 0x7c00, 0x1, 0x1, 0x11,
                                                                          0x8000, 0x7c00, 0x7e00, 0x3c04, 0x3c0c, 0x7c00});
  CHECK(cast_floats(values, DType::bfloat16) == std::vector<std::uint16_t>{0x3f80, 0x3dcd, 0x4780, 0x4780, 0x47c3, 0x3381, 0x3301, 0x3586,
                                                                           0x8000, 0x7f80, 0xffff, 0x3f80, 0x3f82, 0x7f80});
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
