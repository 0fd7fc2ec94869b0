// json::Fields, Elements and Value (format/json.hpp): typed reads of a file's JSON that throw corrupt naming the
// file and the key path.
#include <algorithm>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>

#include "format/json.hpp"
#include "util/error.hpp"

namespace ckpt::json {
namespace {

bool plain_key(std::string_view key) {
  return !key.empty() && std::all_of(key.begin(), key.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '$' ||
           c == '-';
  });
}

std::string member_path(const std::string& parent, std::string_view key) {
  if (!plain_key(key)) return parent + "[" + dump(Json(std::string(key))) + "]";
  return parent.empty() ? std::string(key) : parent + "." + std::string(key);
}

[[noreturn]] void fail_at(const Location& where, const std::string& key_path, const std::string& what) {
  throw Error(ErrorKind::corrupt, *where.path, key_path, what);
}

std::optional<std::string> as_string(const Json& v) {
  if (!v.is_string()) return std::nullopt;
  return v.get<std::string>();
}

std::optional<std::int64_t> as_int64(const Json& v, std::int64_t min, std::int64_t max) {
  std::int64_t x = 0;
  if (v.is_number_unsigned()) {
    if (v.get<std::uint64_t>() > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
      return std::nullopt;
    x = static_cast<std::int64_t>(v.get<std::uint64_t>());
  } else if (v.is_number_integer()) {
    x = v.get<std::int64_t>();
  } else {
    return std::nullopt;
  }
  if (x < min || x > max) return std::nullopt;
  return x;
}

std::optional<std::uint64_t> as_uint64(const Json& v, std::uint64_t max) {
  if (!v.is_number_unsigned() || v.get<std::uint64_t>() > max) return std::nullopt;
  return v.get<std::uint64_t>();
}

std::optional<double> as_number(const Json& v) {
  if (!v.is_number()) return std::nullopt;
  return v.get<double>();
}

std::optional<bool> as_boolean(const Json& v) {
  if (!v.is_boolean()) return std::nullopt;
  return v.get<bool>();
}

std::string not_int64(std::int64_t min, std::int64_t max) {
  if (min == std::numeric_limits<std::int64_t>::min() && max == std::numeric_limits<std::int64_t>::max())
    return "is not an integer";
  return "is not an integer from " + std::to_string(min) + " to " + std::to_string(max);
}

std::string not_uint64(std::uint64_t max) {
  if (max == std::numeric_limits<std::uint64_t>::max()) return "is not a non-negative integer";
  return "is not an integer from 0 to " + std::to_string(max);
}

}  // namespace

std::string Value::key_path() const {
  if (index_) return parent_->key_path + "[" + std::to_string(*index_) + "]";
  return member_path(parent_->key_path, key_);
}

void Value::fail(const std::string& what) const { fail_at(*parent_, key_path(), what); }

std::string Value::string() const {
  if (auto s = as_string(*json_)) return std::move(*s);
  fail("is not a string");
}

std::int64_t Value::int64(std::int64_t min, std::int64_t max) const {
  if (auto x = as_int64(*json_, min, max)) return *x;
  fail(not_int64(min, max));
}

std::uint64_t Value::uint64(std::uint64_t max) const {
  if (auto x = as_uint64(*json_, max)) return *x;
  fail(not_uint64(max));
}

double Value::number() const {
  if (auto x = as_number(*json_)) return *x;
  fail("is not a number");
}

bool Value::boolean() const {
  if (auto x = as_boolean(*json_)) return *x;
  fail("is not true or false");
}

Fields Value::object() const { return Fields(*json_, Location{parent_->path, key_path(), parent_->wrong_type}); }

Elements Value::array() const { return Elements(*json_, Location{parent_->path, key_path(), parent_->wrong_type}); }

Elements::Elements(const Json& array, std::string path, std::string key_path, WrongType wrong_type)
    : Elements(array, Location{std::make_shared<const std::string>(std::move(path)), std::move(key_path), wrong_type}) {
}

Elements::Elements(const Json& array, Location where) : array_(&array), items_(nullptr), where_(std::move(where)) {
  if (!array.is_array()) fail("is not an array");
  items_ = &array.get_ref<const Json::array_t&>();
}

Value Elements::at(std::size_t index) const {
  if (index >= items_->size()) fail("has no element " + std::to_string(index));
  return Value((*items_)[index], where_, index);
}

void Elements::fail(const std::string& what) const { fail_at(where_, where_.key_path, what); }

Fields::Fields(const Json& object, std::string path, std::string key_path, WrongType wrong_type)
    : Fields(object, Location{std::make_shared<const std::string>(std::move(path)), std::move(key_path), wrong_type}) {}

Fields::Fields(const Json& object, Location where) : object_(&object), where_(std::move(where)) {
  if (!object.is_object()) fail(where_.key_path.empty() ? "is not a JSON object" : "is not an object");
}

std::string Fields::key_path(std::string_view key) const { return member_path(where_.key_path, key); }

void Fields::fail(const std::string& what) const { fail_at(where_, where_.key_path, what); }

bool Fields::has(std::string_view key) const { return object_->find(key) != object_->end(); }

std::optional<Value> Fields::optional(std::string_view key) const {
  const auto it = object_->find(key);
  if (it == object_->end()) return std::nullopt;
  return Value(*it, where_, key);
}

Value Fields::required(std::string_view key) const {
  if (auto v = optional(key)) return *v;
  fail_at(where_, key_path(key), "is missing");
}

Json Fields::value_or_null(std::string_view key) const {
  const auto it = object_->find(key);
  return it == object_->end() ? Json(nullptr) : *it;
}

std::optional<Value> Fields::present(std::string_view key, const std::function<bool(const Json&)>& of_type) const {
  auto v = optional(key);
  if (v && where_.wrong_type == WrongType::absent && !of_type(v->json())) return std::nullopt;
  return v;
}

std::optional<std::string> Fields::optional_string(std::string_view key) const {
  if (auto v = present(key, [](const Json& j) { return j.is_string(); })) return v->string();
  return std::nullopt;
}

std::optional<std::int64_t> Fields::optional_int64(std::string_view key, std::int64_t min, std::int64_t max) const {
  if (auto v = present(key, [&](const Json& j) { return as_int64(j, min, max).has_value(); }))
    return v->int64(min, max);
  return std::nullopt;
}

std::optional<double> Fields::optional_number(std::string_view key) const {
  if (auto v = present(key, [](const Json& j) { return j.is_number(); })) return v->number();
  return std::nullopt;
}

std::optional<bool> Fields::optional_boolean(std::string_view key) const {
  if (auto v = present(key, [](const Json& j) { return j.is_boolean(); })) return v->boolean();
  return std::nullopt;
}

std::optional<Fields> Fields::optional_object(std::string_view key) const {
  if (auto v = present(key, [](const Json& j) { return j.is_object(); })) return v->object();
  return std::nullopt;
}

std::optional<Elements> Fields::optional_array(std::string_view key) const {
  if (auto v = present(key, [](const Json& j) { return j.is_array(); })) return v->array();
  return std::nullopt;
}

std::string Fields::string(std::string_view key) const { return required(key).string(); }
std::int64_t Fields::int64(std::string_view key, std::int64_t min, std::int64_t max) const {
  return required(key).int64(min, max);
}
std::uint64_t Fields::uint64(std::string_view key, std::uint64_t max) const { return required(key).uint64(max); }
double Fields::number(std::string_view key) const { return required(key).number(); }
bool Fields::boolean(std::string_view key) const { return required(key).boolean(); }
Fields Fields::object(std::string_view key) const { return required(key).object(); }
Elements Fields::array(std::string_view key) const { return required(key).array(); }

void Fields::for_each(const std::function<void(const std::string& key, const Value& value)>& visit) const {
  for (const auto& [key, value] : object_->get_ref<const Json::object_t&>()) visit(key, Value(value, where_, key));
}

}  // namespace ckpt::json
