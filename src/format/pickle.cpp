#include "format/pickle.hpp"

#include <charconv>
#include <cstring>
#include <unordered_map>

#include "format/big_int.hpp"
#include "format/pickle_opcodes.hpp"
#include "util/byte_reader.hpp"
#include "util/error.hpp"
#include "util/utf8.hpp"

namespace ckpt::pickle {
namespace {

// Python refuses to convert decimal strings longer than this (sys.int_info.default_max_str_digits); so do we,
// which also keeps the quadratic decimal-to-binary conversion cheap.
constexpr std::size_t kMaxDecimalDigits = 4300;
constexpr std::size_t kMaxLine = 1u << 16;
// 256 TiB: no real tensor comes near, and sums of many such sizes cannot overflow 64 bits.
constexpr std::uint64_t kMaxTensorBytes = 1ull << 48;


std::string latin1_to_utf8(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  for (unsigned char c : bytes) append_utf8(out, c);
  return out;
}

// Decodes UTF-8 into code points; false on malformed input.
bool utf8_code_points(std::string_view s, std::vector<std::uint32_t>& out) {
  for (std::size_t i = 0; i < s.size();) {
    const unsigned char lead = static_cast<unsigned char>(s[i]);
    const std::size_t extra = lead < 0x80 ? 0 : (lead >> 5) == 6 ? 1 : (lead >> 4) == 14 ? 2 : (lead >> 3) == 30 ? 3 : 4;
    if (extra == 4 || i + extra >= s.size()) return false;
    std::uint32_t cp = extra == 0 ? lead : lead & (0x3Fu >> extra);
    for (std::size_t k = 1; k <= extra; ++k) {
      const unsigned char cont = static_cast<unsigned char>(s[i + k]);
      if ((cont >> 6) != 2) return false;
      cp = (cp << 6) | (cont & 0x3F);
    }
    out.push_back(cp);
    i += extra + 1;
  }
  return true;
}

// Little-endian two's complement bytes -> int64 when they fit.
bool fits_int64(std::span<const std::uint8_t> le, std::int64_t& out) {
  if (le.empty()) {
    out = 0;
    return true;
  }
  const bool negative = (le.back() & 0x80) != 0;
  const std::uint8_t fill = negative ? 0xFF : 0x00;
  std::size_t n = le.size();
  while (n > 8 && le[n - 1] == fill) --n;
  if (n > 8) return false;
  if (n == 8 && ((le[7] & 0x80) != 0) != negative) return false;
  std::uint64_t v = negative ? ~0ull : 0;
  for (std::size_t i = 0; i < n; ++i) {
    v &= ~(0xFFull << (8 * i));
    v |= static_cast<std::uint64_t>(le[i]) << (8 * i);
  }
  out = static_cast<std::int64_t>(v);
  return true;
}

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
        case 'n': out += '\n'; break;
        case 't': out += '\t'; break;
        case 'r': out += '\r'; break;
        case 'a': out += '\a'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'v': out += '\v'; break;
        case '\\': out += '\\'; break;
        case '\'': out += '\''; break;
        case '"': out += '"'; break;
        case '\n': break;
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

void Parser::step(Op op) {
  switch (op) {
    case Op::proto: {
      std::uint8_t version = in_.u8();
      if (version > 5) refuse("pickle protocol " + std::to_string(version) + " is newer than 5");
      return;
    }
    case Op::frame:  // a buffering hint, but one that must fit
      if (in_.u64le() > in_.remaining()) bad("FRAME longer than the rest of the pickle");
      return;
    case Op::mark: marks_.push_back(stack_.size()); return;
    case Op::pop:  // (pops the mark when the stack above it is empty, as CPython does)
      if (stack_.size() > floor()) stack_.pop_back();
      else pop_mark();
      return;
    case Op::pop_mark: pop_mark(); return;
    case Op::dup: push(top()); return;
    case Op::none: push(graph_.none()); return;
    case Op::newtrue:
    case Op::newfalse: {
      Node n;
      n.kind = Kind::boolean;
      n.flag = op == Op::newtrue;
      push(add(std::move(n)));
      return;
    }
    case Op::int_text: {  // also spells booleans as I01 / I00
      std::string_view text = line();
      if (text == "01" || text == "00") {
        Node n;
        n.kind = Kind::boolean;
        n.flag = text == "01";
        push(add(std::move(n)));
      } else {
        push(parse_decimal_int(text));
      }
      return;
    }
    case Op::long_text: push(parse_decimal_int(line())); return;
    case Op::binint: push(add_int(in_.i32le())); return;
    case Op::binint1: push(add_int(in_.u8())); return;
    case Op::binint2: push(add_int(in_.u16le())); return;
    case Op::long1: push(add_long(in_.take(in_.u8()))); return;
    case Op::long4: {
      std::int32_t n = in_.i32le();
      if (n < 0) bad("LONG4 with a negative length");
      push(add_long(in_.take(static_cast<std::uint64_t>(n))));
      return;
    }
    case Op::float_text: {
      std::string_view text = line();
      Node n;
      n.kind = Kind::floating;
      auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), n.number);
      if (ec != std::errc() || p != text.data() + text.size()) bad("FLOAT operand is not a number");
      push(add(std::move(n)));
      return;
    }
    case Op::binfloat: {  // big-endian IEEE 754 double
      auto b = in_.take(8);
      std::uint64_t bits = 0;
      for (int i = 0; i < 8; ++i) bits = (bits << 8) | b[static_cast<std::size_t>(i)];
      Node n;
      n.kind = Kind::floating;
      std::memcpy(&n.number, &bits, 8);
      push(add(std::move(n)));
      return;
    }
    case Op::string: push(add_text(Kind::string, latin1_to_utf8(unescape_python_string(line())))); return;
    case Op::binstring: {
      std::int32_t n = in_.i32le();
      if (n < 0) bad("BINSTRING with a negative length");
      push(add_text(Kind::string, latin1_to_utf8(in_.take_chars(static_cast<std::uint64_t>(n)))));
      return;
    }
    case Op::short_binstring: push(add_text(Kind::string, latin1_to_utf8(in_.take_chars(in_.u8())))); return;
    case Op::unicode: push(add_text(Kind::string, decode_raw_unicode_escape(line()))); return;
    case Op::binunicode: push(add_text(Kind::string, std::string(in_.take_chars(in_.u32le())))); return;
    case Op::short_binunicode: push(add_text(Kind::string, std::string(in_.take_chars(in_.u8())))); return;
    case Op::binunicode8: push(add_text(Kind::string, std::string(in_.take_chars(in_.u64le())))); return;
    case Op::binbytes: push(add_text(Kind::bytes, std::string(in_.take_chars(in_.u32le())))); return;
    case Op::short_binbytes: push(add_text(Kind::bytes, std::string(in_.take_chars(in_.u8())))); return;
    case Op::binbytes8:
    case Op::bytearray8:
      push(add_text(Kind::bytes, std::string(in_.take_chars(in_.u64le()))));
      return;
    case Op::empty_tuple: push(add_container(Kind::tuple)); return;
    case Op::empty_list: push(add_container(Kind::list)); return;
    case Op::empty_dict: push(add_container(Kind::dict)); return;
    case Op::empty_set: push(add_container(Kind::set)); return;
    case Op::tuple: push(add_container(Kind::tuple, pop_mark())); return;
    case Op::tuple1:
    case Op::tuple2:
    case Op::tuple3: {
      std::vector<NodeId> items(static_cast<std::size_t>(op) - static_cast<std::size_t>(Op::tuple1) + 1);
      for (auto it = items.rbegin(); it != items.rend(); ++it) *it = pop();
      push(add_container(Kind::tuple, std::move(items)));
      return;
    }
    case Op::list: push(add_container(Kind::list, pop_mark())); return;
    case Op::frozenset: push(add_container(Kind::frozenset, pop_mark())); return;
    case Op::dict: {
      std::vector<NodeId> items = pop_mark();
      if (items.size() % 2 != 0) bad("DICT with an odd number of keys and values");
      push(add_container(Kind::dict, std::move(items)));
      return;
    }
    case Op::append: {
      NodeId value = pop();
      append_to(top(), {value});
      return;
    }
    case Op::appends: {
      std::vector<NodeId> values = pop_mark();
      append_to(top(), values);
      return;
    }
    case Op::setitem: {
      NodeId value = pop();
      NodeId key = pop();
      set_items(top(), {key, value});
      return;
    }
    case Op::setitems: {
      std::vector<NodeId> pairs = pop_mark();
      if (pairs.size() % 2 != 0) bad("SETITEMS with an odd number of keys and values");
      set_items(top(), pairs);
      return;
    }
    case Op::additems: {
      std::vector<NodeId> values = pop_mark();
      NodeId target = top();
      if (!graph_.is(target, Kind::set)) bad("ADDITEMS to something that is not a set");
      auto& items = graph_.at(target).items;
      items.insert(items.end(), values.begin(), values.end());
      return;
    }
    case Op::global: {
      std::string module(line());
      std::string name(line());
      push(add_global(module, name));
      return;
    }
    case Op::stack_global: {
      NodeId name = pop();
      NodeId module = pop();
      if (!as_str(name) || !as_str(module)) bad("STACK_GLOBAL operands are not strings");
      push(add_global(*as_str(module), *as_str(name)));
      return;
    }
    case Op::persid:
    case Op::binpersid: {
      NodeId pid = op == Op::persid ? add_text(Kind::string, std::string(line())) : pop();
      if (!persistent_load_) refuse("persistent id outside a torch archive");
      try {
        push(persistent_load_(graph_, pid));
      } catch (const Error& e) {
        throw e.with_context("", "byte " + std::to_string(op_start_));
      }
      return;
    }
    case Op::reduce: {
      NodeId args = pop();
      NodeId callable = pop();
      if (!graph_.is(args, Kind::tuple)) bad("REDUCE arguments are not a tuple");
      push(interpret_call(callable, args, false));
      return;
    }
    case Op::newobj: {
      NodeId args = pop();
      NodeId cls = pop();
      if (!graph_.is(args, Kind::tuple)) bad("NEWOBJ arguments are not a tuple");
      push(interpret_call(cls, args, true));
      return;
    }
    case Op::newobj_ex: {  // keyword arguments become the object's set items
      NodeId kwargs = pop();
      NodeId args = pop();
      NodeId cls = pop();
      if (!graph_.is(args, Kind::tuple) || !graph_.is(kwargs, Kind::dict)) bad("NEWOBJ_EX operands malformed");
      NodeId object = opaque_call(cls, args, true);
      const std::vector<NodeId> pairs = graph_.at(kwargs).items;  // a copy: set_items may grow the node table
      set_items(object, pairs);
      push(object);
      return;
    }
    case Op::inst: {
      std::string module(line());
      std::string name(line());
      std::vector<NodeId> args = pop_mark();
      NodeId cls = add_global(module, name);
      push(opaque_call(cls, add_container(Kind::tuple, std::move(args)), false));
      return;
    }
    case Op::obj: {
      std::vector<NodeId> items = pop_mark();
      if (items.empty()) bad("OBJ without a class");
      NodeId cls = items.front();
      items.erase(items.begin());
      push(opaque_call(cls, add_container(Kind::tuple, std::move(items)), false));
      return;
    }
    case Op::build: {
      NodeId state = pop();
      build(top(), state);
      return;
    }
    case Op::put: memo_[line_index()] = top(); return;
    case Op::binput: memo_[in_.u8()] = top(); return;
    case Op::long_binput: memo_[in_.u32le()] = top(); return;
    case Op::memoize: memo_[memo_.size()] = top(); return;
    case Op::get:
    case Op::binget:
    case Op::long_binget: {
      std::uint64_t index = op == Op::get ? line_index() : op == Op::binget ? in_.u8() : in_.u32le();
      auto it = memo_.find(index);
      if (it == memo_.end()) bad("memo entry " + std::to_string(index) + " was never stored");
      push(it->second);
      return;
    }
    case Op::ext1:
    case Op::ext2:
    case Op::ext4: refuse("copyreg extension codes (EXT1/EXT2/EXT4) are not supported");
    case Op::next_buffer:
    case Op::readonly_buffer: refuse("out-of-band buffers (pickle protocol 5) are not supported");
    default: {
      char hex[8];
      std::snprintf(hex, sizeof hex, "0x%02x", static_cast<unsigned>(op));
      bad(std::string("unknown pickle opcode ") + hex);
    }
  }
}

