#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <span>
#include <vector>

#include "checkpoint/diff.hpp"

using namespace ckpt;
using checkpoint::ElementStats;
using checkpoint::Tolerance;

namespace {

template <typename T>
std::span<const std::uint8_t> bytes(const std::vector<T>& v) {
  return {reinterpret_cast<const std::uint8_t*>(v.data()), v.size() * sizeof(T)};
}

template <typename A, typename B>
ElementStats compared(const std::vector<A>& a, DType da, const std::vector<B>& b, DType db, Tolerance tolerance = {}) {
  ElementStats s;
  checkpoint::accumulate(bytes(a), da, bytes(b), db, tolerance, s);
  return s;
}

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

}  // namespace

// Expected values as torch 1.13 computes them in float64:
//   a = torch.tensor([1., 2., 3., 4.]); b = torch.tensor([1., 2.5, 3., 2.])
//   (a-b).abs().max() = 2; ((a-b).abs()/b.abs()).max() = 1; torch.linalg.norm(a-b) = sqrt(4.25);
//   torch.linalg.norm(a) = sqrt(30); a @ b / (norm(a) * norm(b)) = 23 / sqrt(30 * 20.25)
TEST_CASE("the metrics of two float tensors") {
  const auto s =
      compared(std::vector<float>{1, 2, 3, 4}, DType::float32, std::vector<float>{1, 2.5f, 3, 2}, DType::float32);
  CHECK(s.elements == 4);
  CHECK(s.differing == 2);
  CHECK(s.outside_tolerance == 2);
  CHECK(s.max_abs_diff == 2.0);
  CHECK(s.max_rel_diff == 1.0);
  CHECK(s.l2_diff() == doctest::Approx(std::sqrt(4.25)).epsilon(1e-15));
  CHECK(s.l2_a() == doctest::Approx(std::sqrt(30.0)).epsilon(1e-15));
  CHECK(s.cosine() == doctest::Approx(23.0 / std::sqrt(30.0 * 20.25)).epsilon(1e-15));
}

TEST_CASE("tolerance bounds are inclusive and scale with |b|, as torch.allclose") {
  const std::vector<double> a{1.0};
  CHECK(compared(a, DType::float64, std::vector<double>{1.5}, DType::float64, {0.5, 0}).outside_tolerance == 0);
  CHECK(compared(a, DType::float64, std::vector<double>{1.5}, DType::float64, {0.4999, 0}).outside_tolerance == 1);
  CHECK(compared(a, DType::float64, std::vector<double>{2.0}, DType::float64, {0, 0.5}).outside_tolerance == 0);
  CHECK(compared(a, DType::float64, std::vector<double>{2.0}, DType::float64, {0.25, 0.25}).outside_tolerance == 1);
  CHECK(compared(std::vector<double>{2.0}, DType::float64, a, DType::float64, {0, 0.5}).outside_tolerance ==
        1);  // |b| = 1
}

TEST_CASE("NaN equals NaN, NaN against a number is infinitely far, infinities of one sign are equal") {
  auto s = compared(std::vector<double>{kNaN, 1, kInf, kInf}, DType::float64,
                    std::vector<double>{-kNaN, 1, kInf, -kInf}, DType::float64);
  CHECK(s.differing == 1);
  CHECK(s.max_abs_diff == kInf);
  s = compared(std::vector<double>{kNaN, 0}, DType::float64, std::vector<double>{1, 0}, DType::float64, {1e300, 1e300});
  CHECK(s.differing == 1);
  CHECK(s.outside_tolerance == 1);  // no tolerance covers a NaN
  CHECK(s.max_abs_diff == kInf);
  CHECK(s.max_rel_diff == kInf);
  CHECK(std::isnan(s.l2_a()));  // norms propagate NaN, as torch.linalg.norm does
  // b == 0 and a != 0: an infinite relative difference; -0 and 0 are equal.
  s = compared(std::vector<float>{1, -0.0f}, DType::float32, std::vector<float>{0, 0}, DType::float32);
  CHECK((s.differing == 1 && s.max_rel_diff == kInf && s.max_abs_diff == 1.0));
}

