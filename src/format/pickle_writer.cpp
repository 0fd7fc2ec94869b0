#include "format/pickle_writer.hpp"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <unordered_map>

#include "format/pickle_opcodes.hpp"
#include "util/error.hpp"

namespace ckpt::pickle {
namespace {

class Writer {
 public:
  explicit Writer(const Graph& graph) : g_(graph) {}

  std::string run(NodeId root) {
    op(Op::proto);
    u8(2);
    value(root);
    op(Op::stop);
    return std::move(out_);
  }

 private:
  void u8(std::uint8_t v) { out_ += static_cast<char>(v); }
  void op(Op code) { u8(static_cast<std::uint8_t>(code)); }
  // The callable and its last one, two or three arguments are on the stack: call it.
  void call_with_one() {
    op(Op::tuple1);
    op(Op::reduce);
  }
  void call_with_pair() {
    op(Op::tuple2);
    op(Op::reduce);
  }
  void call_with_three() {
    op(Op::tuple3);
    op(Op::reduce);
  }
  void le(std::uint64_t v, int bytes) {
    for (int i = 0; i < bytes; ++i) u8(static_cast<std::uint8_t>(v >> (8 * i)));
  }

  void integer(std::int64_t v) {
    if (v >= 0 && v < 256) {
      op(Op::binint1);
      u8(static_cast<std::uint8_t>(v));
    } else if (v >= 0 && v < 65536) {
      op(Op::binint2);
      le(static_cast<std::uint64_t>(v), 2);
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
      op(Op::binint);
      le(static_cast<std::uint32_t>(static_cast<std::int32_t>(v)), 4);
    } else {
      // LONG1: the shortest little-endian two's complement, as CPython's encode_long writes it.
      std::string bytes;
      std::uint64_t u = static_cast<std::uint64_t>(v);
      for (int i = 0; i < 8; ++i) bytes += static_cast<char>((u >> (8 * i)) & 0xFF);
      const char fill = v < 0 ? '\xff' : '\x00';
      while (bytes.size() > 1 && bytes.back() == fill && ((bytes[bytes.size() - 2] & 0x80) != 0) == (v < 0))
        bytes.pop_back();
      long1(bytes);
    }
  }
  void long1(const std::string& le_bytes) {
    if (le_bytes.size() > 255) {
      op(Op::long4);
      le(le_bytes.size(), 4);
    } else {
      op(Op::long1);
      u8(static_cast<std::uint8_t>(le_bytes.size()));
    }
    out_ += le_bytes;
  }
  void floating(double v) {
    std::uint64_t bits;
    std::memcpy(&bits, &v, 8);
    op(Op::binfloat);
    for (int i = 7; i >= 0; --i) u8(static_cast<std::uint8_t>(bits >> (8 * i)));
  }
  void unicode(const std::string& s) {
    op(Op::binunicode);
    le(s.size(), 4);
    out_ += s;
  }
  // GLOBAL's operands are lines: a newline inside a name would inject opcodes. Names are dotted identifiers.
  static void check_name(const std::string& text) {
    const bool ok = !text.empty() && std::all_of(text.begin(), text.end(), [](char c) {
      return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.';
    });
    if (!ok) fail(ErrorKind::unsupported, "", "global name '" + text + "' is not a dotted identifier");
  }

  void global(const std::string& module, const std::string& name) {
    check_name(module);
    check_name(name);
    op(Op::global);
    out_ += module;
    u8('\n');
    out_ += name;
    u8('\n');
  }
  void empty_call(const std::string& module, const std::string& name) {
    global(module, name);
    op(Op::empty_tuple);
    op(Op::reduce);
  }

  // Python 3 bytes in protocol 2: _codecs.encode(<the bytes as latin-1 text>, 'latin1'); b'' is bytes().
  void bytes(const std::string& raw) {
    if (raw.empty()) {
      empty_call("__builtin__", "bytes");
      return;
    }
    global("_codecs", "encode");
    std::string latin1;
    for (unsigned char c : raw) {
      if (c < 0x80) {
        latin1 += static_cast<char>(c);
      } else {
        latin1 += static_cast<char>(0xC0 | (c >> 6));
        latin1 += static_cast<char>(0x80 | (c & 0x3F));
      }
    }
    unicode(latin1);
    unicode("latin1");
    call_with_pair();
  }