NodeId Parser::opaque_call(NodeId callable, NodeId args, bool newobj) {
  Node n;
  n.kind = Kind::object;
  n.flag = newobj;
  n.items = {callable, args, graph_.none(), graph_.none(), graph_.none()};
  return add(std::move(n));
}

NodeId Parser::object_slot(NodeId object, ObjectSlot slot, Kind kind) {
  NodeId current = graph_.at(object).items[slot];
  if (current == graph_.none()) {
    current = add_container(kind);
    graph_.at(object).items[slot] = current;
  }
  return current;
}

void Parser::append_to(NodeId target, const std::vector<NodeId>& values) {
  if (graph_.is(target, Kind::object)) target = object_slot(target, object_appended, Kind::list);
  if (!graph_.is(target, Kind::list)) bad("APPEND to something that is not a list");
  charge(values.size());
  auto& items = graph_.at(target).items;
  items.insert(items.end(), values.begin(), values.end());
}

void Parser::set_items(NodeId target, const std::vector<NodeId>& pairs) {
  if (graph_.is(target, Kind::object)) target = object_slot(target, object_set_items, Kind::dict);
  if (!graph_.is(target, Kind::dict)) bad("SETITEM on something that is not a dict");
  // A repeated key is kept twice, never searched for (that would make SETITEMS quadratic); readers take the
  // last occurrence, which is the value Python would keep.
  charge(pairs.size());
  auto& items = graph_.at(target).items;
  items.insert(items.end(), pairs.begin(), pairs.end());
}

