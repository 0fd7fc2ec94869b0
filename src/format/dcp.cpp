#include "format/dcp.hpp"

#include <algorithm>
#include <cstdint>
#include <map>
#include <optional>
#include <string_view>
#include <utility>

#include "format/pickle.hpp"
#include "util/byte_reader.hpp"
#include "util/error.hpp"

namespace ckpt::dcp {
namespace {

using pickle::Kind;
using pickle::NodeId;

constexpr std::string_view kMetadataModule = "torch.distributed.checkpoint.metadata";
constexpr std::string_view kShardedTensorModule = "torch.distributed._shard.sharded_tensor.metadata";
constexpr std::string_view kFilesystemModule = "torch.distributed.checkpoint.filesystem";

struct ClassName {
  std::string_view module;
  std::string_view name;
};

// A storage_data key: the fqn, and the chunk's offsets (absent for a blob).
using IndexKey = std::pair<std::string, std::optional<std::vector<std::int64_t>>>;

std::string entry_where(const std::string& fqn) { return "'" + fqn + "'"; }

std::string dims_text(const std::vector<std::int64_t>& dims) {
  std::string text = "[";
  for (std::size_t i = 0; i < dims.size(); ++i) text += (i ? ", " : "") + std::to_string(dims[i]);
  return text + "]";
}

class MetadataReader {
 public:
  explicit MetadataReader(const pickle::Graph& graph) : g_(graph) {}

  Metadata run() {
    const NodeId state = state_of(g_.root(), {{kMetadataModule, "Metadata"}}, "", "the root");
    Metadata md;
    const NodeId entries = field(state, "state_dict_metadata", "");
    if (!g_.is(entries, Kind::dict)) fail_corrupt("", "state_dict_metadata is not a dict");
    const auto& entry_items = g_.at(entries).items;
    if (entry_items.size() / 2 > kMaxEntries) {
      fail(ErrorKind::unsupported, "",
           std::to_string(entry_items.size() / 2) + " entries (at most " + std::to_string(kMaxEntries) + ")");
    }
    std::map<std::string, std::size_t> item_by_fqn;
    for (std::size_t i = 0; i + 1 < entry_items.size(); i += 2) {
      const std::string fqn = text_of(entry_items[i], "", "an entry's name");
      if (!item_by_fqn.emplace(fqn, md.items.size()).second) fail_corrupt(entry_where(fqn), "listed twice");
      md.items.push_back(read_item(fqn, entry_items[i + 1]));
    }
    attach_storage(field(state, "storage_data", ""), md);
    if (const NodeId* version = g_.dict_get(state, "version"); version && !g_.is(*version, Kind::none)) {
      md.version = text_of(*version, "", "version");
    }
    return md;
  }

 private:
  // The BUILD state of an object of one of `classes` (a dict, or a tuple for TensorProperties), or none for an
  // object never given one. Pickle protocol 2+ creates dataclasses with NEWOBJ(cls, ()); protocols 0 and 1 with
  // copyreg._reconstructor(cls, object, None).
  NodeId state_of(NodeId id, std::initializer_list<ClassName> classes, const std::string& where, const char* what) {
    if (!g_.is(id, Kind::object)) fail_corrupt(where, std::string(what) + " is not an object");
    const auto& slots = g_.at(id).items;
    NodeId cls = slots[pickle::object_callable];
    if (g_.is_global(cls, "copyreg", "_reconstructor")) {
      const auto& args = g_.at(slots[pickle::object_args]).items;
      cls = args.empty() ? g_.none() : args[0];
    }
    for (const ClassName& c : classes) {
      if (g_.is_global(cls, c.module, c.name)) return slots[pickle::object_state];
    }
    const std::string name = g_.is(cls, Kind::global) ? g_.global_name(cls) : "a non-class callable";
    fail(ErrorKind::unsupported, where, std::string(what) + " is an unexpected class " + name);
  }

