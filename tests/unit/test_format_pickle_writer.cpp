#include <doctest/doctest.h>

#include "bytes.hpp"
#include "checkpoint/structure.hpp"
#include "checkpoint/value_data.hpp"
#include "format/pickle_writer.hpp"
#include "format/torch_archive.hpp"

using namespace ckpt;
using namespace ckpt::test;

// What the writer emits must read back, through our own reader, as the same values (Python's reading of it
// is checked by the convert interop tests).
TEST_CASE("values written as protocol 2 read back equal") {
  torch_archive::TorchFile file(data_path("tiny_values.pt"));
  const auto& g = file.graph();
  const std::string bytes = pickle::write(g, g.root());
  // Tensors read back as tensors need a persistent-id loader: reuse the original storages by key.
  auto reuse = [&](pickle::Graph& out, pickle::NodeId pid) {
    const auto& tuple = out.at(pid);
    out.storages.push_back(g.storages[0]);
    out.storages.back().key = out.at(tuple.items[2]).text;
    pickle::Node ref;
    ref.kind = pickle::Kind::storage;
    ref.integer = static_cast<std::int64_t>(out.storages.size() - 1);
    return out.add(std::move(ref));
  };
  const auto back = pickle::parse(as_bytes(bytes), reuse);
  CHECK(checkpoint::to_data(back, back.root()) == checkpoint::to_data(g, g.root()));
}

TEST_CASE("a numpy array never given its state round-trips as such") {
  // numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), b'b') with no BUILD after it (found by fuzz_roundtrip;
  // tests/fuzz/regressions/roundtrip-ndarray-without-state): the writer used to give it a uint8 dtype.
  const std::string input = std::string("\x80\x02", 2) + "cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" +
                            std::string("K\x00\x85", 3) +
                            "C\x01"
                            "b" +
                            "\x87R.";
  const auto g = pickle::parse(as_bytes(input));
  const std::string written = pickle::write(g, g.root());
  const auto back = pickle::parse(as_bytes(written));
  CHECK(json::dump(checkpoint::to_data(back, back.root())) == json::dump(checkpoint::to_data(g, g.root())));
  CHECK(pickle::write(back, back.root()) == written);
}

TEST_CASE("the structure encoding round-trips every kind it holds") {
  torch_archive::TorchFile file(data_path("tiny_values.pt"));
  const auto& g = file.graph();
  std::vector<checkpoint::NamedArray> arrays;
  const auto encoded = checkpoint::encode_structure(g, g.root(), arrays);
  REQUIRE(arrays.size() == 1);
  CHECK(arrays[0].name == "dtype_tensor");
  CHECK(encoded["int_big"]["$int"] == "1180591620717411303429");
  CHECK(encoded["tuple"]["$tuple"][1] == "two");
  pickle::Graph back;
  back.storages.push_back(g.storages[0]);
  const auto root = checkpoint::decode_structure(
      encoded, back,
      [&](const std::string&, bool, bool) {
        back.tensors.push_back(g.tensors[0]);
        back.tensors.back().storage = 0;
        pickle::Node n;
        n.kind = pickle::Kind::tensor;
        n.integer = static_cast<std::int64_t>(back.tensors.size() - 1);
        return back.add(std::move(n));
      },
      [](const std::string&) { return std::string(); });
  CHECK(checkpoint::to_data(back, root) == checkpoint::to_data(g, g.root()));
}
