// The restricted unpickler's parser, private to format/pickle.cpp (opcodes, stack, memo, BUILD, the graph's
// shape checks) and format/pickle_reconstruct.cpp (the globals a pickle may call to build values). The public
// interface and the grammar are format/pickle.hpp.
#pragma once

#include <charconv>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "format/big_int.hpp"
#include "format/pickle.hpp"
#include "format/pickle_opcodes.hpp"
#include "util/byte_reader.hpp"
#include "util/error.hpp"
#include "util/utf8.hpp"

namespace ckpt::pickle::detail {

// Python refuses to convert decimal strings longer than this (sys.int_info.default_max_str_digits); so do we,
// which also keeps the quadratic decimal-to-binary conversion cheap.
inline constexpr std::size_t kMaxDecimalDigits = 4300;
inline constexpr std::size_t kMaxLine = 1u << 16;
// 256 TiB: no real tensor comes near, and sums of many such sizes cannot overflow 64 bits.
inline constexpr std::uint64_t kMaxTensorBytes = 1ull << 48;

std::string latin1_to_utf8(std::string_view bytes);
// Decodes UTF-8 into code points; false on malformed input.
bool utf8_code_points(std::string_view s, std::vector<std::uint32_t>& out);
// Little-endian two's complement bytes -> int64 when they fit.
bool fits_int64(std::span<const std::uint8_t> le, std::int64_t& out);

class Parser {
 public:
  Parser(std::span<const std::uint8_t> bytes, const PersistentLoad& persistent_load)
      : in_(bytes, "the pickle"), persistent_load_(persistent_load) {}

  Graph run() {
    while (true) {
      op_start_ = in_.position();
      const Op op{in_.u8()};
      if (op == Op::stop) {
        graph_.set_root(pop());
        break;
      }
      step(op);
    }
    validate_shape();
    return std::move(graph_);
  }

 private:
  [[noreturn]] void bad(const std::string& message) const { in_.fail_at(op_start_, message); }
  [[noreturn]] void refuse(const std::string& message) const {
    fail(ErrorKind::unsupported, "byte " + std::to_string(op_start_), message);
  }

  NodeId add(Node node) {
    if (graph_.size() >= kMaxNodes) bad("more than " + std::to_string(kMaxNodes) + " values in one pickle");
    return graph_.add(std::move(node));
  }
  // Interpreting a call may copy a memoised value's text or items; without a bound, a small pickle could copy one
  // large value many times. Copies may total 16 times the input plus 16 MiB.
  void charge(std::size_t units) {
    copied_ += units;
    if (copied_ > 16 * in_.size() + (16u << 20)) bad("copies more data than a pickle of this size can hold");
  }
  NodeId add_int(std::int64_t v) {
    Node n;
    n.kind = Kind::integer;
    n.integer = v;
    return add(std::move(n));
  }
  NodeId add_text(Kind kind, std::string text) {
    charge(text.size());
    Node n;
    n.kind = kind;
    n.text = std::move(text);
    return add(std::move(n));
  }
  NodeId add_container(Kind kind, std::vector<NodeId> items = {}) {
    charge(items.size());
    Node n;
    n.kind = kind;
    n.items = std::move(items);
    return add(std::move(n));
  }
  NodeId add_long(std::span<const std::uint8_t> le) {
    std::int64_t v = 0;
    if (fits_int64(le, v)) return add_int(v);
    return add_text(Kind::big_integer, std::string(le.begin(), le.end()));
  }

  std::size_t floor() const { return marks_.empty() ? 0 : marks_.back(); }
  NodeId pop() {
    if (stack_.size() <= floor()) bad("pops an empty stack");
    NodeId v = stack_.back();
    stack_.pop_back();
    return v;
  }
  NodeId top() const {
    if (stack_.size() <= floor()) bad("needs a value on an empty stack");
    return stack_.back();
  }
  std::vector<NodeId> pop_mark() {
    if (marks_.empty()) bad("needs a MARK but none is open");
    std::size_t m = marks_.back();
    marks_.pop_back();
    std::vector<NodeId> items(stack_.begin() + static_cast<std::ptrdiff_t>(m), stack_.end());
    stack_.resize(m);
    return items;
  }
  void push(NodeId id) { stack_.push_back(id); }

