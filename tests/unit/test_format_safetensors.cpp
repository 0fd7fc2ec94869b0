#include <doctest/doctest.h>

#include "bytes.hpp"
#include "growth.hpp"
#include "format/safetensors.hpp"
#include "util/error.hpp"

using namespace ckpt;
using namespace ckpt::test;

namespace {

std::string safetensors_file(std::string header, std::size_t data_bytes) {
  while ((header.size() % 8) != 0) header += ' ';
  return le64(header.size()) + header + std::string(data_bytes, '\0');
}

std::string error_where(const std::string& file) {
  try {
    safetensors::parse(as_bytes(file));
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::corrupt);
    return e.where();
  }
  FAIL("expected a corrupt error");
  return {};
}

}  // namespace

TEST_CASE("a valid file: tensors in buffer order, metadata kept") {
  const std::string file = safetensors_file(
      R"({"__metadata__":{"format":"pt"},"b":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},)"
      R"("a":{"dtype":"BF16","shape":[],"data_offsets":[24,26]},"e":{"dtype":"I64","shape":[0],"data_offsets":[26,26]}})",
      26);
  const auto h = safetensors::parse(as_bytes(file));
  REQUIRE(h.tensors.size() == 3);
  CHECK(h.tensors[0].name == "b");
  CHECK(h.tensors[0].dtype == DType::float32);
  CHECK(h.tensors[0].shape == std::vector<std::int64_t>{2, 3});
  CHECK(h.tensors[1].name == "a");
  CHECK(h.tensors[1].shape.empty());
  CHECK(h.tensors[2].end - h.tensors[2].begin == 0);
  REQUIRE(h.metadata.size() == 1);
  CHECK(h.metadata[0].second == "pt");
}

TEST_CASE("the format's rules are enforced") {
  CHECK(error_where(safetensors_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", 4)) == "tensor 'a'");
  CHECK(error_where(safetensors_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8)) == "tensor 'a'");
  CHECK(
      error_where(safetensors_file(
          R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
          8)) == "tensor 'b'");
  // trailing bytes beyond the last tensor
  CHECK(
      error_where(safetensors_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 5)).rfind("byte", 0) ==
      0);
  // a shape whose element count overflows 64 bits
  CHECK(error_where(safetensors_file(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,4]}})",
                                     4)) == "tensor 'a'");
  // header length beyond the limit and beyond the file
  CHECK(error_where(le64(200'000'000) + "{}") == "byte 0");
  CHECK_THROWS_AS(safetensors::parse(as_bytes(le64(64) + "{}")), Error);
  // not JSON
  CHECK(error_where(safetensors_file(R"({"a":)", 0)) == "header");
}

TEST_CASE("an unknown dtype is unsupported, not corrupt") {
  const std::string file = safetensors_file(R"({"a":{"dtype":"F4","shape":[1],"data_offsets":[0,1]}})", 1);
  try {
    safetensors::parse(as_bytes(file));
    FAIL("parsed");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::unsupported);
  }
}

TEST_CASE("complex128, which safetensors has no dtype for, is neither read nor written") {
  const std::string file = safetensors_file(R"({"a":{"dtype":"C128","shape":[1],"data_offsets":[0,16]}})", 16);
  CHECK_THROWS_AS(safetensors::parse(as_bytes(file)), Error);
  std::vector<safetensors::OutputTensor> tensors{{"z", DType::complex128, {1}}};
  try {
    safetensors::make_header(tensors, {});
    FAIL("a header with complex128 was made");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::unsupported);
    CHECK(e.where() == "tensor 'z'");
  }
}

TEST_CASE("every truncation fails") {
  const std::string file = safetensors_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 8);
  CHECK_NOTHROW(safetensors::parse(as_bytes(file)));
  for (std::size_t n = 0; n < file.size(); ++n)
    CHECK_THROWS_AS(safetensors::parse(as_bytes(std::string_view(file).substr(0, n))), Error);
}

TEST_CASE("the header of 300k tensors is made in time linear in their number") {
  // Built key by key in a Json object, 300k took minutes.
  const auto tensors_named = [](std::size_t n) {
    std::vector<safetensors::OutputTensor> tensors;
    for (std::size_t i = 0; i < n; ++i)
      tensors.push_back({"layer." + std::to_string(i) + ".weight", DType::float32, {2}});
    return tensors;
  };
  const auto make_header = [&](std::size_t n) {
    auto tensors = tensors_named(n);
    safetensors::make_header(tensors, {{"format", "pt"}});
  };
  CHECK(test::time_relative_to_a_map(300000, make_header) < 150);  // about 30 here; quadratic, over 1000
  auto tensors = tensors_named(300000);
  const std::string header = safetensors::make_header(tensors, {{"format", "pt"}});
  CHECK(header.find(R"({"__metadata__":{"format":"pt"},"layer.0.weight":)") == 8);
  std::size_t entries = 0;
  for (std::size_t at = header.find("data_offsets"); at != std::string::npos; at = header.find("data_offsets", at + 1))
    ++entries;
  CHECK(entries == 300000);
  // Sorted by name, as the safetensors library writes them: layer.99999 last.
  CHECK(header.find(R"("layer.99999.weight":{"dtype":"F32","shape":[2],"data_offsets":[2399992,2400000]}})") !=
        std::string::npos);
}
