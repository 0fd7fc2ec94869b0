#include "train/tensors.hpp"

#include <sys/mman.h>

#include <cstdlib>
#include <cstring>

#include "format/torch_archive.hpp"
#include "util/error.hpp"

namespace ckpt::train {
using pickle::Kind;
using pickle::Node;
using pickle::NodeId;

at::ScalarType to_scalar_type(DType dtype) {
  switch (dtype) {
    case DType::float64:
      return at::kDouble;
    case DType::float32:
      return at::kFloat;
    case DType::float16:
      return at::kHalf;
    case DType::bfloat16:
      return at::kBFloat16;
    case DType::int64:
      return at::kLong;
    case DType::int32:
      return at::kInt;
    case DType::int16:
      return at::kShort;
    case DType::int8:
      return at::kChar;
    case DType::uint8:
      return at::kByte;
    case DType::boolean:
      return at::kBool;
    case DType::complex128:
      return at::kComplexDouble;
    case DType::complex64:
      return at::kComplexFloat;
    case DType::float8_e5m2:
    case DType::float8_e4m3fn:
    case DType::uint64:
    case DType::uint32:
    case DType::uint16:
      break;
  }
  throw Error(ErrorKind::unsupported, "", "",
              std::string("LibTorch 1.13 has no ") + std::string(torch_name(dtype)) + " tensors");
}

DType to_dtype(at::ScalarType type) {
  switch (type) {
    case at::kDouble:
      return DType::float64;
    case at::kFloat:
      return DType::float32;
    case at::kHalf:
      return DType::float16;
    case at::kBFloat16:
      return DType::bfloat16;
    case at::kLong:
      return DType::int64;
    case at::kInt:
      return DType::int32;
    case at::kShort:
      return DType::int16;
    case at::kChar:
      return DType::int8;
    case at::kByte:
      return DType::uint8;
    case at::kBool:
      return DType::boolean;
    case at::kComplexDouble:
      return DType::complex128;
    case at::kComplexFloat:
      return DType::complex64;
    default:
      break;
  }
  throw Error(ErrorKind::unsupported, "", "", std::string("no checkpoint dtype for ") + c10::toString(type));
}

std::span<const std::uint8_t> bytes_of(const at::Tensor& tensor) {
  return {static_cast<const std::uint8_t*>(tensor.data_ptr()), tensor.nbytes()};
}

at::Tensor empty_large(at::IntArrayRef shape, at::ScalarType type) {
  constexpr std::size_t kHugePage = 2u << 20;
  std::size_t bytes = c10::elementSize(type);
  for (std::int64_t d : shape) bytes *= static_cast<std::size_t>(d);
  if (bytes < 2 * kHugePage) return at::empty(shape, type);
  const std::size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
  void* memory = std::aligned_alloc(kHugePage, rounded);
  if (!memory) throw std::bad_alloc();
  ::madvise(memory, rounded, MADV_HUGEPAGE);  // a hint; without it the memory works the same
  return at::from_blob(
      memory, shape, [](void* p) { std::free(p); }, at::TensorOptions().dtype(type));
}

const pickle::TensorRef& tensor_ref(const checkpoint::Source& source, NodeId tensor_node) {
  return source.graph().tensors[static_cast<std::size_t>(source.graph().at(tensor_node).integer)];
}

void read_tensor_into(const checkpoint::Source& source, DirectReader& reader, NodeId tensor_node,
                      const at::Tensor& destination, const std::string& name) {
  const auto& t = tensor_ref(source, tensor_node);
  const at::ScalarType type = to_scalar_type(t.dtype);
  if (destination.sizes() != at::IntArrayRef(t.shape) || destination.scalar_type() != type ||
      !destination.is_contiguous()) {
    throw Error(ErrorKind::invalid_argument, source.path, name, "has another shape or dtype than the model's");
  }
  if (destination.numel() == 0) return;
  const auto extent = source.tensor_extent(t);
  std::int64_t expected = 1;
  bool contiguous = true;
  for (std::size_t d = t.shape.size(); d-- > 0;) {
    if (t.shape[d] != 1 && t.stride[d] != expected) contiguous = false;
    expected *= t.shape[d];
  }
  if (contiguous) {
    const std::uint64_t offset = static_cast<std::uint64_t>(extent.data() - source.file().bytes().data());
    reader.read_at(offset, {static_cast<std::uint8_t*>(destination.data_ptr()), destination.nbytes()});
    return;
  }
  // A strided view: from_blob views the mapped bytes with the stored strides and copy_ gathers them.
  const at::Tensor view =
      at::from_blob(const_cast<std::uint8_t*>(extent.data()), t.shape, t.stride, at::TensorOptions().dtype(type));
  destination.copy_(view);
}

at::Tensor read_tensor_as(const checkpoint::Source& source, DirectReader& reader, NodeId tensor_node,
                          at::IntArrayRef shape, at::ScalarType type, const std::string& name) {
  const auto& t = tensor_ref(source, tensor_node);
  if (at::IntArrayRef(t.shape) != shape || to_scalar_type(t.dtype) != type) {
    throw Error(ErrorKind::invalid_argument, source.path, name, "has another shape or dtype than expected");
  }
  at::Tensor out = empty_large(shape, type);
  read_tensor_into(source, reader, tensor_node, out, name);
  return out;
}

NodeId GraphMaker::boolean(bool value) {
  Node n;
  n.kind = Kind::boolean;
  n.flag = value;
  return graph.add(std::move(n));
}

NodeId GraphMaker::integer(std::int64_t value) {
  Node n;
  n.kind = Kind::integer;
  n.integer = value;
  return graph.add(std::move(n));
}

NodeId GraphMaker::number(double value) {
  Node n;
  n.kind = Kind::floating;
  n.number = value;
  return graph.add(std::move(n));
}

NodeId GraphMaker::text(const std::string& value) {
  Node n;
  n.kind = Kind::string;
  n.text = value;
  return graph.add(std::move(n));
}

NodeId GraphMaker::list(std::vector<NodeId> items) {
  Node n;
  n.kind = Kind::list;
  n.items = std::move(items);
  return graph.add(std::move(n));
}

NodeId GraphMaker::tuple(std::vector<NodeId> items) {
  Node n;
  n.kind = Kind::tuple;
  n.items = std::move(items);
  return graph.add(std::move(n));
}

NodeId GraphMaker::dict(std::vector<NodeId> items, bool ordered) {
  Node n;
  n.kind = Kind::dict;
  n.flag = ordered;
  n.items = std::move(items);
  return graph.add(std::move(n));
}

NodeId GraphMaker::tensor(const at::Tensor& tensor) {
  if (!tensor.is_contiguous()) throw Error(ErrorKind::invalid_argument, "", "", "only contiguous tensors are written");
  pickle::StorageRef storage;
  storage.key = std::to_string(graph.storages.size());
  storage.dtype = to_dtype(tensor.scalar_type());
  storage.location = "cpu";
  storage.numel = static_cast<std::uint64_t>(tensor.numel());
  graph.storages.push_back(storage);
  storages.push_back(tensor);
  pickle::TensorRef ref;
  ref.storage = static_cast<std::uint32_t>(graph.storages.size() - 1);
  ref.dtype = storage.dtype;
  ref.shape = tensor.sizes().vec();
  ref.stride = tensor.strides().vec();
  return graph.add_tensor(std::move(ref));
}

NodeId GraphMaker::uint32_array(std::span<const std::uint32_t> values) {
  pickle::NdArray array;
  array.descr = "<u4";
  array.shape = {static_cast<std::int64_t>(values.size())};
  array.data.resize(values.size() * 4);
  for (std::size_t i = 0; i < values.size(); ++i) {
    for (int b = 0; b < 4; ++b) array.data[i * 4 + b] = static_cast<char>((values[i] >> (8 * b)) & 0xffu);
  }
  return graph.add_array(std::move(array));
}

void GraphMaker::write(const std::string& path, NodeId root, bool durable) {
  graph.set_root(root);
  torch_archive::write_file(path, graph, [&](std::size_t i, zip::Writer& zip) { zip.append(bytes_of(storages[i])); },
                            {.direct = true, .durable = durable});
}

void GraphReader::bad(const std::string& what) const {
  throw Error(ErrorKind::corrupt, path, what, "not what the trainer wrote");
}

NodeId GraphReader::get(NodeId dict, const std::string& key) const {
  if (!graph.is(dict, Kind::dict)) bad(key);
  const NodeId* value = graph.dict_get(dict, key);
  if (!value) throw Error(ErrorKind::corrupt, path, key, "missing");
  return *value;
}

const Node& GraphReader::expect(NodeId id, Kind kind, const std::string& what) const {
  if (!graph.is(id, kind)) bad(what);
  return graph.at(id);
}

std::int64_t GraphReader::integer(NodeId id, const std::string& what) const {
  return expect(id, Kind::integer, what).integer;
}

double GraphReader::number(NodeId id, const std::string& what) const {
  if (graph.is(id, Kind::integer)) return static_cast<double>(graph.at(id).integer);
  return expect(id, Kind::floating, what).number;
}

std::vector<NodeId> GraphReader::items(NodeId id, Kind kind, const std::string& what) const {
  return expect(id, kind, what).items;
}

}  // namespace ckpt::train
