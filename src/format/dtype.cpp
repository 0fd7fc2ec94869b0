#include "format/dtype.hpp"

#include <array>

namespace ckpt {
namespace {

struct DTypeInfo {
  DType dtype;
  std::string_view torch;
  std::size_t size;
  bool floating;
  std::string_view safetensors;
  std::string_view storage;
};

constexpr std::array<DTypeInfo, 17> kInfo{{
    {DType::float64, "float64", 8, true, "F64", "DoubleStorage"},
    {DType::float32, "float32", 4, true, "F32", "FloatStorage"},
    {DType::float16, "float16", 2, true, "F16", "HalfStorage"},
    {DType::bfloat16, "bfloat16", 2, true, "BF16", "BFloat16Storage"},
    {DType::float8_e5m2, "float8_e5m2", 1, true, "F8_E5M2", "Float8_e5m2Storage"},
    {DType::float8_e4m3fn, "float8_e4m3fn", 1, true, "F8_E4M3", "Float8_e4m3fnStorage"},
    {DType::int64, "int64", 8, false, "I64", "LongStorage"},
    {DType::int32, "int32", 4, false, "I32", "IntStorage"},
    {DType::int16, "int16", 2, false, "I16", "ShortStorage"},
    {DType::int8, "int8", 1, false, "I8", "CharStorage"},
    {DType::uint64, "uint64", 8, false, "U64", "UInt64Storage"},
    {DType::uint32, "uint32", 4, false, "U32", "UInt32Storage"},
    {DType::uint16, "uint16", 2, false, "U16", "UInt16Storage"},
    {DType::uint8, "uint8", 1, false, "U8", "ByteStorage"},
    {DType::boolean, "bool", 1, false, "BOOL", "BoolStorage"},
    {DType::complex128, "complex128", 16, false, "C128", "ComplexDoubleStorage"},
    {DType::complex64, "complex64", 8, false, "C64", "ComplexFloatStorage"},
}};

const DTypeInfo& info(DType dtype) { return kInfo[static_cast<std::size_t>(dtype)]; }

}  // namespace

std::string_view torch_name(DType dtype) { return info(dtype).torch; }
std::size_t element_size(DType dtype) { return info(dtype).size; }
bool is_floating(DType dtype) { return info(dtype).floating; }
std::string_view safetensors_code(DType dtype) { return info(dtype).safetensors; }
std::string_view storage_class(DType dtype) { return info(dtype).storage; }

std::optional<DType> dtype_from_safetensors_code(std::string_view code) {
  for (const auto& i : kInfo) {
    if (i.safetensors == code) return i.dtype;
  }
  return std::nullopt;
}

std::optional<DType> dtype_from_storage_class(std::string_view name) {
  if (name == "UntypedStorage") return DType::uint8;
  for (const auto& i : kInfo) {
    if (i.storage == name) return i.dtype;
  }
  return std::nullopt;
}

std::optional<DType> dtype_from_torch_attribute(std::string_view name) {
  struct Alias {
    std::string_view name;
    DType dtype;
  };
  static constexpr std::array<Alias, 10> kAliases{{
      {"double", DType::float64}, {"float", DType::float32}, {"half", DType::float16},
      {"long", DType::int64}, {"int", DType::int32}, {"short", DType::int16},
      {"cfloat", DType::complex64}, {"cdouble", DType::complex128}, {"bool", DType::boolean},
      {"float8_e4m3", DType::float8_e4m3fn},
  }};
  for (const auto& a : kAliases) {
    if (a.name == name) return a.dtype;
  }
  for (const auto& i : kInfo) {
    if (i.torch == name) return i.dtype;
  }
  return std::nullopt;
}

}  // namespace ckpt
