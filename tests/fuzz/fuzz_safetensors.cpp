// libFuzzer target: a whole safetensors file. Its header validation and the tensor views it hands out; then, from
// a memory file, the source loader (a checkpoint file ckpt stored as safetensors: its ckpt_structure metadata
// decoded back into a value graph), that graph as JSON data, and what inspect --verify does with the file.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <span>
#include <string>

#include "checkpoint/inspect.hpp"
#include "checkpoint/source.hpp"
#include "checkpoint/tensor_scan.hpp"
#include "checkpoint/value_data.hpp"
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
    return 0;
  }
  static const int fd = ::memfd_create("fuzz_safetensors", 0);
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, data, size, 0) != static_cast<ssize_t>(size)) return 0;
  const std::string path = "/proc/self/fd/" + std::to_string(fd);
  try {
    const auto source = ckpt::checkpoint::load_source(path);
    ckpt::checkpoint::check_expansion(source->graph(), source->graph().root());
    ckpt::checkpoint::to_data(source->graph(), source->graph().root());
  } catch (const ckpt::Error&) {}
  try {
    ckpt::checkpoint::InspectOptions options;
    options.verify = true;
    ckpt::checkpoint::inspect_file(path, options);
  } catch (const ckpt::Error&) {}
  return 0;
}
