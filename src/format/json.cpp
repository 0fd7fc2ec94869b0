#include "format/json.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <vector>

#include "util/error.hpp"
#include "util/utf8.hpp"
#include "util/mapped_file.hpp"

namespace ckpt::json {
namespace {

// Big integers are binary values of this subtype holding their decimal digits: text never parses to a binary
// value, so no document can forge one.
constexpr std::uint8_t kBigIntegerSubtype = 0x42;

// The length of the generalized UTF-8 sequence at `s[i]` and its code point, or 0 when the byte starts none.
std::size_t decode_utf8(std::string_view s, std::size_t i, std::uint32_t& cp) {
  const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char b = byte(i);
  const auto continuation = [&](std::size_t k, unsigned char lo, unsigned char hi) {
    return k < s.size() && byte(k) >= lo && byte(k) <= hi;
  };
  if (b >= 0xC2 && b <= 0xDF && continuation(i + 1, 0x80, 0xBF)) {
    cp = ((b & 0x1Fu) << 6) | (byte(i + 1) & 0x3Fu);
    return 2;
  }
  if (b >= 0xE0 && b <= 0xEF && continuation(i + 1, b == 0xE0 ? 0xA0 : 0x80, 0xBF) && continuation(i + 2, 0x80, 0xBF)) {
    cp = ((b & 0x0Fu) << 12) | ((byte(i + 1) & 0x3Fu) << 6) | (byte(i + 2) & 0x3Fu);
    return 3;
  }
  if (b >= 0xF0 && b <= 0xF4 && continuation(i + 1, b == 0xF0 ? 0x90 : 0x80, b == 0xF4 ? 0x8F : 0xBF) &&
      continuation(i + 2, 0x80, 0xBF) && continuation(i + 3, 0x80, 0xBF)) {
    cp = ((b & 0x07u) << 18) | ((byte(i + 1) & 0x3Fu) << 12) | ((byte(i + 2) & 0x3Fu) << 6) | (byte(i + 3) & 0x3Fu);
    return 4;
  }
  return 0;
}

class Parser {
 public:
  explicit Parser(std::string_view text) : text_(text) {}

  Json document() {
    skip_whitespace();
    Json result = value(1);
    skip_whitespace();
    if (pos_ != text_.size()) error("extra data after the document");
    return result;
  }

 private:
  [[noreturn]] void error(const std::string& what) const {
    fail_corrupt("byte " + std::to_string(pos_), "invalid JSON: " + what);
  }

  bool at_end() const { return pos_ >= text_.size(); }
  char peek() const { return at_end() ? '\0' : text_[pos_]; }

  void skip_whitespace() {
    while (!at_end() && (text_[pos_] == ' ' || text_[pos_] == '\t' || text_[pos_] == '\n' || text_[pos_] == '\r'))
      ++pos_;
  }

  void expect(char c) {
    if (peek() != c || at_end()) error(std::string("expected '") + c + "'");
    ++pos_;
  }

  bool take_word(std::string_view word) {
    if (text_.substr(pos_, word.size()) != word) return false;
    pos_ += word.size();
    return true;
  }

  Json value(std::size_t depth) {
    if (depth > kMaxDepth)
      fail(ErrorKind::unsupported, "byte " + std::to_string(pos_),
           "JSON nested deeper than " + std::to_string(kMaxDepth));
    if (at_end()) error("unexpected end of input");
    switch (text_[pos_]) {
      case '{':
        return object(depth);
      case '[':
        return array(depth);
      case '"':
        return Json(string());
      case 't':
        if (take_word("true")) return true;
        break;
      case 'f':
        if (take_word("false")) return false;
        break;
      case 'n':
        if (take_word("null")) return nullptr;
        break;
      case 'N':
        if (take_word("NaN")) return std::numeric_limits<double>::quiet_NaN();
        break;
      case 'I':
        if (take_word("Infinity")) return std::numeric_limits<double>::infinity();
        break;
      case '-':
        if (take_word("-Infinity")) return -std::numeric_limits<double>::infinity();
        return number();
      default:
        if (text_[pos_] >= '0' && text_[pos_] <= '9') return number();
    }
    error("unexpected character");
  }

  Json object(std::size_t depth) {
    ++pos_;
    ObjectBuilder members;
    skip_whitespace();
    if (peek() == '}') {
      ++pos_;
      return members.take();
    }
    while (true) {
      skip_whitespace();
      if (peek() != '"' || at_end()) error("expected a string key");
      std::string key = string();
      skip_whitespace();
      expect(':');
      skip_whitespace();
      members.set(std::move(key), value(depth + 1));
      skip_whitespace();
      if (peek() == ',' && !at_end()) {
        ++pos_;
        continue;
      }
      expect('}');
      return members.take();
    }
  }