std::optional<NodeId> Parser::rebuild_tensor(std::string_view name, const std::vector<NodeId>& args) {
  const bool v3 = name == "_rebuild_tensor_v3";
  const std::size_t needed = name == "_rebuild_tensor" ? 4 : v3 ? 7 : 6;
  if (args.size() < needed || !graph_.is(args[0], Kind::storage)) return std::nullopt;
  TensorRef t;
  t.storage = static_cast<std::uint32_t>(graph_.at(args[0]).integer);
  const StorageRef& storage = graph_.storages[t.storage];
  t.dtype = storage.dtype;
  std::int64_t requires_grad = 0;
  if (!as_int(args[1], t.storage_offset) || !as_int_tuple(args[2], t.shape) || !as_int_tuple(args[3], t.stride)) {
    bad("tensor rebuilt with malformed offset, size or stride");
  }
  if (needed > 4 && !as_int(args[4], requires_grad)) bad("tensor rebuilt with a malformed requires_grad");
  t.requires_grad = requires_grad != 0;
  if (v3) {
    const Node& dtype = graph_.at(args[6]);
    std::optional<DType> d;
    if (dtype.kind == Kind::global && dtype.text.rfind("torch\n", 0) == 0) d = dtype_from_torch_attribute(dtype.text.substr(6));
    if (!d) bad("_rebuild_tensor_v3 with an unknown dtype");
    t.dtype = *d;
  }
  if (t.shape.size() != t.stride.size()) bad("tensor size and stride have different lengths");
  if (t.storage_offset < 0) bad("negative storage offset");
  // The highest element the view touches must lie inside the storage; all arithmetic overflow-checked.
  std::uint64_t numel = 1;
  std::uint64_t last = static_cast<std::uint64_t>(t.storage_offset);
  bool empty = false;
  for (std::size_t i = 0; i < t.shape.size(); ++i) {
    if (t.shape[i] < 0 || t.stride[i] < 0) bad("negative tensor size or stride");
    if (t.shape[i] == 0) empty = true;
    std::uint64_t span = 0;
    if (!checked_mul(numel, static_cast<std::uint64_t>(t.shape[i]), numel) ||
        (t.shape[i] > 0 && (!checked_mul(static_cast<std::uint64_t>(t.shape[i] - 1),
                                         static_cast<std::uint64_t>(t.stride[i]), span) ||
                            !checked_add(last, span, last)))) {
      bad("tensor shape or stride overflows 64 bits");
    }
  }
  // Views that repeat elements without stride-0 dimensions (overlapping strides) could make a tiny storage
  // look enormous to every walk over their elements; checkpoints never hold them, so refuse them past a bound.
  std::uint64_t distinct = 1;
  for (std::size_t i = 0; i < t.shape.size(); ++i) {
    if (t.stride[i] != 0) distinct *= static_cast<std::uint64_t>(t.shape[i]);  // cannot overflow: divides numel
  }
  const std::uint64_t storage_elements = storage.untyped ? storage.numel / element_size(t.dtype) : storage.numel;
  if (!empty && distinct > 16 * storage_elements + 16) bad("tensor view repeats its storage's elements more than 16 times");
  // Byte sizes are summed over many tensors later: keep each far from the top of 64 bits.
  std::uint64_t nbytes = 0;
  if (!checked_mul(numel, element_size(t.dtype), nbytes) || nbytes > kMaxTensorBytes) {
    bad("tensor of " + std::to_string(numel) + " elements is larger than 2^48 bytes");
  }
  if (!empty) {
    std::uint64_t capacity_bytes = storage.untyped ? storage.numel : 0;
    if (!storage.untyped && !checked_mul(storage.numel, element_size(storage.dtype), capacity_bytes)) {
      bad("storage size overflows 64 bits");
    }
    std::uint64_t end_bytes = 0;
    if (!checked_add(last, 1, end_bytes) || !checked_mul(end_bytes, element_size(t.dtype), end_bytes) ||
        end_bytes > capacity_bytes) {
      bad("tensor view reaches past the end of storage '" + storage.key + "' (" + std::to_string(capacity_bytes) +
          " bytes)");
    }
  }
  return graph_.add_tensor(std::move(t));
}