  void tuple_of(const std::vector<NodeId>& items) {
    switch (items.size()) {
      case 0:
        op(Op::empty_tuple);
        return;
      case 1:
        value(items[0]);
        op(Op::tuple1);
        return;
      case 2:
        value(items[0]);
        value(items[1]);
        op(Op::tuple2);
        return;
      case 3:
        value(items[0]);
        value(items[1]);
        value(items[2]);
        op(Op::tuple3);
        return;
      default:
        op(Op::mark);
        for (NodeId item : items) value(item);
        op(Op::tuple);
    }
  }
  void int_tuple(const std::vector<std::int64_t>& values) {
    if (values.empty()) {
      op(Op::empty_tuple);
      return;
    }
    if (values.size() > 3) op(Op::mark);
    for (std::int64_t v : values) integer(v);
    op(values.size() == 1 ? Op::tuple1 : values.size() == 2 ? Op::tuple2 : values.size() == 3 ? Op::tuple3 : Op::tuple);
  }
  // Container contents in batches of 1000, as CPython writes them.
  void batched(const std::vector<NodeId>& items, std::size_t step, Op closing) {
    for (std::size_t i = 0; i < items.size(); i += 1000 * step) {
      op(Op::mark);
      for (std::size_t k = i; k < std::min(items.size(), i + 1000 * step); ++k) value(items[k]);
      op(closing);
    }
  }

  // Written as the typed storage torch 1.13 pickles (an untyped storage, read from _rebuild_tensor_v3, takes
  // its tensor's dtype); dtypes that torch 1.13 has no storage class for are refused.
  void storage_pid(const StorageRef& s, DType dtype) {
    if (dtype == DType::uint16 || dtype == DType::uint32 || dtype == DType::uint64 || dtype == DType::float8_e5m2 ||
        dtype == DType::float8_e4m3fn) {
      fail(ErrorKind::unsupported, "storage '" + s.key + "'",
           std::string(torch_name(dtype)) + " has no torch.save storage type in torch 1.13");
    }
    op(Op::mark);
    unicode("storage");
    global("torch", std::string(storage_class(dtype)));
    unicode(s.key);
    unicode(s.location);
    integer(static_cast<std::int64_t>(s.untyped ? s.numel / element_size(dtype) : s.numel));
    op(Op::tuple);
    op(Op::binpersid);
  }

  void tensor(const TensorRef& t) {
    if (t.is_parameter) global("torch._utils", "_rebuild_parameter");
    global("torch._utils", "_rebuild_tensor_v2");
    op(Op::mark);
    storage_pid(g_.storages[t.storage], t.dtype);
    integer(t.storage_offset);
    int_tuple(t.shape);
    int_tuple(t.stride);
    op(t.is_parameter ? Op::newfalse : (t.requires_grad ? Op::newtrue : Op::newfalse));
    empty_call("collections", "OrderedDict");
    op(Op::tuple);
    op(Op::reduce);
    if (t.is_parameter) {
      op(t.requires_grad ? Op::newtrue : Op::newfalse);
      empty_call("collections", "OrderedDict");
      op(Op::tuple3);
      op(Op::reduce);
    }
  }

  void split_global(const std::string& text, std::string& module, std::string& name) {
    const auto nl = text.find('\n');
    module = text.substr(0, nl);
    name = nl == std::string::npos ? "" : text.substr(nl + 1);
  }

  void memoize(NodeId id) {
    const std::uint32_t index = static_cast<std::uint32_t>(memo_.size());
    memo_.emplace(id, index);
    if (index < 256) {
      op(Op::binput);
      u8(static_cast<std::uint8_t>(index));
    } else {
      op(Op::long_binput);
      le(index, 4);
    }
  }

