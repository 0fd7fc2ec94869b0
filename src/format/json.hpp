// JSON as Python's json module reads and writes it, since trainer_state.json, config.json and the rest come from
// Python:
//
//   value   = ws ( object | array | string | number | "true" | "false" | "null"
//                | "NaN" | "Infinity" | "-Infinity" ) ws
//   object  = "{" [ string ":" value *( "," string ":" value ) ] "}"
//   array   = "[" [ value *( "," value ) ] "]"
//   string  = '"' *( any byte >= 0x20 but '"' and '\' | escape ) '"'
//   escape  = '\' ( '"' | '\' | '/' | 'b' | 'f' | 'n' | 'r' | 't' | 'u' 4hex )
//   number  = [ "-" ] ( "0" | digit1-9 *digit ) [ "." 1*digit ] [ ( "e" | "E" ) [ "+" | "-" ] 1*digit ]
//   ws      = *( " " | "\t" | "\n" | "\r" )
//
// What Python does and a strict RFC 8259 reader would not, kept here:
// - NaN, Infinity, -Infinity (a diverged run's trainer_state.json holds them);
// - a lone surrogate escape ("\udce9", what Python writes for a path byte that is not UTF-8) is kept, stored as the
//   three-byte generalized UTF-8 of the surrogate; a high surrogate escape followed by a low one is one character;
// - integers are exact at any size: beyond 64 bits they are kept as their digits (see big_integer_digits);
// - a float beyond double's range is +-inf, one below it 0 (correctly rounded, as Python's float());
// - a repeated object key keeps its first position and its last value (a Python dict), in linear time.
// Non-negative integers are number_unsigned, negative ones number_integer (as nlohmann's own parser makes them).
// Documents are at most kMaxDepth deep, so every later recursive walk terminates.
#pragma once

#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

namespace ckpt::json {

using Json = nlohmann::ordered_json;

inline constexpr std::size_t kMaxDepth = 512;

// Parses `text`; throws a corrupt Error naming the byte offset of a syntax error (unsupported past kMaxDepth).
Json parse(std::string_view text);

// Fills an object in linear time. ordered_json's operator[] and emplace search the members linearly, so filling an
// object key by key through them is quadratic in the number of keys (100k keys from a file: tens of seconds).
// A repeated key keeps its first position and takes the last value, as a Python dict does.
class ObjectBuilder {
 public:
  explicit ObjectBuilder(std::size_t expected_members = 0) {
    object_.get_ref<Json::object_t&>().reserve(expected_members);
  }
  void set(std::string key, Json value);
  Json take() { return std::move(object_); }

 private:
  Json object_ = Json::object();
  std::unordered_map<std::string, std::size_t> positions_;  // filled once the object outgrows a linear search
};

// Reads and parses a whole regular file (at most `max_bytes`); throws Error naming `path`.
Json parse_file(const std::string& path, std::uint64_t max_bytes = 256u << 20);

// An integer too large for 64 bits, as parse keeps it: a string value holding a tag and the decimal digits.
// Writers put the digits back as a bare number; readers asking for a number see a string, never a rounded value.
Json big_integer(std::string_view decimal_digits);
std::optional<std::string_view> big_integer_digits(const Json& value);

// Serialises as nlohmann's compact (indent < 0) or indented layout, strings in UTF-8 but for control characters,
// floats in Python's repr (shortest round trip), NaN and infinities as null (standard JSON for scripts). A byte that
// is not part of valid UTF-8 is written as the escape of the lone surrogate U+DC00+byte, as Python's os.fsdecode
// maps it, so a file name's bytes survive: Python's os.fsencode(json.loads(text)) gives them back. Never throws.
std::string dump(const Json& value, int indent = -1);

// As Python's json.dumps(value, indent=indent, sort_keys=True) writes it (how transformers writes
// trainer_state.json and config.json): keys sorted at every level, non-ASCII escaped, NaN and Infinity as bare tokens.
std::string dump_python_sorted(const Json& value, int indent);

// Python's repr of a double: the shortest digits that round-trip, positional for exponents -4..15, otherwise
// scientific with a signed two-digit exponent ("0.0001", "1e-05", "1e+16", "2.0").
std::string python_float_repr(double value);

// ---- Reading what a file holds ----
//
// Every read of JSON that came from a file goes through Fields, Elements and Value: typed reads that throw an Error
// of kind corrupt naming the file (`path`, empty when the caller adds it later through Error::with_context) and, in
// `where`, the key path of the value (`header["layer.0.weight"].shape[1]`, `log_history[3].loss`): a member whose
// key is letters, digits, '_', '$' or '-' is appended as `.key`, any other as `["key"]` (JSON-quoted), an element
// as `[index]`. Lookups search with find(); nothing here indexes a const object, whose operator[] has undefined
// behaviour on a missing key. Integers are exact (a float is not an integer; a number beyond 64 bits is a
// big_integer, which no integer read accepts); a number read accepts integers and floats (NaN, infinities).
//
// A reader that is lenient today about optional members (trainer_state.json's summary skips a field of the wrong
// type) says so once, with WrongType::absent: then every optional_* read of that object, and of the objects and
// arrays read from it, returns nullopt for a value of the wrong type as for a missing one. Required reads always
// throw. A Value refers to the Fields or Elements it came from and must not outlive it.

// What an optional read does with a member of the wrong type.
enum class WrongType { fail, absent };

class Fields;
class Elements;

// Where values are: the file, the key path of the enclosing object or array, and the reading rule.
struct Location {
  std::shared_ptr<const std::string> path;
  std::string key_path;
  WrongType wrong_type = WrongType::fail;
};

// One value of an object or array, read by type.
class Value {
 public:
  Value(const Json& json, const Location& parent, std::string_view key) : json_(&json), parent_(&parent), key_(key) {}
  Value(const Json& json, const Location& parent, std::size_t index) : json_(&json), parent_(&parent), index_(index) {}