// The globals a checkpoint's pickle calls that become values: each reconstructor checks its arguments and builds the
// value, or returns nullopt when they are not what it knows, and the call stays an opaque object node. Nothing else
// is ever called.
const Parser::Reconstructor Parser::kReconstructors[] = {
    {"collections", "OrderedDict", &Parser::ordered_dict},
    {"torch._utils", "_rebuild_tensor", &Parser::rebuild_tensor},
    {"torch._utils", "_rebuild_tensor_v2", &Parser::rebuild_tensor},
    {"torch._utils", "_rebuild_tensor_v3", &Parser::rebuild_tensor},
    {"torch._utils", "_rebuild_parameter", &Parser::rebuild_parameter},
    {"torch._utils", "_rebuild_parameter_with_state", &Parser::rebuild_parameter},
    {"torch._utils", "_rebuild_from_type_v2", &Parser::rebuild_from_type},
    {"torch", "device", &Parser::torch_device},
    {"torch", "Size", &Parser::torch_size},
    {"_codecs", "encode", &Parser::codecs_encode},
    {"builtins", "set", &Parser::set_of},
    {"builtins", "frozenset", &Parser::set_of},
    {"builtins", "bytes", &Parser::bytes_of},
    {"builtins", "bytearray", &Parser::bytes_of},
    {"builtins", "getattr", &Parser::enum_member},
    {"numpy.core.multiarray", "_reconstruct", &Parser::ndarray_reconstruct},
    {"numpy._core.multiarray", "_reconstruct", &Parser::ndarray_reconstruct},
    {"numpy.core.multiarray", "scalar", &Parser::numpy_scalar},
    {"numpy._core.multiarray", "scalar", &Parser::numpy_scalar},
    {"numpy", "dtype", &Parser::numpy_dtype},
};

