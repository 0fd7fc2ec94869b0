// libFuzzer target: a whole torch.save file (zip container, data.pkl, storage records) from a memory file,
// then what inspect --verify does with it.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <string>

#include "checkpoint/inspect.hpp"
#include "util/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const int fd = ::memfd_create("fuzz_torch_archive", 0);
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, data, size, 0) != static_cast<ssize_t>(size)) return 0;
  const std::string path = "/proc/self/fd/" + std::to_string(fd);
  try {
    ckpt::checkpoint::InspectOptions options;
    options.verify = true;
    ckpt::checkpoint::inspect_file(path, options);
  } catch (const ckpt::Error&) {}
  return 0;
}
