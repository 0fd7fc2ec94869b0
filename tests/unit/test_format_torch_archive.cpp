#include <doctest/doctest.h>

#include <cstring>

#include "bytes.hpp"
#include "format/torch_archive.hpp"
#include "util/error.hpp"

using namespace ckpt;
using namespace ckpt::test;
using pickle::Kind;

// The expectations below are tests/data/make_data.py's tensors as Python describes them.
TEST_CASE("a state dict with shared, strided, 0-d and empty tensors") {
  torch_archive::TorchFile file(data_path("tiny_state_dict.pt"));
  const auto& g = file.graph();
  CHECK(file.prefix() == "tiny_state_dict/");
  REQUIRE(g.is(g.root(), Kind::dict));
  CHECK(g.at(g.root()).flag);  // an OrderedDict
  auto tensor = [&](const char* name) -> const pickle::TensorRef& {
    const pickle::NodeId* id = g.dict_get(g.root(), name);
    REQUIRE(id != nullptr);
    REQUIRE(g.is(*id, Kind::tensor));
    return g.tensors[static_cast<std::size_t>(g.at(*id).integer)];
  };
  const auto& weight = tensor("weight");
  CHECK(weight.dtype == DType::float32);
  CHECK(weight.shape == std::vector<std::int64_t>{3, 4});
  CHECK(weight.stride == std::vector<std::int64_t>{4, 1});
  const auto& transposed = tensor("weight_t");
  CHECK(transposed.shape == std::vector<std::int64_t>{4, 3});
  CHECK(transposed.stride == std::vector<std::int64_t>{1, 4});
  CHECK(transposed.storage == weight.storage);
  CHECK(tensor("tied").storage == weight.storage);
  CHECK(g.storages.size() == 4);  // weight, bias, step, empty
  CHECK(tensor("bias").dtype == DType::float64);
  CHECK(tensor("step").shape.empty());
  CHECK(tensor("empty").dtype == DType::bfloat16);
  CHECK(file.tensor_extent(tensor("empty")).empty());
  // arange(12) as float32: element 5 of the storage is 5.0f
  const auto bytes = file.tensor_extent(weight);
  REQUIRE(bytes.size() == 48);
  float five;
  std::memcpy(&five, bytes.data() + 20, 4);
  CHECK(five == 5.0f);
}

TEST_CASE("values the unpickler interprets") {
  torch_archive::TorchFile file(data_path("tiny_values.pt"));
  const auto& g = file.graph();
  CHECK(g.is(*g.dict_get(g.root(), "int_big"), Kind::big_integer));
  CHECK(g.at(*g.dict_get(g.root(), "int_neg")).integer == -1099511627776LL);
  CHECK(g.at(*g.dict_get(g.root(), "bytes")).text == std::string("\x00\xff"
                                                                 "ab",
                                                                 4));
  CHECK(g.is(*g.dict_get(g.root(), "set"), Kind::set));
  CHECK(g.at(*g.dict_get(g.root(), "device")).text == "cpu");
  const auto* t = g.dict_get(g.root(), "dtype_tensor");
  CHECK(g.tensors[static_cast<std::size_t>(g.at(*t).integer)].dtype == DType::float16);
}

TEST_CASE("not a torch archive, or a legacy one") {
  const std::string dir = CKPT_TEST_DATA;
  CHECK_THROWS_AS(torch_archive::TorchFile(dir + "/make_data.py"), Error);
  try {
    torch_archive::TorchFile(dir + "/does-not-exist.pt");
    FAIL("opened");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::not_found);
  }
  const std::string legacy = "\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19\x2e";
  CHECK(torch_archive::sniff(as_bytes(legacy)) == torch_archive::Container::torch_legacy);
}