NodeId Parser::interpret_call(NodeId callable, NodeId args_id, bool newobj) {
  if (!graph_.is(callable, Kind::global)) return opaque_call(callable, args_id, newobj);
  const std::string& full = graph_.at(callable).text;
  const std::size_t split = full.find('\n');
  const std::string_view module(full.data(), split);
  const std::string_view name(full.data() + split + 1, full.size() - split - 1);
  charge(graph_.at(args_id).items.size());
  for (const Reconstructor& r : kReconstructors) {
    if (r.module != module || r.name != name) continue;
    const std::vector<NodeId> args = graph_.at(args_id).items;  // a copy: adding nodes may move the vector
    if (const auto value = (this->*r.build)(r.name, args)) return *value;
    break;
  }
  return opaque_call(callable, args_id, newobj);
}

std::optional<NodeId> Parser::ordered_dict(std::string_view, const std::vector<NodeId>& args) {
  if (args.empty()) {
    NodeId d = add_container(Kind::dict);
    graph_.at(d).flag = true;
    return d;
  }
  if (args.size() != 1 || !graph_.is(args[0], Kind::list)) return std::nullopt;
  std::vector<NodeId> pairs;
  for (NodeId item : graph_.at(args[0]).items) {
    if (!graph_.is(item, Kind::tuple) || graph_.at(item).items.size() != 2) return std::nullopt;
    pairs.push_back(graph_.at(item).items[0]);
    pairs.push_back(graph_.at(item).items[1]);
  }
  NodeId d = add_container(Kind::dict);
  graph_.at(d).flag = true;
  set_items(d, pairs);
  return d;
}

std::optional<NodeId> Parser::rebuild_parameter(std::string_view, const std::vector<NodeId>& args) {
  if (args.empty() || !graph_.is(args[0], Kind::tensor)) return std::nullopt;
  TensorRef t = graph_.tensors[static_cast<std::size_t>(graph_.at(args[0]).integer)];
  t.is_parameter = true;
  std::int64_t requires_grad = 1;
  if (args.size() > 1) as_int(args[1], requires_grad);
  t.requires_grad = requires_grad != 0;
  return graph_.add_tensor(std::move(t));
}

