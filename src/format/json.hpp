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
  explicit ObjectBuilder(std::size_t expected_members = 0) { object_.get_ref<Json::object_t&>().reserve(expected_members); }
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

}  // namespace ckpt::json