  NodeId field(NodeId state, std::string_view name, const std::string& where) {
    const NodeId* value = g_.dict_get(state, name);
    if (value == nullptr) fail_corrupt(where, "no field '" + std::string(name) + "'");
    return *value;
  }

  std::string text_of(NodeId id, const std::string& where, const char* what) {
    if (!g_.is(id, Kind::string)) fail_corrupt(where, std::string(what) + " is not a string");
    return g_.at(id).text;
  }

  std::int64_t integer_of(NodeId id, const std::string& where, const char* what) {
    if (!g_.is(id, Kind::integer) || g_.at(id).integer < 0) {
      fail_corrupt(where, std::string(what) + " is not a non-negative 64-bit integer");
    }
    return g_.at(id).integer;
  }

  // A torch.Size (which the unpickler turns into a tuple), a tuple or a list of non-negative integers.
  std::vector<std::int64_t> dims_of(NodeId id, const std::string& where, const char* what) {
    if (!g_.is(id, Kind::tuple) && !g_.is(id, Kind::list)) fail_corrupt(where, std::string(what) + " is not a tuple");
    const auto& items = g_.at(id).items;
    if (items.size() > kMaxDims) {
      fail(ErrorKind::unsupported, where,
           std::string(what) + " has " + std::to_string(items.size()) + " dimensions (at most " +
               std::to_string(kMaxDims) + ")");
    }
    std::vector<std::int64_t> dims;
    dims.reserve(items.size());
    for (NodeId d : items) dims.push_back(integer_of(d, where, what));
    return dims;
  }

  std::uint64_t numel_of(const std::vector<std::int64_t>& dims, const std::string& where) {
    std::uint64_t n = 1;
    for (std::int64_t d : dims) {
      if (!checked_mul(n, static_cast<std::uint64_t>(d), n)) fail_corrupt(where, "element count overflows 64 bits");
    }
    return n;
  }

  DType dtype_of(NodeId properties, const std::string& where) {
    const NodeId state =
        state_of(properties, {{kMetadataModule, "TensorProperties"}, {kShardedTensorModule, "TensorProperties"}}, where,
                 "properties");
    NodeId dtype = g_.none();
    if (g_.is(state, Kind::tuple) && !g_.at(state).items.empty()) {
      dtype = g_.at(state).items[0];  // (dtype, layout, requires_grad, memory format, pin_memory)
    } else if (g_.is(state, Kind::dict)) {
      dtype = field(state, "dtype", where);
    } else {
      fail_corrupt(where, "properties hold no dtype");
    }
    if (g_.is(dtype, Kind::global)) {
      const std::string& text = g_.at(dtype).text;
      if (text.rfind("torch\n", 0) == 0) {
        if (const auto parsed = dtype_from_torch_attribute(std::string_view(text).substr(6))) return *parsed;
      }
      fail(ErrorKind::unsupported, where, "dtype " + g_.global_name(dtype));
    }
    fail_corrupt(where, "dtype is not a torch dtype");
  }

