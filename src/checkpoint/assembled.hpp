// A tensor put together from runs of elements in several files: a DeepSpeed ZeRO parameter from its ranks'
// partitions (checkpoint/zero.hpp), an FSDP tensor from its torch.distributed.checkpoint chunks. What
// `convert --consolidate` writes, one run after another, without ever holding a whole tensor in memory.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "format/dtype.hpp"
#include "util/mapped_file.hpp"

namespace ckpt::checkpoint {

// `count` contiguous elements of `dtype` at byte `offset` of `file` (which the reader that made it keeps mapped,
// and checked to hold them).
struct Piece {
  const MappedFile* file = nullptr;
  std::uint64_t offset = 0;
  std::uint64_t count = 0;
  DType dtype = DType::float32;
};

// A tensor of `shape` whose elements in row-major order are the pieces' elements one after another (their counts
// add up to the shape's numel), each converted to `dtype`. A tied tensor names the earlier one it is the same tensor
// as, and has no pieces.
struct AssembledTensor {
  std::string name;
  DType dtype = DType::float32;
  std::vector<std::int64_t> shape;
  std::vector<Piece> pieces;
  std::optional<std::string> tied_to;
};

}  // namespace ckpt::checkpoint