// (func, new_type, args, state): the tensor is func(*args); a plain Tensor/Parameter type adds nothing.
std::optional<NodeId> Parser::rebuild_from_type(std::string_view, const std::vector<NodeId>& args) {
  if (args.size() < 3 || !graph_.is(args[0], Kind::global) || !graph_.is(args[2], Kind::tuple)) return std::nullopt;
  const std::string type = graph_.is(args[1], Kind::global) ? graph_.global_name(args[1]) : "";
  const std::string func = graph_.global_name(args[0]);
  if ((type != "torch.Tensor" && type != "torch.nn.parameter.Parameter") || func.rfind("torch._utils._rebuild_tensor", 0) != 0) {
    return std::nullopt;
  }
  // Applied directly (never through interpret_call again), so nesting cannot recurse.
  charge(graph_.at(args[2]).items.size());
  const auto inner = rebuild_tensor(std::string_view(func).substr(13), graph_.at(args[2]).items);
  if (inner) graph_.tensors[static_cast<std::size_t>(graph_.at(*inner).integer)].is_parameter = type != "torch.Tensor";
  return inner;
}

std::optional<NodeId> Parser::torch_device(std::string_view, const std::vector<NodeId>& args) {
  if (args.empty() || !as_str(args[0])) return std::nullopt;
  std::string device = *as_str(args[0]);
  std::int64_t index = 0;
  if (args.size() > 1 && as_int(args[1], index)) device += ":" + std::to_string(index);
  return add_text(Kind::device, device);
}

std::optional<NodeId> Parser::torch_size(std::string_view, const std::vector<NodeId>& args) {
  std::vector<std::int64_t> dims;
  if (args.size() != 1 || !as_int_tuple(args[0], dims)) return std::nullopt;
  return add_container(Kind::tuple, graph_.at(args[0]).items);
}

std::optional<NodeId> Parser::codecs_encode(std::string_view, const std::vector<NodeId>& args) {
  if (args.size() != 2 || !as_str(args[0]) || !as_str(args[1])) return std::nullopt;
  const std::string& encoding = *as_str(args[1]);
  if (encoding == "latin1" || encoding == "latin-1" || encoding == "iso-8859-1") {
    std::vector<std::uint32_t> cps;
    if (!utf8_code_points(*as_str(args[0]), cps)) bad("_codecs.encode of malformed UTF-8");
    std::string bytes;
    bytes.reserve(cps.size());
    for (std::uint32_t cp : cps) {
      if (cp > 0xFF) bad("_codecs.encode of a character outside latin-1");
      bytes += static_cast<char>(cp);
    }
    return add_text(Kind::bytes, std::move(bytes));
  }
  if (encoding == "utf-8" || encoding == "utf8") return add_text(Kind::bytes, *as_str(args[0]));
  return std::nullopt;
}

std::optional<NodeId> Parser::set_of(std::string_view name, const std::vector<NodeId>& args) {
  if (args.size() > 1) return std::nullopt;
  std::vector<NodeId> items;
  if (args.size() == 1) {
    const Node& from = graph_.at(args[0]);
    if (from.kind != Kind::list && from.kind != Kind::tuple && from.kind != Kind::set && from.kind != Kind::frozenset) {
      return std::nullopt;
    }
    items = from.items;
  }
  return add_container(name == "set" ? Kind::set : Kind::frozenset, std::move(items));
}

// bytes(), bytes(b'...'), or bytes(str, encoding), which is _codecs.encode(str, encoding).
std::optional<NodeId> Parser::bytes_of(std::string_view, const std::vector<NodeId>& args) {
  if (args.empty()) return add_text(Kind::bytes, "");
  if (graph_.is(args[0], Kind::bytes)) return add_text(Kind::bytes, graph_.at(args[0]).text);
  if (args.size() != 2 || !as_str(args[0]) || !as_str(args[1])) return std::nullopt;
  if (auto encoded = codecs_encode("encode", args)) return encoded;
  // An encoding ckpt does not know stays a call of _codecs.encode, as Python would make it.
  return opaque_call(add_global("_codecs", "encode"), add_container(Kind::tuple, std::vector<NodeId>(args)), false);
}