  Item read_item(const std::string& fqn, NodeId id) {
    const std::string where = entry_where(fqn);
    Item item;
    item.fqn = fqn;
    if (!g_.is(id, Kind::object)) fail_corrupt(where, "storage metadata is not an object");
    if (g_.is_global(g_.at(id).items[pickle::object_callable], kMetadataModule, "BytesStorageMetadata")) {
      item.is_bytes = true;
      return item;
    }
    const NodeId state = state_of(id, {{kMetadataModule, "TensorStorageMetadata"}}, where, "storage metadata");
    item.dtype = dtype_of(field(state, "properties", where), where);
    item.size = dims_of(field(state, "size", where), where, "size");
    item.numel = numel_of(item.size, where);
    const NodeId chunks = field(state, "chunks", where);
    if (!g_.is(chunks, Kind::list) && !g_.is(chunks, Kind::tuple)) fail_corrupt(where, "chunks is not a list");
    const auto& chunk_ids = g_.at(chunks).items;
    if (chunk_ids.size() > kMaxChunksPerTensor) {
      fail(ErrorKind::unsupported, where,
           std::to_string(chunk_ids.size()) + " chunks (at most " + std::to_string(kMaxChunksPerTensor) + ")");
    }
    total_chunks_ += chunk_ids.size();
    if (total_chunks_ > kMaxChunks) {
      fail(ErrorKind::unsupported, where, "more than " + std::to_string(kMaxChunks) + " chunks in all");
    }
    for (std::size_t c = 0; c < chunk_ids.size(); ++c) {
      const std::string chunk_where = where + " chunk " + std::to_string(c);
      const NodeId chunk_state =
          state_of(chunk_ids[c], {{kMetadataModule, "ChunkStorageMetadata"}}, chunk_where, "the chunk");
      Chunk chunk;
      chunk.offsets = dims_of(field(chunk_state, "offsets", chunk_where), chunk_where, "offsets");
      chunk.sizes = dims_of(field(chunk_state, "sizes", chunk_where), chunk_where, "sizes");
      if (chunk.offsets.size() != item.size.size() || chunk.sizes.size() != item.size.size()) {
        fail_corrupt(chunk_where, "offsets " + dims_text(chunk.offsets) + " and sizes " + dims_text(chunk.sizes) +
                                      " do not match the tensor's " + std::to_string(item.size.size()) + " dimensions");
      }
      for (std::size_t d = 0; d < item.size.size(); ++d) {
        // Both non-negative int64s: their sum cannot overflow uint64.
        if (static_cast<std::uint64_t>(chunk.offsets[d]) + static_cast<std::uint64_t>(chunk.sizes[d]) >
            static_cast<std::uint64_t>(item.size[d])) {
          fail_corrupt(chunk_where, "offsets " + dims_text(chunk.offsets) + " sizes " + dims_text(chunk.sizes) +
                                        " reach outside the tensor's size " + dims_text(item.size));
        }
      }
      chunk.numel = numel_of(chunk.sizes, chunk_where);
      item.chunks.push_back(std::move(chunk));
    }
    check_coverage(item, where);
    return item;
  }

  // The chunks, each inside the tensor, cover it exactly when their element counts add up to its own and no two
  // non-empty chunks overlap. Sorted by their first offsets, a chunk can overlap only the chunks after it that
  // start before it ends along dimension 0, so the scan stops early (at once, for dimension-0 shards).
  static void check_coverage(const Item& item, const std::string& where) {
    std::uint64_t covered = 0;
    for (const Chunk& chunk : item.chunks) {
      if (!checked_add(covered, chunk.numel, covered)) fail_corrupt(where, "chunk element counts overflow");
    }
    std::vector<const Chunk*> order;
    for (const Chunk& chunk : item.chunks) {
      if (chunk.numel != 0) order.push_back(&chunk);
    }
    if (item.size.empty()) {
      if (order.size() > 1) fail_corrupt(where, "a scalar saved in " + std::to_string(order.size()) + " chunks");
    } else {
      std::sort(order.begin(), order.end(), [](const Chunk* a, const Chunk* b) { return a->offsets < b->offsets; });
      std::uint64_t comparisons = 0;
      for (std::size_t i = 0; i < order.size(); ++i) {
        const Chunk& a = *order[i];
        for (std::size_t j = i + 1; j < order.size() && order[j]->offsets[0] < a.offsets[0] + a.sizes[0]; ++j) {
          // Chunks cut along other dimensions than the first compare with many others: bounded, so that a
          // .metadata of a few megabytes cannot keep list busy for minutes.
          if (++comparisons > kComparisonsPerChunk * order.size()) {
            fail(ErrorKind::unsupported, where,
                 "its chunks need more than " + std::to_string(kComparisonsPerChunk) +
                     " overlap checks each (cut along a later dimension into that many pieces)");
          }
          const Chunk& b = *order[j];
          bool disjoint = false;
          for (std::size_t d = 0; d < a.offsets.size() && !disjoint; ++d) {
            disjoint = b.offsets[d] >= a.offsets[d] + a.sizes[d] || a.offsets[d] >= b.offsets[d] + b.sizes[d];
          }
          if (!disjoint) {
            fail_corrupt(where,
                         "chunks at offsets " + dims_text(a.offsets) + " and " + dims_text(b.offsets) + " overlap");
          }
        }
      }
    }
    if (covered != item.numel) {
      fail_corrupt(where, "chunks hold " + std::to_string(covered) + " elements of the tensor's " +
                              std::to_string(item.numel) + ": they do not cover it");
    }
  }

