#include "checkpoint/tensor_scan.hpp"

#include <cstring>

#include "format/dtype_cast.hpp"

namespace ckpt::checkpoint {
namespace {

// Classifies one element by its exponent bits: 0 finite, 1 NaN, 2 infinite.
template <typename Bits, Bits ExponentMask, Bits MantissaMask>
int classify(const std::uint8_t* p) {
  Bits v;
  std::memcpy(&v, p, sizeof v);
  if ((v & ExponentMask) != ExponentMask) return 0;
  return (v & MantissaMask) != 0 ? 1 : 2;
}

int classify_element(const std::uint8_t* p, DType dtype) {
  switch (dtype) {
    case DType::float32:
      return classify<std::uint32_t, 0x7F800000u, 0x007FFFFFu>(p);
    case DType::float64:
      return classify<std::uint64_t, 0x7FF0000000000000ull, 0x000FFFFFFFFFFFFFull>(p);
    case DType::float16:
      return classify<std::uint16_t, 0x7C00, 0x03FF>(p);
    case DType::bfloat16:
      return classify<std::uint16_t, 0x7F80, 0x007F>(p);
    case DType::float8_e5m2:
      return classify<std::uint8_t, 0x7C, 0x03>(p);
    case DType::float8_e4m3fn:
      return (p[0] & 0x7F) == 0x7F ? 1 : 0;  // no infinities in e4m3fn
    case DType::int64:
    case DType::int32:
    case DType::int16:
    case DType::int8:
    case DType::uint64:
    case DType::uint32:
    case DType::uint16:
    case DType::uint8:
    case DType::boolean:
    case DType::complex128:  // complex tensors are not scanned (count_nonfinite: real floating point only)
    case DType::complex64:
      break;
  }
  return 0;
}

}  // namespace

NonFiniteCount count_distinct(std::span<const std::uint8_t> bytes, DType dtype, const std::vector<std::int64_t>& shape,
                              const std::vector<std::int64_t>& stride);

NonFiniteCount count_nonfinite(std::span<const std::uint8_t> bytes, DType dtype,
                               const std::vector<std::int64_t>& full_shape,
                               const std::vector<std::int64_t>& full_stride) {
  NonFiniteCount count;
  if (!is_floating(dtype)) return count;
  // Dimensions of stride 0 (expanded views) repeat the same elements: count the distinct ones once and scale,
  // so the work is bounded by the storage, not by the view's element count.
  std::vector<std::int64_t> shape;
  std::vector<std::int64_t> stride;
  std::uint64_t repeats = 1;
  for (std::size_t i = 0; i < full_shape.size(); ++i) {
    if (full_shape[i] == 0) return count;
    if (full_stride[i] == 0) {
      repeats *= static_cast<std::uint64_t>(full_shape[i]);
    } else {
      shape.push_back(full_shape[i]);
      stride.push_back(full_stride[i]);
    }
  }
  const NonFiniteCount distinct = count_distinct(bytes, dtype, shape, stride);
  return {distinct.nan * repeats, distinct.inf * repeats};
}

NonFiniteCount count_distinct(std::span<const std::uint8_t> bytes, DType dtype, const std::vector<std::int64_t>& shape,
                              const std::vector<std::int64_t>& stride) {
  NonFiniteCount count;
  const std::size_t es = element_size(dtype);
  for (std::int64_t d : shape) {
    if (d == 0) return count;
  }
  auto tally = [&](const std::uint8_t* p) {
    int c = classify_element(p, dtype);
    if (c == 1)
      ++count.nan;
    else if (c == 2)
      ++count.inf;
  };
  if (stride == contiguous_strides(shape)) {
    std::uint64_t n = 1;
    for (std::int64_t d : shape) n *= static_cast<std::uint64_t>(d);
    for (std::uint64_t i = 0; i < n; ++i) tally(bytes.data() + i * es);
    return count;
  }
  std::vector<std::int64_t> index(shape.size(), 0);
  std::uint64_t offset = 0;
  do {
    tally(bytes.data() + offset * es);
  } while (next_element(shape, stride, index, offset));
  return count;
}

std::optional<double> scalar_value(std::span<const std::uint8_t> bytes, DType dtype) {
  if (bytes.size() < element_size(dtype) || is_complex(dtype)) return std::nullopt;
  double value = 0;
  widen_to_double(bytes.first(element_size(dtype)), dtype, std::span(&value, 1));
  return value;
}

std::vector<std::int64_t> contiguous_strides(const std::vector<std::int64_t>& shape) {
  std::vector<std::int64_t> strides(shape.size(), 1);
  for (std::size_t i = shape.size(); i-- > 1;) strides[i - 1] = strides[i] * shape[i];
  return strides;
}

bool next_element(const std::vector<std::int64_t>& shape, const std::vector<std::int64_t>& stride,
                  std::vector<std::int64_t>& index, std::uint64_t& element) {
  for (std::size_t d = shape.size(); d-- > 0;) {
    if (++index[d] < shape[d]) {
      element += static_cast<std::uint64_t>(stride[d]);
      return true;
    }
    element -= static_cast<std::uint64_t>(stride[d]) * static_cast<std::uint64_t>(shape[d] - 1);
    index[d] = 0;
  }
  return false;
}

}  // namespace ckpt::checkpoint
