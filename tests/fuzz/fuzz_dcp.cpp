// libFuzzer target: a torch.distributed.checkpoint `.metadata` file through the DCP metadata reader, then every
// tensor's chunks cut into row-major runs (the geometry convert --consolidate relies on).
#include <cstdint>
#include <span>

#include "format/dcp.hpp"
#include "util/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const auto metadata = ckpt::dcp::parse_metadata({data, size});
    for (const auto& item : metadata.items) {
      if (!item.is_bytes) ckpt::dcp::row_major_runs(item, 4096);
    }
  } catch (const ckpt::Error&) {}
  return 0;
}