  void attach_storage(NodeId storage_data, Metadata& md) {
    if (!g_.is(storage_data, Kind::dict)) fail_corrupt("", "storage_data is not a dict");
    const auto& pairs = g_.at(storage_data).items;
    std::map<IndexKey, StorageLocation> locations;
    for (std::size_t i = 0; i + 1 < pairs.size(); i += 2) {
      const NodeId index = state_of(pairs[i], {{kMetadataModule, "MetadataIndex"}}, "storage_data", "a storage key");
      IndexKey key;
      key.first = text_of(field(index, "fqn", "storage_data"), "storage_data", "a storage key's fqn");
      const std::string where = entry_where(key.first) + " storage item";
      if (const NodeId* offset = g_.dict_get(index, "offset"); offset && !g_.is(*offset, Kind::none)) {
        key.second = dims_of(*offset, where, "offset");
      }
      if (const NodeId* hint = g_.dict_get(index, "index"); hint && !g_.is(*hint, Kind::none)) {
        integer_of(*hint, where, "index");
      }
      const NodeId info = state_of(pairs[i + 1], {{kFilesystemModule, "_StorageInfo"}}, where, "the storage info");
      StorageLocation location;
      location.relative_path = text_of(field(info, "relative_path", where), where, "relative_path");
      location.offset = static_cast<std::uint64_t>(integer_of(field(info, "offset", where), where, "offset"));
      location.length = static_cast<std::uint64_t>(integer_of(field(info, "length", where), where, "length"));
      if (!is_plain_file_name(location.relative_path)) {
        fail_corrupt(where, "relative_path '" + location.relative_path + "' is not a file name in the directory");
      }
      // Both below 2^63, so the sum cannot wrap; past 2^63 - 1 it is beyond any file's size.
      if (location.offset + location.length > static_cast<std::uint64_t>(INT64_MAX)) {
        fail_corrupt(where, "offset + length passes 2^63 - 1");
      }
      if (const NodeId* transforms = g_.dict_get(info, "transform_descriptors");
          transforms && !g_.is(*transforms, Kind::none) && !g_.at(*transforms).items.empty()) {
        fail(ErrorKind::unsupported, where, "stored through transforms (e.g. compression), which ckpt does not undo");
      }
      if (!locations.emplace(key, std::move(location)).second) fail_corrupt(where, "listed twice");
    }
    for (Item& item : md.items) {
      if (item.is_bytes) {
        item.storage = take(locations, {item.fqn, std::nullopt}, entry_where(item.fqn));
        continue;
      }
      for (std::size_t c = 0; c < item.chunks.size(); ++c) {
        Chunk& chunk = item.chunks[c];
        chunk.storage =
            take(locations, {item.fqn, chunk.offsets}, entry_where(item.fqn) + " chunk " + std::to_string(c));
      }
    }
    if (!locations.empty()) {
      fail_corrupt(entry_where(locations.begin()->first.first) + " storage item",
                   "stored but not described by state_dict_metadata (or two chunks at the same offsets)");
    }
  }

  static StorageLocation take(std::map<IndexKey, StorageLocation>& locations, const IndexKey& key,
                              const std::string& where) {
    const auto found = locations.find(key);
    if (found == locations.end()) fail_corrupt(where, "has no storage item in storage_data");
    StorageLocation location = std::move(found->second);
    locations.erase(found);
    return location;
  }

