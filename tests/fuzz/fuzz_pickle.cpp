// libFuzzer target: the restricted unpickler, and the conversion of what it builds to JSON data.
#include <cstdint>
#include <span>

#include "checkpoint/value_data.hpp"
#include "format/pickle.hpp"
#include "util/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const auto graph = ckpt::pickle::parse({data, size});
    ckpt::checkpoint::to_data(graph, graph.root());
  } catch (const ckpt::Error&) {}
  return 0;
}