  std::string_view line() {
    const std::size_t start = in_.position();
    std::size_t n = 0;
    while (true) {
      if (in_.at_end()) bad("text operand without a newline");
      if (in_.u8() == '\n') break;
      if (++n > kMaxLine) bad("text operand longer than " + std::to_string(kMaxLine) + " bytes");
    }
    in_.seek(start);
    std::string_view text = in_.take_chars(n);
    in_.u8();
    return text;
  }

  std::uint64_t line_index() {
    std::string_view text = line();
    std::uint64_t v = 0;
    auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
    if (ec != std::errc() || p != text.data() + text.size()) bad("memo index is not a number");
    return v;
  }

  NodeId parse_decimal_int(std::string_view text) {
    if (!text.empty() && text.back() == 'L') text.remove_suffix(1);  // protocol 0 longs
    bool negative = false;
    std::string_view digits = text;
    if (!digits.empty() && (digits[0] == '-' || digits[0] == '+')) {
      negative = digits[0] == '-';
      digits.remove_prefix(1);
    }
    if (digits.empty() || digits.size() > kMaxDecimalDigits) bad("integer literal is empty or too long");
    for (char c : digits) {
      if (c < '0' || c > '9') bad("integer literal has a non-digit");
    }
    std::string le = twos_complement_from_decimal(digits, negative);
    return add_long({reinterpret_cast<const std::uint8_t*>(le.data()), le.size()});
  }

  std::string unescape_python_string(std::string_view quoted) {
    if (quoted.size() < 2 || quoted.front() != quoted.back() || (quoted.front() != '\'' && quoted.front() != '"')) {
      bad("STRING operand is not quoted");
    }
    std::string_view s = quoted.substr(1, quoted.size() - 2);
    std::string out;
    for (std::size_t i = 0; i < s.size(); ++i) {
      if (s[i] != '\\') {
        out += s[i];
        continue;
      }
      if (++i >= s.size()) bad("STRING operand ends in a backslash");
      char c = s[i];
      switch (c) {
        case 'n':
          out += '\n';
          break;
        case 't':
          out += '\t';
          break;
        case 'r':
          out += '\r';
          break;
        case 'a':
          out += '\a';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'v':
          out += '\v';
          break;
        case '\\':
          out += '\\';
          break;
        case '\'':
          out += '\'';
          break;
        case '"':
          out += '"';
          break;
        case '\n':
          break;
        case 'x': {
          if (i + 2 >= s.size()) bad("bad \\x escape");
          unsigned v = 0;
          auto [p, ec] = std::from_chars(s.data() + i + 1, s.data() + i + 3, v, 16);
          if (ec != std::errc() || p != s.data() + i + 3) bad("bad \\x escape");
          out += static_cast<char>(v);
          i += 2;
          break;
        }
        default:
          if (c >= '0' && c <= '7') {
            unsigned v = 0;
            std::size_t k = 0;
            while (k < 3 && i + k < s.size() && s[i + k] >= '0' && s[i + k] <= '7') v = v * 8 + (s[i + k++] - '0');
            out += static_cast<char>(v & 0xFF);
            i += k - 1;
          } else {
            out += '\\';
            out += c;
          }
      }
    }
    return out;
  }

  std::string decode_raw_unicode_escape(std::string_view s) {
    std::string out;
    for (std::size_t i = 0; i < s.size(); ++i) {
      const unsigned char c = static_cast<unsigned char>(s[i]);
      if (c == '\\' && i + 1 < s.size() && (s[i + 1] == 'u' || s[i + 1] == 'U')) {
        const std::size_t width = s[i + 1] == 'u' ? 4 : 8;
        if (i + 2 + width > s.size()) bad("truncated \\u escape in UNICODE operand");
        std::uint32_t cp = 0;
        auto [p, ec] = std::from_chars(s.data() + i + 2, s.data() + i + 2 + width, cp, 16);
        if (ec != std::errc() || p != s.data() + i + 2 + width || cp > 0x10FFFF) bad("bad \\u escape");
        append_utf8(out, cp);
        i += 1 + width;
      } else {
        append_utf8(out, c);
      }
    }
    return out;
  }

