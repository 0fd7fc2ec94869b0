// What a pickle's calls of known globals become: tensors (torch._utils' rebuild functions), OrderedDicts, sets,
// bytes, devices, numpy arrays and dtypes, enum members. Nothing is ever called; any other call stays an opaque
// object node (Parser::opaque_call).
#include "format/pickle_parser.hpp"

namespace ckpt::pickle::detail {

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
    if (dtype.kind == Kind::global && dtype.text.rfind("torch\n", 0) == 0)
      d = dtype_from_torch_attribute(dtype.text.substr(6));
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
        (t.shape[i] > 0 &&
         (!checked_mul(static_cast<std::uint64_t>(t.shape[i] - 1), static_cast<std::uint64_t>(t.stride[i]), span) ||
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
  if (!empty && distinct > 16 * storage_elements + 16)
    bad("tensor view repeats its storage's elements more than 16 times");
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
  if ((type != "torch.Tensor" && type != "torch.nn.parameter.Parameter") ||
      func.rfind("torch._utils._rebuild_tensor", 0) != 0) {
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
  if (args.size() != 2 || !graph_.is(args[0], Kind::numpy_dtype) || !graph_.is(args[1], Kind::bytes))
    return std::nullopt;
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

}  // namespace ckpt::pickle::detail
