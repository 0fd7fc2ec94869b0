#include <doctest/doctest.h>

#include "format/dtype.hpp"

using namespace ckpt;

TEST_CASE("every dtype's spellings read back as that dtype") {
  for (std::size_t i = 0; i < kDTypeCount; ++i) {
    const auto dtype = static_cast<DType>(i);
    CAPTURE(torch_name(dtype));
    CHECK(dtype_from_torch_attribute(torch_name(dtype)) == dtype);
    CHECK(dtype_from_storage_class(storage_class(dtype)) == dtype);
    CHECK(dtype_from_short_code(short_code(dtype)) == dtype);
    if (const auto code = safetensors_code(dtype)) CHECK(dtype_from_safetensors_code(*code) == dtype);
    CHECK(element_size(dtype) >= 1);
    CHECK(!(is_floating(dtype) && is_complex(dtype)));
    if (castable(dtype)) CHECK(is_floating(dtype));
  }
}

TEST_CASE("safetensors has every dtype but complex128") {
  CHECK(!safetensors_code(DType::complex128));
  CHECK(!dtype_from_safetensors_code("C128"));
  CHECK(dtype_from_short_code("C128") == DType::complex128);  // the archive manifest's spelling
  CHECK(safetensors_code(DType::complex64) == std::string_view("C64"));
}
