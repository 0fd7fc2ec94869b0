// libFuzzer target: whatever the unpickler accepts and the protocol-2 writer agrees to write (it refuses, for
// one, global names that are not dotted identifiers), the unpickler reads back as the same values (compared as
// serialised JSON, so NaN equals NaN), and writing that again gives the very same bytes.
#include <cstdint>
#include <cstdlib>
#include <span>

#include "checkpoint/value_data.hpp"
#include "format/pickle.hpp"
#include "format/pickle_writer.hpp"
#include "util/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  ckpt::pickle::Graph graph;
  std::string before;
  try {
    graph = ckpt::pickle::parse({data, size});
    before = ckpt::json::dump(ckpt::checkpoint::to_data(graph, graph.root()));
  } catch (const ckpt::Error&) {
    return 0;  // not a value we accept: nothing to round-trip
  }
  std::string written;
  try {
    written = ckpt::pickle::write(graph, graph.root());
  } catch (const ckpt::Error&) {
    return 0;  // a value the writer refuses to write
  }
  const auto back = ckpt::pickle::parse({reinterpret_cast<const std::uint8_t*>(written.data()), written.size()});
  if (ckpt::json::dump(ckpt::checkpoint::to_data(back, back.root())) != before) std::abort();
  if (ckpt::pickle::write(back, back.root()) != written) std::abort();
  return 0;
}