TEST_CASE("cosine of zero vectors") {
  CHECK(compared(std::vector<float>{0, 0}, DType::float32, std::vector<float>{0, 0}, DType::float32).cosine() == 1.0);
  CHECK(compared(std::vector<float>{0, 0}, DType::float32, std::vector<float>{1, 0}, DType::float32).cosine() == 0.0);
}

TEST_CASE("integers compare exactly, beyond what a double holds") {
  const std::int64_t big = std::int64_t{1} << 53;
  auto s =
      compared(std::vector<std::int64_t>{big, 3}, DType::int64, std::vector<std::int64_t>{big + 1, 3}, DType::int64);
  CHECK(s.differing == 1);
  CHECK(s.outside_tolerance == 1);
  CHECK(s.max_abs_diff == 1.0);
  s = compared(std::vector<std::uint64_t>{0}, DType::uint64, std::vector<std::uint64_t>{~0ull}, DType::uint64);
  CHECK(s.max_abs_diff == std::ldexp(1.0, 64));
  s = compared(std::vector<std::int64_t>{std::numeric_limits<std::int64_t>::min()}, DType::int64,
               std::vector<std::int64_t>{std::numeric_limits<std::int64_t>::max()}, DType::int64);
  CHECK(s.max_abs_diff == std::ldexp(1.0, 64));
}

TEST_CASE("values of different dtypes compare after widening") {
  // 0x3c00 is float16 1.0, 0x3e00 is 1.5
  const auto s = compared(std::vector<float>{1, 1.5f, 2}, DType::float32,
                          std::vector<std::uint16_t>{0x3c00, 0x3e00, 0x3c00}, DType::float16);
  CHECK(s.differing == 1);
  CHECK(s.max_abs_diff == 1.0);
}

// za = torch.tensor([1+2j, 3-1j]); zb = torch.tensor([1+2j, 3j]): |za - zb| = [0, sqrt(9 + 16)] = [0, 5], |zb| =
// [sqrt(5), 3]
TEST_CASE("complex elements compare as complex numbers") {
  const auto s =
      compared(std::vector<float>{1, 2, 3, -1}, DType::complex64, std::vector<float>{1, 2, 0, 3}, DType::complex64);
  CHECK(s.elements == 2);
  CHECK(s.differing == 1);
  CHECK(s.max_abs_diff == 5.0);
  CHECK(s.max_rel_diff == doctest::Approx(5.0 / 3.0).epsilon(1e-15));
  CHECK(s.l2_a() == doctest::Approx(std::sqrt(15.0)).epsilon(1e-15));
  CHECK(s.cosine() == doctest::Approx(2.0 / std::sqrt(15.0 * 14.0)).epsilon(1e-15));  // Re(conj(a) . b) = 5 - 3
  // A real tensor against a complex one: imaginary parts 0.
  CHECK(
      compared(std::vector<float>{1, 3}, DType::float32, std::vector<float>{1, 0, 3, 0}, DType::complex64).differing ==
      0);
}

TEST_CASE("chunks accumulate to the whole, equal chunks counting in the norms") {
  std::vector<float> a(3000), b(3000);
  for (std::size_t i = 0; i < a.size(); ++i) {
    a[i] = static_cast<float>(std::sin(static_cast<double>(i)));
    b[i] = i >= 2000 ? a[i] * 1.5f : a[i];
  }
  const auto whole = compared(a, DType::float32, b, DType::float32);
  ElementStats pieces;
  checkpoint::accumulate_equal(bytes(a).first(2000 * 4), DType::float32, pieces);  // the first 2000: equal bytes
  ElementStats rest;
  checkpoint::accumulate(bytes(a).subspan(2000 * 4), DType::float32, bytes(b).subspan(2000 * 4), DType::float32, {},
                         rest);
  pieces.merge(rest);
  CHECK(pieces.elements == whole.elements);
  CHECK(pieces.differing == whole.differing);
  CHECK(pieces.max_abs_diff == whole.max_abs_diff);
  CHECK(pieces.max_rel_diff == whole.max_rel_diff);
  CHECK(pieces.l2_diff() == doctest::Approx(whole.l2_diff()).epsilon(1e-12));
  CHECK(pieces.l2_a() == doctest::Approx(whole.l2_a()).epsilon(1e-12));
  CHECK(pieces.cosine() == doctest::Approx(whole.cosine()).epsilon(1e-12));
}
