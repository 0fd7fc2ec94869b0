#include "format/dtype.hpp"

#include <array>

namespace ckpt {
namespace {

enum class Family : std::uint8_t { floating, integer, boolean, complex };

struct DTypeInfo {
  DType dtype;
  std::string_view torch;
  std::size_t size;
  Family family;
  bool castable;
  std::string_view code;
  bool in_safetensors;
  std::string_view storage;
};

constexpr std::array<DTypeInfo, kDTypeCount> kInfo{{
    {DType::float64, "float64", 8, Family::floating, true, "F64", true, "DoubleStorage"},
    {DType::float32, "float32", 4, Family::floating, true, "F32", true, "FloatStorage"},
    {DType::float16, "float16", 2, Family::floating, true, "F16", true, "HalfStorage"},
    {DType::bfloat16, "bfloat16", 2, Family::floating, true, "BF16", true, "BFloat16Storage"},
    {DType::float8_e5m2, "float8_e5m2", 1, Family::floating, false, "F8_E5M2", true, "Float8_e5m2Storage"},
    {DType::float8_e4m3fn, "float8_e4m3fn", 1, Family::floating, false, "F8_E4M3", true, "Float8_e4m3fnStorage"},
    {DType::int64, "int64", 8, Family::integer, false, "I64", true, "LongStorage"},
    {DType::int32, "int32", 4, Family::integer, false, "I32", true, "IntStorage"},
    {DType::int16, "int16", 2, Family::integer, false, "I16", true, "ShortStorage"},
    {DType::int8, "int8", 1, Family::integer, false, "I8", true, "CharStorage"},
    {DType::uint64, "uint64", 8, Family::integer, false, "U64", true, "UInt64Storage"},
    {DType::uint32, "uint32", 4, Family::integer, false, "U32", true, "UInt32Storage"},
    {DType::uint16, "uint16", 2, Family::integer, false, "U16", true, "UInt16Storage"},
    {DType::uint8, "uint8", 1, Family::integer, false, "U8", true, "ByteStorage"},
    {DType::boolean, "bool", 1, Family::boolean, false, "BOOL", true, "BoolStorage"},
    {DType::complex128, "complex128", 16, Family::complex, false, "C128", false, "ComplexDoubleStorage"},
    {DType::complex64, "complex64", 8, Family::complex, false, "C64", true, "ComplexFloatStorage"},
}};

constexpr bool rows_in_enum_order() {
  for (std::size_t i = 0; i < kInfo.size(); ++i) {
    if (static_cast<std::size_t>(kInfo[i].dtype) != i) return false;
  }
  return true;
}
static_assert(rows_in_enum_order(), "kInfo is indexed by DType: one row per dtype, in the enum's order");

const DTypeInfo& info(DType dtype) { return kInfo[static_cast<std::size_t>(dtype)]; }

}  // namespace

std::string_view torch_name(DType dtype) { return info(dtype).torch; }
std::size_t element_size(DType dtype) { return info(dtype).size; }
bool is_floating(DType dtype) { return info(dtype).family == Family::floating; }
bool is_complex(DType dtype) { return info(dtype).family == Family::complex; }
bool castable(DType dtype) { return info(dtype).castable; }
std::string_view short_code(DType dtype) { return info(dtype).code; }
std::string_view storage_class(DType dtype) { return info(dtype).storage; }

std::optional<std::string_view> safetensors_code(DType dtype) {
  if (!info(dtype).in_safetensors) return std::nullopt;
  return info(dtype).code;
}

std::optional<DType> dtype_from_short_code(std::string_view code) {
  for (const auto& i : kInfo) {
    if (i.code == code) return i.dtype;
  }
  return std::nullopt;
}

std::optional<DType> dtype_from_safetensors_code(std::string_view code) {
  const auto dtype = dtype_from_short_code(code);
  if (!dtype || !info(*dtype).in_safetensors) return std::nullopt;
  return dtype;
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
      {"double", DType::float64},
      {"float", DType::float32},
      {"half", DType::float16},
      {"long", DType::int64},
      {"int", DType::int32},
      {"short", DType::int16},
      {"cfloat", DType::complex64},
      {"cdouble", DType::complex128},
      {"bool", DType::boolean},
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
