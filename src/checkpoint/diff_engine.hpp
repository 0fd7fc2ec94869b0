// Internal to diff (checkpoint/diff*.cpp): the tensor comparison engine. It reads the elements of tensor pairs
// (contiguous views with pread, strided ones gathered through a window) and compares them on every core, bytes
// first and values only where bytes differ, filling each pair's TensorDiff (status and ElementStats); the
// statistics are merged in job order, so the result does not depend on the number of threads. The element
// statistics themselves (accumulate, ElementStats) are diff.hpp's.
#pragma once

#include <cstdint>
#include <vector>

#include "checkpoint/diff.hpp"
#include "checkpoint/diff_input.hpp"
#include "format/pickle.hpp"
#include "util/byte_buffer.hpp"

namespace ckpt::checkpoint {

// Whether two numbers are equal as elements compare: a == b, or both NaN.
bool same_number(double a, double b);

}  // namespace ckpt::checkpoint

namespace ckpt::checkpoint::diff_detail {

// A tensor of a loaded file.
struct TensorSide {
  const LoadedFile* file = nullptr;
  const pickle::TensorRef* tensor = nullptr;
};

// The bytes of a strided view around the elements being gathered, so that neighbours come from one read.
struct Window {
  const LoadedFile* file = nullptr;
  std::uint64_t start = 0;
  ByteBuffer bytes;
};

// Elements [first, first + count) of a tensor in row-major order, its bytes into `out`: one read when the view is
// contiguous, else gathered through `window`, a chunk of the view's extent at a time. The view's size must have
// been checked (check_view_size) and `first + count` be at most its number of elements.
void read_elements(const TensorSide& side, std::uint64_t first, std::uint64_t count, std::uint64_t chunk_bytes,
                   ByteBuffer& out, Readers& readers, Window& window);

// A tensor's number of elements; its shape was checked when its file was parsed.
std::uint64_t numel_of(const pickle::TensorRef& t);

// A pair of tensors of one shape whose values are compared: the TensorDiff it fills, which holds their names,
// dtypes and shapes and the status set from these (identical or dtype_changed) before the comparison.
struct Pending {
  std::size_t section = 0;
  std::size_t tensor = 0;
  TensorSide a;
  TensorSide b;
};

// A pair of views compared as an earlier pending pair: its TensorDiff takes that one's result.
struct Tied {
  std::size_t pending;
  std::size_t section;
  std::size_t tensor;
};

// Compares the values of every pending pair, chunk by chunk on `options.threads` cores, and sets the statuses and
// statistics of their TensorDiffs in `result`, then those of the tied pairs. Reports progress through
// `options.progress`. Throws what reading throws, naming the tensor.
void compare_tensor_values(const std::vector<Pending>& pending, const std::vector<Tied>& tied_pairs,
                           const DiffOptions& options, DiffResult& result);

}  // namespace ckpt::checkpoint::diff_detail
