// Reading safetensors files and validating them by the format's rules.
//
// Grammar:
//   file   = u64le N, header[N], buffer
//   header = JSON object, UTF-8, possibly right-padded with spaces:
//            { ["__metadata__": {str: str, ...},] name: {"dtype": CODE, "shape": [uint...],
//              "data_offsets": [begin, end]}, ... }
//   CODE   = BOOL U8 I8 I16 U16 F16 BF16 I32 U32 F32 F64 I64 U64 C64 F8_E5M2 F8_E4M3
// Valid only if: N <= 100,000,000; the tensors sorted by begin cover [0, len(buffer)) without gap or overlap;
// end - begin == numel * size(dtype) (overflow-checked); 8 + N + len(buffer) == file size exactly.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "format/dtype.hpp"
#include "util/atomic_file.hpp"

namespace ckpt::safetensors {

inline constexpr std::uint64_t kMaxHeaderSize = 100'000'000;

struct Tensor {
  std::string name;
  DType dtype = DType::uint8;
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0;  // relative to the buffer
  std::uint64_t end = 0;
};

struct Header {
  std::vector<Tensor> tensors;  // in buffer order
  std::vector<std::pair<std::string, std::string>> metadata;
  std::uint64_t header_size = 0;    // N
  std::uint64_t buffer_offset = 0;  // 8 + N
};

// Parses and validates the header of a whole file. Throws a corrupt Error naming the tensor or byte offset.
Header parse(std::span<const std::uint8_t> file);

// The same for a file on disk, reading only its header (for completeness checks of many checkpoints).
// Throws Error naming `path`.
Header read_header(const std::string& path);

// Writing: the header for `tensors`, which are first put in the safetensors library's order (its Dtype enum
// descending: U64 I64 F64 C64 F32 U32 I32 BF16 F16 U16 I16 F8 I8 U8 BOOL; then by name) with contiguous offsets
// from 0. Returns the 8-byte length and the JSON padded with spaces to a
// multiple of 8; the caller then writes each tensor's bytes in that order.
struct OutputTensor {
  std::string name;
  DType dtype = DType::uint8;
  std::vector<std::int64_t> shape;
};
std::string make_header(std::vector<OutputTensor>& tensors,
                        const std::vector<std::pair<std::string, std::string>>& metadata);

// Writes a whole file atomically (util/atomic_file.hpp): the header, then each tensor's bytes, which
// `write_tensor` appends to `out` when called for it, in file order.
void write_file(const std::string& path, std::vector<OutputTensor> tensors,
                const std::vector<std::pair<std::string, std::string>>& metadata,
                const std::function<void(const OutputTensor& tensor, AtomicFile& out)>& write_tensor,
                WriteOptions options = {});

// The bytes of one tensor, a view into `file`.
inline std::span<const std::uint8_t> tensor_bytes(std::span<const std::uint8_t> file, const Header& header,
                                                  const Tensor& tensor) {
  return file.subspan(static_cast<std::size_t>(header.buffer_offset + tensor.begin),
                      static_cast<std::size_t>(tensor.end - tensor.begin));
}

}  // namespace ckpt::safetensors
