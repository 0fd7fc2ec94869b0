#include "format/json.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "util/error.hpp"
#include "util/mapped_file.hpp"

namespace ckpt::json {
namespace {

// Python's non-standard tokens become strings no real document can contain, turned back into numbers after
// parsing. A NUL byte cannot appear unescaped in a JSON string, so "\u0000" makes the sentinel unique.
constexpr std::string_view kNaN = "\"\\u0000ckpt:NaN\"";
constexpr std::string_view kInf = "\"\\u0000ckpt:Infinity\"";
constexpr std::string_view kNegInf = "\"\\u0000ckpt:-Infinity\"";

std::string replace_python_tokens(std::string_view text, bool& replaced) {
  std::string out;
  replaced = false;
  bool in_string = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      out += c;
      if (c == '\\' && i + 1 < text.size()) out += text[++i];
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') in_string = true;
    auto token = [&](std::string_view word, std::string_view sentinel) {
      if (text.substr(i, word.size()) != word) return false;
      out += sentinel;
      i += word.size() - 1;
      replaced = true;
      return true;
    };
    if ((c == 'N' && token("NaN", kNaN)) || (c == 'I' && token("Infinity", kInf)) ||
        (c == '-' && token("-Infinity", kNegInf))) {
      continue;
    }
    out += c;
  }
  return out;
}

void restore_python_tokens(Json& value) {
  std::vector<Json*> pending{&value};
  while (!pending.empty()) {
    Json* v = pending.back();
    pending.pop_back();
    if (v->is_string()) {
      const auto& s = v->get_ref<const std::string&>();
      if (s.size() > 6 && s[0] == '\0' && s.compare(1, 5, "ckpt:") == 0) {
        if (s == std::string("\0ckpt:NaN", 9)) *v = std::numeric_limits<double>::quiet_NaN();
        else if (s == std::string("\0ckpt:Infinity", 14)) *v = std::numeric_limits<double>::infinity();
        else if (s == std::string("\0ckpt:-Infinity", 15)) *v = -std::numeric_limits<double>::infinity();
      }
    } else if (v->is_structured()) {
      for (auto& child : *v) pending.push_back(&child);
    }
  }
}

// nlohmann's parser is iterative, but dumping and our own walks recurse: bound the depth once here.
void check_depth(const Json& value) {
  std::vector<std::pair<const Json*, std::size_t>> pending{{&value, 1}};
  while (!pending.empty()) {
    auto [v, depth] = pending.back();
    pending.pop_back();
    if (depth > kMaxDepth) fail(ErrorKind::unsupported, "", "JSON nested deeper than " + std::to_string(kMaxDepth));
    if (v->is_structured()) {
      for (const auto& child : *v) pending.push_back({&child, depth + 1});
    }
  }
}

}  // namespace

Json parse(std::string_view text) {
  // nlohmann's lexer takes a NUL byte for the end of input and would ignore what follows; JSON never holds one.
  if (const auto nul = text.find('\0'); nul != std::string_view::npos) {
    fail_corrupt("byte " + std::to_string(nul), "invalid JSON: NUL byte");
  }
  bool replaced = false;
  std::string cleaned = replace_python_tokens(text, replaced);
  Json value;
  try {
    value = Json::parse(cleaned);
  } catch (const nlohmann::json::parse_error& e) {
    // Offsets are of the cleaned text; they equal the original's up to the first NaN/Infinity.
    fail_corrupt("byte " + std::to_string(e.byte), std::string("invalid JSON: ") +
                                                       (std::strchr(e.what(), ':') ? std::strchr(e.what(), ':') + 2 : e.what()));
  } catch (const nlohmann::json::exception& e) {
    // Anything else the parser refuses, such as a number beyond double's range.
    const char* message = std::strchr(e.what(), ']');
    fail_corrupt("", std::string("invalid JSON: ") + (message ? message + 2 : e.what()));
  }
  check_depth(value);
  if (replaced) restore_python_tokens(value);
  return value;
}

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

std::string dump(const Json& value, int indent) {
  return value.dump(indent, ' ', false, nlohmann::json::error_handler_t::replace);
}

namespace {

void write_python_sorted(const Json& value, int indent, int depth, std::string& out) {
  auto newline = [&](int level) {
    out += '\n';
    out.append(static_cast<std::size_t>(indent * level), ' ');
  };
  if (value.is_object() || value.is_array()) {
    const bool object = value.is_object();
    if (value.empty()) {
      out += object ? "{}" : "[]";
      return;
    }
    out += object ? '{' : '[';
    std::vector<std::pair<std::string, const Json*>> members;
    if (object) {
      for (auto it = value.begin(); it != value.end(); ++it) members.emplace_back(it.key(), &it.value());
      std::sort(members.begin(), members.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    } else {
      for (const auto& item : value) members.emplace_back(std::string(), &item);
    }
    for (std::size_t i = 0; i < members.size(); ++i) {
      if (i > 0) out += ',';
      newline(depth + 1);
      if (object) out += Json(members[i].first).dump(-1, ' ', true, nlohmann::json::error_handler_t::replace) + ": ";
      write_python_sorted(*members[i].second, indent, depth + 1, out);
    }
    newline(depth);
    out += object ? '}' : ']';
    return;
  }
  if (value.is_number_float() && !std::isfinite(value.get<double>())) {
    const double v = value.get<double>();
    out += std::isnan(v) ? "NaN" : v > 0 ? "Infinity" : "-Infinity";
    return;
  }
  out += value.dump(-1, ' ', true, nlohmann::json::error_handler_t::replace);
}

}  // namespace

std::string dump_python_sorted(const Json& value, int indent) {
  std::string out;
  write_python_sorted(value, indent, 0, out);
  return out;
}

}  // namespace ckpt::json