  const pickle::Graph& g_;
  std::size_t total_chunks_ = 0;
};

}  // namespace

Metadata parse_metadata(std::span<const std::uint8_t> bytes) {
  const pickle::Graph graph = pickle::parse(bytes);
  return MetadataReader(graph).run();
}

bool is_plain_file_name(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos &&
         name.find('\0') == std::string::npos;
}

std::vector<Run> row_major_runs(const Item& item, std::size_t max_runs) {
  std::vector<Run> runs;
  if (item.numel == 0) return runs;
  const std::size_t dims = item.size.size();
  if (dims == 0) {
    for (std::size_t c = 0; c < item.chunks.size(); ++c) {
      if (item.chunks[c].numel == 1) runs.push_back({c, 0, 1});
    }
    return runs;
  }
  // Walks the tensor from element 0, one run at a time: the chunk holding the current index, and how far the
  // elements stay consecutive in both orders. From dimension `m` inward the run may carry into the next row only
  // while the chunk spans that whole dimension and the run starts at its beginning.
  std::vector<std::int64_t> index(dims, 0);
  std::uint64_t done = 0;
  std::size_t next_search = 0;
  // Chunks listed in an order that makes each search long (a hostile .metadata) are refused before the searches
  // cost more than this many probes.
  const std::uint64_t probe_budget = kComparisonsPerChunk * (item.chunks.size() + max_runs);
  std::uint64_t probes = 0;
  while (done < item.numel) {
    // The search starts after the previous run's chunk: chunks listed in rank order (dimension-0 shards), or
    // alternating along a row, are then found at once.
    std::size_t holder = item.chunks.size();
    for (std::size_t k = 0; k < item.chunks.size() && holder == item.chunks.size(); ++k) {
      const std::size_t c = (next_search + k) % item.chunks.size();
      if (++probes > probe_budget) {
        fail(ErrorKind::unsupported, entry_where(item.fqn),
             "its chunks are listed out of the order of their elements too far to assemble");
      }
      const Chunk& chunk = item.chunks[c];
      bool inside = chunk.numel != 0;
      for (std::size_t d = 0; d < dims && inside; ++d) {
        inside = index[d] >= chunk.offsets[d] && index[d] < chunk.offsets[d] + chunk.sizes[d];
      }
      if (inside) holder = c;
    }
    if (holder == item.chunks.size()) fail_corrupt(entry_where(item.fqn), "an element lies in no chunk");
    if (runs.size() == max_runs) {
      fail(ErrorKind::unsupported, entry_where(item.fqn),
           "its chunks cut it into more than " + std::to_string(max_runs) + " runs of consecutive elements");
    }
    const Chunk& chunk = item.chunks[holder];
    std::uint64_t first = 0;  // the index's position in the chunk's row-major order
    for (std::size_t d = 0; d < dims; ++d) {
      first =
          first * static_cast<std::uint64_t>(chunk.sizes[d]) + static_cast<std::uint64_t>(index[d] - chunk.offsets[d]);
    }
    std::size_t m = dims - 1;
    std::uint64_t inner = 1;  // elements in one step along dimension m
    while (m > 0 && index[m] == 0 && chunk.offsets[m] == 0 && chunk.sizes[m] == item.size[m]) {
      inner *= static_cast<std::uint64_t>(item.size[m]);
      --m;
    }
    const std::uint64_t count = static_cast<std::uint64_t>(chunk.offsets[m] + chunk.sizes[m] - index[m]) * inner;
    runs.push_back({holder, first, count});
    next_search = holder + 1;
    done += count;
    // Advance the index by `count` elements: along dimension m by the run's steps, carrying outward.
    index[m] = chunk.offsets[m] + chunk.sizes[m];
    for (std::size_t d = m + 1; d < dims; ++d) index[d] = 0;
    for (std::size_t d = m; d > 0 && index[d] == item.size[d]; --d) {
      index[d] = 0;
      ++index[d - 1];
    }
  }
  return runs;
}

}  // namespace ckpt::dcp