// An enum member (getattr(IntervalStrategy, 'STEPS')): a longer name, still never resolved.
std::optional<NodeId> Parser::enum_member(std::string_view, const std::vector<NodeId>& args) {
  if (args.size() != 2 || !graph_.is(args[0], Kind::global) || !as_str(args[1])) return std::nullopt;
  return add_text(Kind::global, graph_.at(args[0]).text + "." + *as_str(args[1]));
}

// The array's contents come with BUILD (see build()).
std::optional<NodeId> Parser::ndarray_reconstruct(std::string_view, const std::vector<NodeId>& args) {
  if (args.size() != 3 || !graph_.is_global(args[0], "numpy", "ndarray")) return std::nullopt;
  return graph_.add_array({});
}

std::optional<NodeId> Parser::numpy_scalar(std::string_view, const std::vector<NodeId>& args) {
  if (args.size() != 2 || !graph_.is(args[0], Kind::numpy_dtype) || !graph_.is(args[1], Kind::bytes)) return std::nullopt;
  NdArray array;
  const Node& dtype = graph_.at(args[0]);
  array.descr = std::string(1, static_cast<char>(dtype.integer)) + dtype.text;
  array.plain_dtype = !dtype.flag;
  array.scalar = true;
  array.data = graph_.at(args[1]).text;
  return graph_.add_array(std::move(array));
}

std::optional<NodeId> Parser::numpy_dtype(std::string_view, const std::vector<NodeId>& args) {
  if (args.empty() || !as_str(args[0])) return std::nullopt;
  Node n;
  n.kind = Kind::numpy_dtype;
  n.text = *as_str(args[0]);
  n.integer = '|';
  return add(std::move(n));
}

void Parser::build(NodeId target, NodeId state) {
  Node& t = graph_.at(target);
  switch (t.kind) {
    case Kind::object:
      t.items[object_state] = state;
      return;
    case Kind::dict:  // OrderedDict attributes (a state dict's _metadata)
      t.attributes = state;
      return;
    case Kind::numpy_dtype: {
      // (version, byteorder, subarray, names, fields, elsize, alignment, flags)
      const Node& s = graph_.at(state);
      if (s.kind == Kind::tuple && s.items.size() >= 2 && as_str(s.items[1]) && as_str(s.items[1])->size() == 1) {
        graph_.at(target).integer = (*as_str(s.items[1]))[0];
      }
      // Only (3, byteorder, None, None, None, -1, -1, 0) is all a byte order and the type string say.
      std::int64_t version = 0, elsize = 0, alignment = 0, flags = 1;
      const bool plain = s.kind == Kind::tuple && s.items.size() == 8 && as_int(s.items[0], version) && version == 3 &&
                         graph_.is(s.items[2], Kind::none) && graph_.is(s.items[3], Kind::none) && graph_.is(s.items[4], Kind::none) &&
                         as_int(s.items[5], elsize) && elsize == -1 && as_int(s.items[6], alignment) && alignment == -1 &&
                         as_int(s.items[7], flags) && flags == 0;
      graph_.at(target).flag = !plain;
      return;
    }
    case Kind::ndarray: {
      // (version, shape, dtype, is_fortran, raw data) as ndarray.__setstate__ takes it
      const Node& s = graph_.at(state);
      std::vector<std::int64_t> shape;
      if (s.kind != Kind::tuple || s.items.size() != 5 || !as_int_tuple(s.items[1], shape) ||
          !graph_.is(s.items[2], Kind::numpy_dtype)) {
        bad("numpy array state is malformed");
      }
      NdArray& array = graph_.arrays[static_cast<std::size_t>(t.integer)];
      const Node& dtype = graph_.at(s.items[2]);
      array.descr = std::string(1, static_cast<char>(dtype.integer)) + dtype.text;
      array.plain_dtype = !dtype.flag;
      array.shape = shape;
      std::int64_t fortran = 0;
      array.fortran_order = as_int(s.items[3], fortran) && fortran != 0;
      if (graph_.is(s.items[4], Kind::bytes) || graph_.is(s.items[4], Kind::string)) {
        charge(graph_.at(s.items[4]).text.size());
        array.data = graph_.at(s.items[4]).text;
        array.data_kind = NdArray::Data::bytes;
      } else {
        array.data_kind = graph_.is(s.items[4], Kind::list) ? NdArray::Data::object_list : NdArray::Data::other;
      }
      return;
    }
    case Kind::tensor:
      return;  // python attributes set on a tensor: nothing a checkpoint reader needs
    default:
      bad("BUILD on a value that takes no state");
  }
}

