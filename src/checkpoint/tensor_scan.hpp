// Reading element values out of raw tensor bytes: non-finite counts for `verify`, and the few scalars
// (an optimizer's step) that a summary needs. Little-endian element bytes, as every format we read stores.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "format/dtype.hpp"

namespace ckpt::checkpoint {

struct NonFiniteCount {
  std::uint64_t nan = 0;
  std::uint64_t inf = 0;
};

// Counts NaN and infinite elements of a strided view whose first element is at the start of `bytes`.
// Non-floating dtypes count nothing. The caller guarantees the view lies inside `bytes`.
NonFiniteCount count_nonfinite(std::span<const std::uint8_t> bytes, DType dtype, const std::vector<std::int64_t>& shape,
                               const std::vector<std::int64_t>& stride);

// The value of a one-element tensor as a double (widen_to_double); nullopt for complex dtypes.
std::optional<double> scalar_value(std::span<const std::uint8_t> bytes, DType dtype);

// Strides of a contiguous (row-major) tensor of `shape`.
std::vector<std::int64_t> contiguous_strides(const std::vector<std::int64_t>& shape);

// One step of a row-major walk over a strided view (an odometer): `index`, a position in `shape`, to the next one, and
// `element`, that position's offset in elements (the sum of index[d] * stride[d]), with it. After the last position
// both return to the first and the result is false.
bool next_element(const std::vector<std::int64_t>& shape, const std::vector<std::int64_t>& stride,
                  std::vector<std::int64_t>& index, std::uint64_t& element);

}  // namespace ckpt::checkpoint