  void value(NodeId id) {
    const Node& n = g_.at(id);
    if (auto it = memo_.find(id); it != memo_.end()) {
      if (it->second < 256) {
        op(Op::binget);
        u8(static_cast<std::uint8_t>(it->second));
      } else {
        op(Op::long_binget);
        le(it->second, 4);
      }
      return;
    }
    switch (n.kind) {
      case Kind::none:
        op(Op::none);
        return;
      case Kind::boolean:
        op(n.flag ? Op::newtrue : Op::newfalse);
        return;
      case Kind::integer:
        integer(n.integer);
        return;
      case Kind::big_integer:
        long1(n.text);
        return;
      case Kind::floating:
        floating(n.number);
        return;
      case Kind::string:
        unicode(n.text);
        break;
      case Kind::bytes:
        bytes(n.text);
        break;
      case Kind::tuple:
        tuple_of(n.items);
        break;
      case Kind::list:
        op(Op::empty_list);
        batched(n.items, 1, Op::appends);
        break;
      case Kind::dict:
        if (n.flag)
          empty_call("collections", "OrderedDict");
        else
          op(Op::empty_dict);
        batched(n.items, 2, Op::setitems);
        if (n.attributes != 0) {
          value(n.attributes);
          op(Op::build);
        }
        break;
      case Kind::set:
      case Kind::frozenset:
        global("__builtin__", n.kind == Kind::set ? "set" : "frozenset");
        op(Op::empty_list);
        batched(n.items, 1, Op::appends);
        call_with_one();
        break;
      case Kind::global: {
        std::string module, name;
        split_global(n.text, module, name);
        // An enum member read as getattr(Class, 'NAME'): written back the same way.
        const auto dot = name.rfind('.');
        if (dot != std::string::npos) {
          global("__builtin__", "getattr");
          global(module, name.substr(0, dot));
          unicode(name.substr(dot + 1));
          call_with_pair();
        } else {
          global(module, name);
        }
        break;
      }
      case Kind::device:
        global("torch", "device");
        unicode(n.text);
        call_with_one();
        break;
      case Kind::storage: {
        // A bare storage (rare outside tensors) is its persistent id.
        const auto& storage = g_.storages[static_cast<std::size_t>(n.integer)];
        storage_pid(storage, storage.dtype);
        break;
      }
      case Kind::tensor:
        tensor(g_.tensors[static_cast<std::size_t>(n.integer)]);
        break;
      case Kind::numpy_dtype:
        numpy_dtype(n.text, static_cast<char>(n.integer));
        break;
      case Kind::ndarray:
        ndarray(g_.arrays[static_cast<std::size_t>(n.integer)]);
        break;
      case Kind::object:
        object(n);
        break;
    }
    memoize(id);
  }

  // numpy.dtype(type, False, True) with BUILD (3, byteorder, None, None, None, -1, -1, 0), as numpy pickles it.
  void numpy_dtype(const std::string& type, char byteorder) {
    global("numpy", "dtype");
    unicode(type);
    op(Op::newfalse);
    op(Op::newtrue);
    call_with_three();
    op(Op::mark);
    integer(3);
    unicode(std::string(1, byteorder));
    op(Op::none);
    op(Op::none);
    op(Op::none);
    integer(-1);
    integer(-1);
    integer(0);
    op(Op::tuple);
    op(Op::build);
  }

  void ndarray(const NdArray& a) {
    if (a.scalar) {
      global("numpy.core.multiarray", "scalar");
      numpy_dtype(a.descr.substr(1), a.descr[0]);
      bytes(a.data);
      call_with_pair();
      return;
    }
    global("numpy.core.multiarray", "_reconstruct");
    global("numpy", "ndarray");
    integer(0);
    op(Op::tuple1);
    bytes("b");
    call_with_three();
    if (a.descr.empty()) return;  // never given its state (no BUILD was read): written as it was read
    op(Op::mark);
    integer(1);
    int_tuple(a.shape);
    numpy_dtype(a.descr.substr(1), a.descr[0]);
    op(a.fortran_order ? Op::newtrue : Op::newfalse);
    bytes(a.data);
    op(Op::tuple);
    op(Op::build);
  }

  void object(const Node& n) {
    const auto& slots = n.items;
    value(slots[object_callable]);
    value(slots[object_args]);
    op(n.flag ? Op::newobj : Op::reduce);
    if (slots[object_appended] != g_.none()) batched(g_.at(slots[object_appended]).items, 1, Op::appends);
    if (slots[object_set_items] != g_.none()) batched(g_.at(slots[object_set_items]).items, 2, Op::setitems);
    if (slots[object_state] != g_.none()) {
      value(slots[object_state]);
      op(Op::build);
    }
  }

  const Graph& g_;
  std::string out_;
  std::unordered_map<NodeId, std::uint32_t> memo_;
};

}  // namespace

std::string write(const Graph& graph, NodeId root) { return Writer(graph).run(root); }

}  // namespace ckpt::pickle
