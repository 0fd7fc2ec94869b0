#include <doctest/doctest.h>

#include "checkpoint/structure.hpp"
#include "format/json.hpp"
#include "util/error.hpp"

using namespace ckpt;

namespace {

// Decodes a structure whose stored tensors and arrays are all absent (empty bytes): malformed encodings must fail
// as corrupt before any stored data is asked for.
ErrorKind decode_failure(const std::string& text) {
  pickle::Graph graph;
  try {
    checkpoint::decode_structure(
        json::parse(text), graph, [&](const std::string&, bool, bool) { return graph.none(); },
        [](const std::string&) { return std::string(); });
  } catch (const Error& e) {
    return e.kind();
  }
  FAIL("decoded: " << text);
  return ErrorKind::io;
}

}  // namespace

// Regression (issue 20; tests/fuzz/regressions/safetensors-structure-ndarray-without-descr): keys an encoding
// lacks are never read from a const JSON object (a read past the end of its storage in a release build).
TEST_CASE("an encoded structure missing a key it needs is corrupt, whichever key") {
  for (const char* text :
       {R"({"$ndarray": "x", "shape": []})", R"({"$ndarray": "x", "descr": "<f4"})",
        R"({"$ndarray": "x", "descr": "<f4", "shape": "x"})", R"({"$ndarray": 3})", R"({"$tensor": 3})",
        R"({"$int": 3})", R"({"$float": "1.5"})", R"({"$bytes": 1})", R"({"$dict": {}})", R"({"$dict": [[1]]})",
        R"({"$global": ["a"]})", R"({"$numpy_dtype": 1})", R"({"$device": []})"}) {
    CAPTURE(text);
    CHECK(decode_failure(text) == ErrorKind::corrupt);
  }
}
