#include "format/pickle.hpp"

#include "format/pickle_parser.hpp"

namespace ckpt::pickle {
namespace detail {

std::string latin1_to_utf8(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  for (unsigned char c : bytes) append_utf8(out, c);
  return out;
}

bool utf8_code_points(std::string_view s, std::vector<std::uint32_t>& out) {
  for (std::size_t i = 0; i < s.size();) {
    const unsigned char lead = static_cast<unsigned char>(s[i]);
    const std::size_t extra = lead < 0x80         ? 0
                              : (lead >> 5) == 6  ? 1
                              : (lead >> 4) == 14 ? 2
                              : (lead >> 3) == 30 ? 3
                                                  : 4;
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
    case Op::mark:
      marks_.push_back(stack_.size());
      return;
    case Op::pop:  // (pops the mark when the stack above it is empty, as CPython does)
      if (stack_.size() > floor())
        stack_.pop_back();
      else
        pop_mark();
      return;
    case Op::pop_mark:
      pop_mark();
      return;
    case Op::dup:
      push(top());
      return;
    case Op::none:
      push(graph_.none());
      return;
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
    case Op::long_text:
      push(parse_decimal_int(line()));
      return;
    case Op::binint:
      push(add_int(in_.i32le()));
      return;
    case Op::binint1:
      push(add_int(in_.u8()));
      return;
    case Op::binint2:
      push(add_int(in_.u16le()));
      return;
    case Op::long1:
      push(add_long(in_.take(in_.u8())));
      return;
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
    case Op::string:
      push(add_text(Kind::string, latin1_to_utf8(unescape_python_string(line()))));
      return;
    case Op::binstring: {
      std::int32_t n = in_.i32le();
      if (n < 0) bad("BINSTRING with a negative length");
      push(add_text(Kind::string, latin1_to_utf8(in_.take_chars(static_cast<std::uint64_t>(n)))));
      return;
    }
    case Op::short_binstring:
      push(add_text(Kind::string, latin1_to_utf8(in_.take_chars(in_.u8()))));
      return;
    case Op::unicode:
      push(add_text(Kind::string, decode_raw_unicode_escape(line())));
      return;
    case Op::binunicode:
      push(add_text(Kind::string, std::string(in_.take_chars(in_.u32le()))));
      return;
    case Op::short_binunicode:
      push(add_text(Kind::string, std::string(in_.take_chars(in_.u8()))));
      return;
    case Op::binunicode8:
      push(add_text(Kind::string, std::string(in_.take_chars(in_.u64le()))));
      return;
    case Op::binbytes:
      push(add_text(Kind::bytes, std::string(in_.take_chars(in_.u32le()))));
      return;
    case Op::short_binbytes:
      push(add_text(Kind::bytes, std::string(in_.take_chars(in_.u8()))));
      return;
    case Op::binbytes8:
    case Op::bytearray8:
      push(add_text(Kind::bytes, std::string(in_.take_chars(in_.u64le()))));
      return;
    case Op::empty_tuple:
      push(add_container(Kind::tuple));
      return;
    case Op::empty_list:
      push(add_container(Kind::list));
      return;
    case Op::empty_dict:
      push(add_container(Kind::dict));
      return;
    case Op::empty_set:
      push(add_container(Kind::set));
      return;
    case Op::tuple:
      push(add_container(Kind::tuple, pop_mark()));
      return;
    case Op::tuple1:
    case Op::tuple2:
    case Op::tuple3: {
      std::vector<NodeId> items(static_cast<std::size_t>(op) - static_cast<std::size_t>(Op::tuple1) + 1);
      for (auto it = items.rbegin(); it != items.rend(); ++it) *it = pop();
      push(add_container(Kind::tuple, std::move(items)));
      return;
    }
    case Op::list:
      push(add_container(Kind::list, pop_mark()));
      return;
    case Op::frozenset:
      push(add_container(Kind::frozenset, pop_mark()));
      return;
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
    case Op::put:
      memo_[line_index()] = top();
      return;
    case Op::binput:
      memo_[in_.u8()] = top();
      return;
    case Op::long_binput:
      memo_[in_.u32le()] = top();
      return;
    case Op::memoize:
      memo_[memo_.size()] = top();
      return;
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
    case Op::ext4:
      refuse("copyreg extension codes (EXT1/EXT2/EXT4) are not supported");
    case Op::next_buffer:
    case Op::readonly_buffer:
      refuse("out-of-band buffers (pickle protocol 5) are not supported");
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
                         graph_.is(s.items[2], Kind::none) && graph_.is(s.items[3], Kind::none) &&
                         graph_.is(s.items[4], Kind::none) && as_int(s.items[5], elsize) && elsize == -1 &&
                         as_int(s.items[6], alignment) && alignment == -1 && as_int(s.items[7], flags) && flags == 0;
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

}  // namespace detail

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
  return detail::Parser(bytes, persistent_load).run();
}

bool looks_like_legacy_torch(std::span<const std::uint8_t> bytes) {
  static constexpr std::uint8_t kMagic[] = {0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46,
                                            0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e};
  return bytes.size() >= sizeof kMagic && std::memcmp(bytes.data(), kMagic, sizeof kMagic) == 0;
}

}  // namespace ckpt::pickle
