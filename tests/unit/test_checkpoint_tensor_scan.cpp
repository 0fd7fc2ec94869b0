#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "checkpoint/tensor_scan.hpp"

using namespace ckpt;
using namespace ckpt::checkpoint;

namespace {
template <typename T>
std::span<const std::uint8_t> bytes_of(const std::vector<T>& v) {
  return {reinterpret_cast<const std::uint8_t*>(v.data()), v.size() * sizeof(T)};
}
}  // namespace

TEST_CASE("NaN and Inf counts over contiguous and strided views") {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> data = {1, nan, 3, -inf, 5, 6};  // a 2x3 matrix
  auto c = count_nonfinite(bytes_of(data), DType::float32, {2, 3}, {3, 1});
  CHECK(c.nan == 1);
  CHECK(c.inf == 1);
  // its transpose (3x2, strides 1,3) visits the same elements
  c = count_nonfinite(bytes_of(data), DType::float32, {3, 2}, {1, 3});
  CHECK(c.nan == 1);
  CHECK(c.inf == 1);
  // the first column only (elements 0 and 3): one -inf
  c = count_nonfinite(bytes_of(data), DType::float32, {2}, {3});
  CHECK(c.nan == 0);
  CHECK(c.inf == 1);
  // 0-d and empty
  CHECK(count_nonfinite(bytes_of(data), DType::float32, {}, {}).nan == 0);
  CHECK(count_nonfinite(bytes_of(data).subspan(4), DType::float32, {}, {}).nan == 1);
  CHECK(count_nonfinite(bytes_of(data), DType::float32, {0, 3}, {3, 1}).nan == 0);
}

TEST_CASE("half precision bit patterns") {
  // fp16: 0x7C00 +inf, 0xFC00 -inf, 0x7E00 NaN, 0x7BFF max finite; bf16: 0x7F80 +inf, 0x7FC0 NaN
  const std::vector<std::uint16_t> fp16 = {0x7C00, 0xFC00, 0x7E00, 0x7BFF, 0x0001};
  auto c = count_nonfinite(bytes_of(fp16), DType::float16, {5}, {1});
  CHECK(c.inf == 2);
  CHECK(c.nan == 1);
  const std::vector<std::uint16_t> bf16 = {0x7F80, 0x7FC0, 0x3F80};
  c = count_nonfinite(bytes_of(bf16), DType::bfloat16, {3}, {1});
  CHECK(c.inf == 1);
  CHECK(c.nan == 1);
  CHECK(*scalar_value(bytes_of(std::vector<std::uint16_t>{0x3C00}), DType::float16) ==
        1.0);  // torch.tensor(1., dtype=half)
  CHECK(*scalar_value(bytes_of(std::vector<std::uint16_t>{0x0001}), DType::float16) == std::ldexp(1.0, -24));
  CHECK(*scalar_value(bytes_of(std::vector<std::uint16_t>{0x3F80}), DType::bfloat16) == 1.0);
  CHECK(count_nonfinite(bytes_of(std::vector<std::int64_t>{-1}), DType::int64, {1}, {1}).nan == 0);
}

TEST_CASE("expanded views (stride 0) are counted without walking every repeat (found in review: 2^44 elements hung)") {
  const std::vector<float> one = {std::numeric_limits<float>::quiet_NaN()};
  auto c = count_nonfinite(bytes_of(one), DType::float32, {std::int64_t{1} << 44}, {0});
  CHECK(c.nan == (std::uint64_t{1} << 44));
  // torch.tensor([nan, 1.]).expand(3, 2): 3 NaN
  const std::vector<float> two = {std::numeric_limits<float>::quiet_NaN(), 1.0f};
  c = count_nonfinite(bytes_of(two), DType::float32, {3, 2}, {0, 1});
  CHECK(c.nan == 3);
}

TEST_CASE("next_element walks a strided view in row-major order and wraps after its last element") {
  // A transposed 2x3 view of a contiguous 3x2 storage: torch.arange(6).reshape(3, 2).t() reads 0, 2, 4, 1, 3, 5.
  const std::vector<std::int64_t> shape{2, 3};
  const std::vector<std::int64_t> stride{1, 2};
  std::vector<std::int64_t> index(2, 0);
  std::uint64_t element = 0;
  std::vector<std::uint64_t> visited{element};
  while (checkpoint::next_element(shape, stride, index, element)) visited.push_back(element);
  CHECK(visited == std::vector<std::uint64_t>{0, 2, 4, 1, 3, 5});
  CHECK(element == 0);
  CHECK(index == std::vector<std::int64_t>{0, 0});

  // An expanded dimension (stride 0) repeats elements; a 0-d view has one position.
  std::vector<std::int64_t> expanded_index(2, 0);
  element = 0;
  visited = {element};
  while (checkpoint::next_element({2, 2}, {0, 1}, expanded_index, element)) visited.push_back(element);
  CHECK(visited == std::vector<std::uint64_t>{0, 1, 0, 1});
  std::vector<std::int64_t> no_index;
  CHECK_FALSE(checkpoint::next_element({}, {}, no_index, element));
}