  Json array(std::size_t depth) {
    ++pos_;
    Json result = Json::array();
    auto& items = result.get_ref<Json::array_t&>();
    skip_whitespace();
    if (peek() == ']') {
      ++pos_;
      return result;
    }
    while (true) {
      skip_whitespace();
      items.push_back(value(depth + 1));
      skip_whitespace();
      if (peek() == ',' && !at_end()) {
        ++pos_;
        continue;
      }
      expect(']');
      return result;
    }
  }

  std::uint32_t hex4() {
    if (text_.size() - pos_ < 4) error("truncated \\u escape");
    std::uint32_t cp = 0;
    for (int i = 0; i < 4; ++i) {
      const char c = text_[pos_++];
      cp <<= 4;
      if (c >= '0' && c <= '9')
        cp |= static_cast<std::uint32_t>(c - '0');
      else if (c >= 'a' && c <= 'f')
        cp |= static_cast<std::uint32_t>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F')
        cp |= static_cast<std::uint32_t>(c - 'A' + 10);
      else
        error("invalid \\u escape");
    }
    return cp;
  }

  std::string string() {
    ++pos_;
    std::string out;
    while (true) {
      const std::size_t start = pos_;
      while (!at_end() && text_[pos_] != '"' && text_[pos_] != '\\' &&
             static_cast<unsigned char>(text_[pos_]) >= 0x20) {
        if (static_cast<unsigned char>(text_[pos_]) < 0x80) {
          ++pos_;
          continue;
        }
        // Python decodes the file as UTF-8 before parsing: a byte sequence that is not UTF-8 fails there.
        std::uint32_t cp = 0;
        const std::size_t length = decode_utf8(text_, pos_, cp);
        if (length == 0 || (cp >= 0xD800 && cp <= 0xDFFF)) error("invalid UTF-8 in a string");
        pos_ += length;
      }
      out.append(text_.substr(start, pos_ - start));
      if (at_end()) error("unterminated string");
      const char c = text_[pos_];
      if (c == '"') {
        ++pos_;
        return out;
      }
      if (c != '\\') error("control character in a string");
      if (++pos_ >= text_.size()) error("unterminated string");
      const char e = text_[pos_++];
      switch (e) {
        case '"':
          out += '"';
          break;
        case '\\':
          out += '\\';
          break;
        case '/':
          out += '/';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case 'u': {
          std::uint32_t cp = hex4();
          if (cp >= 0xD800 && cp <= 0xDBFF && text_.substr(pos_, 2) == "\\u") {
            const std::size_t before = pos_;
            pos_ += 2;
            const std::uint32_t low = hex4();
            if (low >= 0xDC00 && low <= 0xDFFF)
              cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
            else
              pos_ = before;  // a lone high surrogate; the next escape stands alone
          }
          append_utf8(out, cp);
          break;
        }
        default:
          --pos_;
          error("invalid escape");
      }
    }
  }

  Json number() {
    const std::size_t start = pos_;
    const bool negative = peek() == '-';
    if (negative) ++pos_;
    auto digits = [&] {
      const std::size_t from = pos_;
      while (!at_end() && text_[pos_] >= '0' && text_[pos_] <= '9') ++pos_;
      return pos_ - from;
    };
    if (peek() == '0' && !at_end())
      ++pos_;
    else if (digits() == 0)
      error("expected a digit");
    bool integer = true;
    if (peek() == '.' && !at_end()) {
      ++pos_;
      if (digits() == 0) error("expected a digit after '.'");
      integer = false;
    }
    if ((peek() == 'e' || peek() == 'E') && !at_end()) {
      ++pos_;
      if ((peek() == '+' || peek() == '-') && !at_end()) ++pos_;
      if (digits() == 0) error("expected a digit in the exponent");
      integer = false;
    }
    const std::string_view token = text_.substr(start, pos_ - start);
    if (integer) return integer_value(token, negative);
    double v = 0;
    const auto [end, ec] = std::from_chars(token.data(), token.data() + token.size(), v);
    if (ec == std::errc::result_out_of_range) {
      // Beyond double's range: strtod rounds as Python's float() does (to +-inf, or to 0 or a subnormal).
      v = std::strtod(std::string(token).c_str(), nullptr);
    } else if (ec != std::errc() || end != token.data() + token.size()) {
      error("invalid number");
    }
    return v;
  }