  const Json& json() const { return *json_; }
  std::string key_path() const;

  std::string string() const;
  std::int64_t int64(std::int64_t min = std::numeric_limits<std::int64_t>::min(),
                     std::int64_t max = std::numeric_limits<std::int64_t>::max()) const;
  std::uint64_t uint64(std::uint64_t max = std::numeric_limits<std::uint64_t>::max()) const;
  double number() const;
  bool boolean() const;
  Fields object() const;
  Elements array() const;

  // Throws corrupt about this value: for the rules a reader adds to the types (a range, a known name).
  [[noreturn]] void fail(const std::string& what) const;

 private:
  const Json* json_;
  const Location* parent_;
  std::string_view key_;
  std::optional<std::size_t> index_;
};

// An array's elements, each read as a Value named `[index]`.
class Elements {
 public:
  Elements(const Json& array, std::string path, std::string key_path, WrongType wrong_type = WrongType::fail);
  Elements(const Json& array, Location where);  // throws corrupt unless `array` is an array

  std::size_t size() const { return items_->size(); }
  Value at(std::size_t index) const;  // throws corrupt past the end
  const Json& json() const { return *array_; }
  const std::string& key_path() const { return where_.key_path; }
  [[noreturn]] void fail(const std::string& what) const;

 private:
  const Json* array_;
  const Json::array_t* items_;
  Location where_;
};

// An object's members by key. The root of a document: Fields(doc, path, "") (or a prefix such as "header").
class Fields {
 public:
  Fields(const Json& object, std::string path, std::string key_path, WrongType wrong_type = WrongType::fail);
  Fields(const Json& object, Location where);  // throws corrupt unless `object` is an object

  const Json& json() const { return *object_; }
  const std::string& path() const { return *where_.path; }
  const std::string& key_path() const { return where_.key_path; }
  std::string key_path(std::string_view key) const;

  bool has(std::string_view key) const;
  std::optional<Value> optional(std::string_view key) const;  // any type
  Value required(std::string_view key) const;                 // any type; throws corrupt when missing
  Json value_or_null(std::string_view key) const;             // a copy of the member, null when missing

  std::string string(std::string_view key) const;
  std::optional<std::string> optional_string(std::string_view key) const;
  std::int64_t int64(std::string_view key, std::int64_t min = std::numeric_limits<std::int64_t>::min(),
                     std::int64_t max = std::numeric_limits<std::int64_t>::max()) const;
  std::optional<std::int64_t> optional_int64(std::string_view key,
                                             std::int64_t min = std::numeric_limits<std::int64_t>::min(),
                                             std::int64_t max = std::numeric_limits<std::int64_t>::max()) const;
  std::uint64_t uint64(std::string_view key, std::uint64_t max = std::numeric_limits<std::uint64_t>::max()) const;
  double number(std::string_view key) const;
  std::optional<double> optional_number(std::string_view key) const;
  bool boolean(std::string_view key) const;
  std::optional<bool> optional_boolean(std::string_view key) const;
  Fields object(std::string_view key) const;
  std::optional<Fields> optional_object(std::string_view key) const;
  Elements array(std::string_view key) const;
  std::optional<Elements> optional_array(std::string_view key) const;

  // Calls `visit` with each member in the file's order.
  void for_each(const std::function<void(const std::string& key, const Value& value)>& visit) const;

  [[noreturn]] void fail(const std::string& what) const;  // corrupt about the object itself

 private:
  // The member; nullopt when missing, or when not `of_type` where the wrong type counts as absent.
  std::optional<Value> present(std::string_view key, const std::function<bool(const Json&)>& of_type) const;

  const Json* object_;
  Location where_;
};

}  // namespace ckpt::json
