// libFuzzer target: the JSON reader (Python's NaN/Infinity tokens included) and the trainer_state summary.
#include <cstdint>
#include <string_view>

#include "checkpoint/run_dir.hpp"
#include "format/json.hpp"
#include "util/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const auto doc = ckpt::json::parse({reinterpret_cast<const char*>(data), size});
    ckpt::checkpoint::summarize_trainer_state(doc);
    ckpt::json::dump(doc);
  } catch (const ckpt::Error&) {}
  return 0;
}