  static Json integer_value(std::string_view token, bool negative) {
    const std::string_view magnitude = negative ? token.substr(1) : token;
    std::uint64_t m = 0;
    const auto [end, ec] = std::from_chars(magnitude.data(), magnitude.data() + magnitude.size(), m);
    if (ec == std::errc() && end == magnitude.data() + magnitude.size()) {
      if (!negative) return m;
      if (m <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
        return -static_cast<std::int64_t>(m);
      if (m == static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()) + 1)
        return std::numeric_limits<std::int64_t>::min();
    }
    return big_integer(token);
  }

  std::string_view text_;
  std::size_t pos_ = 0;
};

struct Style {
  int indent = -1;
  bool sort_keys = false;
  bool ensure_ascii = false;
  bool python_nonfinite = false;  // NaN/Infinity tokens rather than null
};

void append_escape(std::string& out, std::uint32_t unit) {
  static constexpr char kHex[] = "0123456789abcdef";
  out += "\\u";
  for (int shift = 12; shift >= 0; shift -= 4) out += kHex[(unit >> shift) & 0xF];
}

void write_string(std::string_view s, const Style& style, std::string& out) {
  out += '"';
  for (std::size_t i = 0; i < s.size();) {
    const unsigned char b = static_cast<unsigned char>(s[i]);
    if (b < 0x80) {
      switch (b) {
        case '"':
          out += "\\\"";
          break;
        case '\\':
          out += "\\\\";
          break;
        case '\b':
          out += "\\b";
          break;
        case '\f':
          out += "\\f";
          break;
        case '\n':
          out += "\\n";
          break;
        case '\r':
          out += "\\r";
          break;
        case '\t':
          out += "\\t";
          break;
        default:
          if (b < 0x20 || (b == 0x7F && style.ensure_ascii))
            append_escape(out, b);
          else
            out += static_cast<char>(b);
      }
      ++i;
      continue;
    }
    std::uint32_t cp = 0;
    const std::size_t length = decode_utf8(s, i, cp);
    if (length == 0) {
      append_escape(out, 0xDC00 + b);  // surrogateescape: the byte itself comes back through os.fsencode
      ++i;
      continue;
    }
    const bool surrogate = cp >= 0xD800 && cp <= 0xDFFF;
    if (surrogate || (style.ensure_ascii && cp < 0x10000)) {
      append_escape(out, cp);
    } else if (style.ensure_ascii) {
      append_escape(out, 0xD800 + ((cp - 0x10000) >> 10));
      append_escape(out, 0xDC00 + ((cp - 0x10000) & 0x3FF));
    } else {
      out.append(s.substr(i, length));
    }
    i += length;
  }
  out += '"';
}

void write_value(const Json& value, const Style& style, int depth, std::string& out) {
  const auto newline = [&](int level) {
    if (style.indent < 0) return;
    out += '\n';
    out.append(static_cast<std::size_t>(style.indent) * static_cast<std::size_t>(level), ' ');
  };
  const char* key_separator = style.indent < 0 ? ":" : ": ";
  switch (value.type()) {
    case Json::value_t::object: {
      if (value.empty()) {
        out += "{}";
        return;
      }
      std::vector<const Json::object_t::value_type*> members;
      members.reserve(value.size());
      for (const auto& member : value.get_ref<const Json::object_t&>()) members.push_back(&member);
      if (style.sort_keys) {
        std::stable_sort(members.begin(), members.end(),
                         [](const auto* a, const auto* b) { return a->first < b->first; });
      }
      out += '{';
      for (std::size_t i = 0; i < members.size(); ++i) {
        if (i > 0) out += ',';
        newline(depth + 1);
        write_string(members[i]->first, style, out);
        out += key_separator;
        write_value(members[i]->second, style, depth + 1, out);
      }
      newline(depth);
      out += '}';
      return;
    }
    case Json::value_t::array: {
      if (value.empty()) {
        out += "[]";
        return;
      }
      out += '[';
      bool first = true;
      for (const auto& item : value) {
        if (!first) out += ',';
        first = false;
        newline(depth + 1);
        write_value(item, style, depth + 1, out);
      }
      newline(depth);
      out += ']';
      return;
    }
    case Json::value_t::string:
      write_string(value.get_ref<const std::string&>(), style, out);
      return;
    case Json::value_t::boolean:
      out += value.get<bool>() ? "true" : "false";
      return;
    case Json::value_t::number_integer:
      out += std::to_string(value.get<std::int64_t>());
      return;
    case Json::value_t::number_unsigned:
      out += std::to_string(value.get<std::uint64_t>());
      return;
    case Json::value_t::number_float: {
      const double v = value.get<double>();
      if (std::isfinite(v))
        out += python_float_repr(v);
      else if (!style.python_nonfinite)
        out += "null";
      else
        out += std::isnan(v) ? "NaN" : v > 0 ? "Infinity" : "-Infinity";
      return;
    }
    case Json::value_t::binary:
      if (const auto digits = big_integer_digits(value)) {
        out += *digits;
        return;
      }
      out += "null";  // no other binary value is ever made
      return;
    case Json::value_t::null:
    case Json::value_t::discarded:
      out += "null";
      return;
  }
}

}  // namespace

void ObjectBuilder::set(std::string key, Json value) {
  // Appending to the vector beneath the object skips ordered_map's linear key search.
  Json::object_t::Container& members = object_.get_ref<Json::object_t&>();
  constexpr std::size_t kLinearLimit = 16;  // smaller objects are searched; larger ones get a hash index
  if (members.size() < kLinearLimit) {
    for (auto& member : members) {
      if (member.first == key) {
        member.second = std::move(value);
        return;
      }
    }
    members.emplace_back(std::move(key), std::move(value));
    if (members.size() == kLinearLimit) {
      for (std::size_t i = 0; i < members.size(); ++i) positions_.emplace(members[i].first, i);
    }
    return;
  }
  const auto [it, inserted] = positions_.try_emplace(key, members.size());
  if (!inserted) {
    members[it->second].second = std::move(value);
    return;
  }
  members.emplace_back(std::move(key), std::move(value));
}

Json parse(std::string_view text) { return Parser(text).document(); }

Json parse_file(const std::string& path, std::uint64_t max_bytes) {
  // Read, not mapped: for the many small JSON files of a run, a map and its page faults cost more than a read.
  ReadOnlyFile file(path);
  if (file.size() > max_bytes) {
    throw Error(ErrorKind::unsupported, path, "", "JSON file larger than " + std::to_string(max_bytes) + " bytes");
  }
  std::string text(static_cast<std::size_t>(file.size()), '\0');
  file.read_at(0, {reinterpret_cast<std::uint8_t*>(text.data()), text.size()});
  try {
    return parse(text);
  } catch (const Error& e) {
    throw e.with_context(path, "");
  }
}

Json big_integer(std::string_view decimal_digits) {
  return Json::binary(Json::binary_t::container_type(decimal_digits.begin(), decimal_digits.end()), kBigIntegerSubtype);
}

std::optional<std::string_view> big_integer_digits(const Json& value) {
  if (!value.is_binary()) return std::nullopt;
  const auto& bytes = value.get_binary();
  if (!bytes.has_subtype() || bytes.subtype() != kBigIntegerSubtype) return std::nullopt;
  return std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

std::string dump(const Json& value, int indent) {
  std::string out;
  write_value(value, Style{indent, false, false, false}, 0, out);
  return out;
}

std::string dump_python_sorted(const Json& value, int indent) {
  std::string out;
  write_value(value, Style{indent, true, true, true}, 0, out);
  return out;
}

std::string python_float_repr(double value) {
  char buffer[64];
  // Shortest round-trip digits in scientific form: "d[.ddd]e[+-]XX".
  const auto [end, ec] = std::to_chars(buffer, buffer + sizeof buffer, std::fabs(value), std::chars_format::scientific);
  const std::string_view sci(buffer, static_cast<std::size_t>(end - buffer));
  const std::size_t e = sci.find('e');
  std::string digits(sci.substr(0, e));
  digits.erase(std::remove(digits.begin(), digits.end(), '.'), digits.end());
  int exponent = 0;
  std::from_chars(sci.data() + e + 1 + (sci[e + 1] == '+'), sci.data() + sci.size(), exponent);

  std::string out = std::signbit(value) ? "-" : "";
  if (exponent >= -4 && exponent < 16) {
    if (exponent < 0) {
      out += "0." + std::string(static_cast<std::size_t>(-exponent - 1), '0') + digits;
    } else {
      const auto whole = static_cast<std::size_t>(exponent) + 1;
      if (digits.size() <= whole) {
        out += digits + std::string(whole - digits.size(), '0') + ".0";
      } else {
        out += digits.substr(0, whole) + "." + digits.substr(whole);
      }
    }
    return out;
  }
  out += digits.substr(0, 1);
  if (digits.size() > 1) out += "." + digits.substr(1);
  out += exponent < 0 ? "e-" : "e+";
  const int magnitude = std::abs(exponent);
  if (magnitude < 10) out += '0';
  out += std::to_string(magnitude);
  return out;
}

}  // namespace ckpt::json
