// Tensor element types, named as torch names them, with the spellings each file format uses for them. Everything
// known about a dtype is one row of the table in dtype.cpp (checked against this enum's order at compile time);
// code that must treat each dtype differently switches over DType without a default arm, so that a dtype added here
// without its handling fails to compile (-Werror=switch).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace ckpt {

enum class DType : std::uint8_t {
  float64,
  float32,
  float16,
  bfloat16,
  float8_e5m2,
  float8_e4m3fn,
  int64,
  int32,
  int16,
  int8,
  uint64,
  uint32,
  uint16,
  uint8,
  boolean,
  complex128,
  complex64,
};
inline constexpr std::size_t kDTypeCount = static_cast<std::size_t>(DType::complex64) + 1;

// torch's name: "float32", "bfloat16", "int64", "bool", ...
std::string_view torch_name(DType dtype);
std::size_t element_size(DType dtype);
bool is_floating(DType dtype);  // real floating point (not complex)
bool is_complex(DType dtype);   // pairs of floats: element_size / 2 each
// The dtypes convert --dtype casts between (torch's rounding, format/dtype_cast).
bool castable(DType dtype);

// The short code safetensors spells dtypes with ("F32", "BF16", "I64", "BOOL", ...), which ckpt's archive manifest
// uses for every dtype. safetensors itself has no complex128: nullopt from safetensors_code, refused by its reader.
std::string_view short_code(DType dtype);
std::optional<DType> dtype_from_short_code(std::string_view code);
std::optional<std::string_view> safetensors_code(DType dtype);
std::optional<DType> dtype_from_safetensors_code(std::string_view code);

// A torch storage class name without its module ("FloatStorage"); UntypedStorage maps to uint8 bytes.
std::optional<DType> dtype_from_storage_class(std::string_view name);
std::string_view storage_class(DType dtype);

// An attribute of the torch module naming a dtype ("float32", "float", "half", "long", ...).
std::optional<DType> dtype_from_torch_attribute(std::string_view name);

}  // namespace ckpt