  std::string normalize_module(std::string_view module) {
    // Python 3's unpickler maps Python 2 module names the same way (fix_imports).
    if (module == "__builtin__") return "builtins";
    if (module == "copy_reg") return "copyreg";
    return std::string(module);
  }
  NodeId add_global(std::string_view module, std::string_view name) {
    return add_text(Kind::global, normalize_module(module) + "\n" + std::string(name));
  }

  void step(Op op);
  NodeId interpret_call(NodeId callable, NodeId args, bool newobj);
  NodeId opaque_call(NodeId callable, NodeId args, bool newobj);
  using Reconstruct = std::optional<NodeId> (Parser::*)(std::string_view name, const std::vector<NodeId>& args);
  struct Reconstructor {
    std::string_view module;
    std::string_view name;
    Reconstruct build;
  };
  static const Reconstructor kReconstructors[];
  std::optional<NodeId> ordered_dict(std::string_view name, const std::vector<NodeId>& args);
  std::optional<NodeId> rebuild_tensor(std::string_view name, const std::vector<NodeId>& args);
  std::optional<NodeId> rebuild_parameter(std::string_view name, const std::vector<NodeId>& args);
  std::optional<NodeId> rebuild_from_type(std::string_view name, const std::vector<NodeId>& args);
  std::optional<NodeId> torch_device(std::string_view name, const std::vector<NodeId>& args);
  std::optional<NodeId> torch_size(std::string_view name, const std::vector<NodeId>& args);
  std::optional<NodeId> codecs_encode(std::string_view name, const std::vector<NodeId>& args);
  std::optional<NodeId> set_of(std::string_view name, const std::vector<NodeId>& args);
  std::optional<NodeId> bytes_of(std::string_view name, const std::vector<NodeId>& args);
  std::optional<NodeId> enum_member(std::string_view name, const std::vector<NodeId>& args);
  std::optional<NodeId> ndarray_reconstruct(std::string_view name, const std::vector<NodeId>& args);
  std::optional<NodeId> numpy_scalar(std::string_view name, const std::vector<NodeId>& args);
  std::optional<NodeId> numpy_dtype(std::string_view name, const std::vector<NodeId>& args);
  void build(NodeId target, NodeId state);
  void append_to(NodeId target, const std::vector<NodeId>& values);
  void set_items(NodeId target, const std::vector<NodeId>& pairs);
  NodeId object_slot(NodeId object, ObjectSlot slot, Kind kind);
  void validate_shape();

  bool as_int(NodeId id, std::int64_t& out) const {
    const Node& n = graph_.at(id);
    if (n.kind == Kind::integer) {
      out = n.integer;
      return true;
    }
    if (n.kind == Kind::boolean) {
      out = n.flag ? 1 : 0;
      return true;
    }
    return false;
  }
  bool as_int_tuple(NodeId id, std::vector<std::int64_t>& out) const {
    const Node& n = graph_.at(id);
    if (n.kind != Kind::tuple && n.kind != Kind::list) return false;
    out.clear();
    for (NodeId item : n.items) {
      std::int64_t v = 0;
      if (!as_int(item, v)) return false;
      out.push_back(v);
    }
    return true;
  }
  const std::string* as_str(NodeId id) const {
    const Node& n = graph_.at(id);
    return n.kind == Kind::string ? &n.text : nullptr;
  }

  Graph graph_;
  ByteReader in_;
  const PersistentLoad& persistent_load_;
  std::vector<NodeId> stack_;
  std::vector<std::size_t> marks_;
  std::unordered_map<std::uint64_t, NodeId> memo_;
  std::size_t op_start_ = 0;
  std::size_t copied_ = 0;
};

}  // namespace ckpt::pickle::detail
