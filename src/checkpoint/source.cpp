#include "checkpoint/source.hpp"

#include <set>

#include "checkpoint/structure.hpp"
#include "checkpoint/tensor_scan.hpp"
#include "format/json.hpp"
#include "format/safetensors.hpp"
#include "util/error.hpp"

namespace ckpt::checkpoint {
using pickle::Graph;
using pickle::Kind;
using pickle::NodeId;

std::span<const std::uint8_t> Source::tensor_extent(const pickle::TensorRef& t) const {
  const std::size_t es = element_size(t.dtype);
  const std::uint64_t elements = t.element_extent();
  if (elements == 0) return {};
  const std::uint64_t begin = storage_offsets[t.storage] + static_cast<std::uint64_t>(t.storage_offset) * es;
  return file().bytes().subspan(static_cast<std::size_t>(begin), static_cast<std::size_t>(elements * es));
}

void check_view_size(const Source& s, const pickle::TensorRef& t) {
  const std::uint64_t numel = *torch_archive::numel(t.shape);
  const auto& storage = s.graph().storages[t.storage];
  const std::uint64_t storage_bytes = storage.untyped ? storage.numel : storage.numel * element_size(storage.dtype);
  if (numel > (16 * storage_bytes + (1u << 20)) / element_size(t.dtype)) {
    throw Error(ErrorKind::unsupported, s.path, "",
                "an expanded tensor view of " + std::to_string(numel) + " elements from a storage of " +
                    std::to_string(storage_bytes) + " bytes");
  }
}

namespace {

NodeId add_storage_tensor(Graph& g, std::vector<std::uint64_t>& offsets, DType dtype,
                          const std::vector<std::int64_t>& shape, std::uint64_t file_offset, bool requires_grad,
                          bool parameter) {
  pickle::StorageRef storage;
  storage.key = std::to_string(g.storages.size());
  storage.dtype = dtype;
  storage.location = "cpu";
  storage.numel = *torch_archive::numel(shape);
  g.storages.push_back(storage);
  offsets.push_back(file_offset);
  pickle::TensorRef t;
  t.storage = static_cast<std::uint32_t>(g.storages.size() - 1);
  t.dtype = dtype;
  t.shape = shape;
  t.stride = contiguous_strides(shape);
  t.requires_grad = requires_grad;
  t.is_parameter = parameter;
  return g.add_tensor(std::move(t));
}

[[noreturn]] void fail_metadata(const std::string& path, const char* key, const std::string& detail) {
  throw Error(ErrorKind::corrupt, path, std::string("__metadata__ ") + key, detail);
}

json::Json metadata_json(const Source& s, const char* key) {
  auto it = s.metadata.find(key);
  if (it == s.metadata.end()) return nullptr;
  try {
    return json::parse(it->second);
  } catch (const Error& e) {
    throw Error(ErrorKind::corrupt, s.path, std::string("__metadata__ ") + key, e.detail());
  }
}

// A safetensors file as a value graph: a state dict (in ckpt_order when recorded, tied aliases restored) or, for
// files ckpt wrote from another checkpoint file, the structure recorded in ckpt_structure.
std::unique_ptr<Source> load_safetensors(const std::string& path) {
  auto s = std::make_unique<Source>();
  s->path = path;
  s->safetensors = true;
  s->mapped = std::make_unique<MappedFile>(path);
  safetensors::Header header;
  try {
    header = safetensors::parse(s->mapped->bytes());
  } catch (const Error& e) {
    throw e.with_context(path, "");
  }
  for (const auto& [k, v] : header.metadata) s->metadata[k] = v;
  std::map<std::string, const safetensors::Tensor*> by_name;
  for (const auto& t : header.tensors) by_name[t.name] = &t;
  Graph& g = s->own_graph;
  auto tensor_node = [&](const std::string& name, bool requires_grad, bool parameter) -> NodeId {
    auto it = by_name.find(name);
    if (it == by_name.end())
      throw Error(ErrorKind::corrupt, path, "tensor '" + name + "'", "named in the metadata but not stored");
    return add_storage_tensor(g, s->storage_offsets, it->second->dtype, it->second->shape,
                              header.buffer_offset + it->second->begin, requires_grad, parameter);
  };

  // The ckpt_* metadata is input like the rest of the file: it may name each stored tensor (once, where it lists
  // names) and nothing else, so what is built from it is never larger than the file.
  auto bad_metadata = [&](const char* key, const std::string& detail) { fail_metadata(path, key, detail); };
  if (s->metadata.count(kStructureKey)) {
    std::set<std::string> referenced;
    auto array_bytes = [&](const std::string& name) -> std::string {
      auto it = by_name.find(name);
      if (it == by_name.end())
        throw Error(ErrorKind::corrupt, path, "tensor '" + name + "'", "named in the metadata but not stored");
      referenced.insert(name);
      auto bytes = safetensors::tensor_bytes(s->mapped->bytes(), header, *it->second);
      return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    };
    auto structure_tensor = [&](const std::string& name, bool requires_grad, bool parameter) {
      const NodeId node = tensor_node(name, requires_grad, parameter);
      referenced.insert(name);
      return node;
    };
    try {
      g.set_root(decode_structure(metadata_json(*s, kStructureKey), g, structure_tensor, array_bytes));
    } catch (const Error& e) {
      throw e.with_context(path, "");
    }
    for (const auto& [name, tensor] : by_name) {
      if (!referenced.count(name)) bad_metadata(kStructureKey, "does not reference stored tensor '" + name + "'");
    }
    return s;
  }

  std::map<std::string, std::string> aliases;  // a tied name left out of the file -> the stored tensor it shares
  if (s->metadata.count(kAliasesKey)) {
    const json::Json recorded = metadata_json(*s, kAliasesKey);
    const json::Fields fields(recorded, path, std::string("__metadata__ ") + kAliasesKey);
    fields.for_each([&](const std::string& alias, const json::Value& value) {
      if (by_name.count(alias)) bad_metadata(kAliasesKey, "'" + alias + "' is a stored tensor, not an alias");
      std::string target = value.string();
      if (!by_name.count(target)) bad_metadata(kAliasesKey, "alias '" + alias + "' is not tied to a stored tensor");
      aliases[alias] = std::move(target);
    });
  }
  std::vector<std::string> order;
  if (s->metadata.count(kOrderKey)) {
    const json::Json recorded = metadata_json(*s, kOrderKey);
    const json::Elements names(recorded, path, std::string("__metadata__ ") + kOrderKey);
    std::set<std::string> listed;
    for (std::size_t i = 0; i < names.size(); ++i) {
      std::string name = names.at(i).string();
      if (!by_name.count(name) && !aliases.count(name))
        bad_metadata(kOrderKey, "names '" + name + "', neither a stored tensor nor an alias");
      if (!listed.insert(name).second) bad_metadata(kOrderKey, "names '" + name + "' twice");
      order.push_back(std::move(name));
    }
  } else {
    for (const auto& t : header.tensors) order.push_back(t.name);
  }
  pickle::Node root;
  root.kind = Kind::dict;
  root.flag = true;
  std::map<std::string, NodeId> made;
  for (const auto& name : order) {
    NodeId value;
    if (auto a = aliases.find(name); a != aliases.end()) {
      auto target = made.find(a->second);
      if (target == made.end())
        throw Error(ErrorKind::corrupt, path, "tensor '" + name + "'",
                    "tied to '" + a->second + "', which comes later");
      value = target->second;
    } else {
      value = tensor_node(name, false, false);
    }
    made[name] = value;
    pickle::Node key;
    key.kind = Kind::string;
    key.text = name;
    root.items.push_back(g.add(std::move(key)));
    root.items.push_back(value);
  }
  for (const auto& [name, tensor] : by_name) {
    if (!made.count(name)) bad_metadata(kOrderKey, "does not name tensor '" + name + "'");
  }
  for (const auto& [alias, target] : aliases) {
    if (!made.count(alias)) bad_metadata(kAliasesKey, "alias '" + alias + "' is not in " + kOrderKey);
  }
  if (s->metadata.count(kAttributesKey)) {
    // The state dict's _metadata: plain values, never tensor data. Its errors are named here, file and key.
    try {
      root.attributes = decode_structure(
          metadata_json(*s, kAttributesKey), g,
          [](const std::string&, bool, bool) -> NodeId { fail_corrupt("", "holds a tensor"); },
          [](const std::string&) -> std::string { fail_corrupt("", "holds a numpy array"); });
    } catch (const Error& e) {
      throw e.with_context(path, std::string("__metadata__ ") + kAttributesKey);
    }
  }
  g.set_root(g.add(std::move(root)));
  return s;
}

std::unique_ptr<Source> load_torch(const std::string& path) {
  auto s = std::make_unique<Source>();
  s->path = path;
  s->torch = std::make_unique<torch_archive::TorchFile>(path);
  for (std::size_t i = 0; i < s->torch->graph().storages.size(); ++i)
    s->storage_offsets.push_back(s->torch->storage_entry(i).data_offset);
  return s;
}

}  // namespace

std::unique_ptr<Source> load_source(const std::string& path) {
  switch (torch_archive::sniff(ReadOnlyFile(path))) {
    case torch_archive::Container::torch_zip:
      return load_torch(path);
    case torch_archive::Container::safetensors:
      return load_safetensors(path);
    case torch_archive::Container::torch_legacy:
      throw Error(ErrorKind::unsupported, path, "",
                  "legacy torch.save format (PyTorch < 1.6); load and save it again with a newer PyTorch");
    default:
      throw Error(ErrorKind::unsupported, path, "byte 0", "not a torch.save zip or a safetensors file");
  }
}

}  // namespace ckpt::checkpoint