// Rejects cycles and over-deep nesting once, so that every later recursive walk terminates with bounded
// stack. Iterative, because the graph is exactly what we cannot trust yet.
void Parser::validate_shape() {
  enum : std::uint8_t { unseen, open, done };
  std::vector<std::uint8_t> state(graph_.size(), unseen);
  std::vector<std::uint32_t> height(graph_.size(), 0);
  struct Frame {
    NodeId id;
    std::size_t next;
  };
  auto children = [&](NodeId id, std::size_t i) -> std::optional<NodeId> {
    const Node& n = graph_.at(id);
    if (i < n.items.size()) return n.items[i];
    if (i == n.items.size() && n.attributes != 0) return n.attributes;
    return std::nullopt;
  };
  std::vector<Frame> stack{{graph_.root(), 0}};
  state[graph_.root()] = open;
  while (!stack.empty()) {
    Frame& f = stack.back();
    if (auto child = children(f.id, f.next++)) {
      if (state[*child] == open) {
        fail(ErrorKind::unsupported, "", "the pickle's values refer to themselves (a reference cycle)");
      }
      if (state[*child] == unseen) {
        if (stack.size() >= kMaxDepth) {
          fail(ErrorKind::unsupported, "", "values nested deeper than " + std::to_string(kMaxDepth));
        }
        state[*child] = open;
        stack.push_back({*child, 0});
      } else {
        height[f.id] = std::max(height[f.id], height[*child] + 1);
      }
      continue;
    }
    state[f.id] = done;
    const NodeId finished = f.id;
    stack.pop_back();
    if (height[finished] >= kMaxDepth) {
      fail(ErrorKind::unsupported, "", "values nested deeper than " + std::to_string(kMaxDepth));
    }
    if (!stack.empty()) height[stack.back().id] = std::max(height[stack.back().id], height[finished] + 1);
  }
}

}  // namespace

Graph::Graph() { nodes_.push_back(Node{}); }  // node 0 is the shared None

NodeId Graph::add(Node node) {
  nodes_.push_back(std::move(node));
  return static_cast<NodeId>(nodes_.size() - 1);
}

NodeId Graph::add_tensor(TensorRef tensor) {
  tensors.push_back(std::move(tensor));
  Node n;
  n.kind = Kind::tensor;
  n.integer = static_cast<std::int64_t>(tensors.size() - 1);
  return add(std::move(n));
}

NodeId Graph::add_array(NdArray array) {
  arrays.push_back(std::move(array));
  Node n;
  n.kind = Kind::ndarray;
  n.integer = static_cast<std::int64_t>(arrays.size() - 1);
  return add(std::move(n));
}

std::uint64_t TensorRef::element_extent() const {
  std::uint64_t last = 0;
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == 0) return 0;
    last += static_cast<std::uint64_t>(shape[i] - 1) * static_cast<std::uint64_t>(stride[i]);
  }
  return last + 1;
}

bool Graph::is_global(NodeId id, std::string_view module, std::string_view name) const {
  const Node& n = nodes_[id];
  return n.kind == Kind::global && n.text.size() == module.size() + 1 + name.size() &&
         n.text.compare(0, module.size(), module) == 0 && n.text[module.size()] == '\n' &&
         n.text.compare(module.size() + 1, name.size(), name) == 0;
}

std::string Graph::global_name(NodeId id) const {
  std::string name = nodes_[id].text;
  auto pos = name.find('\n');
  if (pos != std::string::npos) name[pos] = '.';
  return name;
}

const NodeId* Graph::dict_get(NodeId id, std::string_view key) const {
  const Node& d = nodes_[id];
  if (d.kind != Kind::dict) return nullptr;
  for (std::size_t i = d.items.size() / 2; i-- > 0;) {
    const Node& k = nodes_[d.items[2 * i]];
    if (k.kind == Kind::string && k.text == key) return &d.items[2 * i + 1];
  }
  return nullptr;
}

Graph parse(std::span<const std::uint8_t> bytes, const PersistentLoad& persistent_load) {
  return Parser(bytes, persistent_load).run();
}

bool looks_like_legacy_torch(std::span<const std::uint8_t> bytes) {
  static constexpr std::uint8_t kMagic[] = {0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46,
                                            0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e};
  return bytes.size() >= sizeof kMagic && std::memcmp(bytes.data(), kMagic, sizeof kMagic) == 0;
}

}  // namespace ckpt::pickle
