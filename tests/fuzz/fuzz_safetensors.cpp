// libFuzzer target: safetensors header validation and the tensor views it hands out.
#include <cstdint>
#include <span>

#include "checkpoint/tensor_scan.hpp"
#include "format/safetensors.hpp"
#include "util/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const std::span<const std::uint8_t> file(data, size);
    const auto header = ckpt::safetensors::parse(file);
    for (const auto& t : header.tensors) {
      ckpt::checkpoint::count_nonfinite(ckpt::safetensors::tensor_bytes(file, header, t), t.dtype, t.shape,
                                        ckpt::checkpoint::contiguous_strides(t.shape));
    }
  } catch (const ckpt::Error&) {
  }
  return 0;
}
