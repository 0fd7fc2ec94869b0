#include "checkpoint/convert.hpp"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdio>
#include <array>
#include <filesystem>
#include <map>
#include <memory>
#include <set>

#include "checkpoint/export.hpp"
#include "checkpoint/file_kind.hpp"
#include "checkpoint/run_dir.hpp"
#include "checkpoint/shards.hpp"
#include "checkpoint/source.hpp"
#include "checkpoint/structure.hpp"
#include "checkpoint/tensor_scan.hpp"
#include "checkpoint/value_data.hpp"
#include "checkpoint/weights_layout.hpp"
#include "format/dtype_cast.hpp"
#include "format/json.hpp"
#include "format/pickle_writer.hpp"
#include "format/safetensors.hpp"
#include "format/torch_archive.hpp"
#include "format/zip_writer.hpp"
#include "util/atomic_file.hpp"
#include "util/error.hpp"
#include "util/fs.hpp"

namespace ckpt::checkpoint {
namespace fs = std::filesystem;
using pickle::Graph;
using pickle::Kind;
using pickle::NodeId;

namespace {

constexpr std::size_t kChunk = 4u << 20;
// Outputs are written with direct I/O (util/atomic_file.hpp): converting gigabytes should neither pay for nor
// evict page cache.
constexpr WriteOptions kOutput{.direct = true};

// ---- weights: named tensors of a state dict ----

struct Weight {
  std::string name;
  const Source* source = nullptr;
  NodeId node = 0;                      // the tensor node in the source's graph
  std::optional<std::string> tied_to;   // the same view as an earlier tensor
};

const pickle::TensorRef& tensor_of(const Weight& w) {
  return w.source->graph().tensors[static_cast<std::size_t>(w.source->graph().at(w.node).integer)];
}

void collect_weights(const Source& s, std::vector<Weight>& out) {
  const Graph& g = s.graph();
  if (!is_state_dict(g)) throw Error(ErrorKind::unsupported, s.path, "", "not a state dict of tensors (an object or other values where weights were expected)");
  using ViewKey = std::tuple<const Source*, std::uint32_t, std::int64_t, std::vector<std::int64_t>, std::vector<std::int64_t>>;
  std::map<ViewKey, std::string> first;
  for (const auto& w : out) {
    const auto& t = tensor_of(w);
    first.emplace(ViewKey{w.source, t.storage, t.storage_offset, t.shape, t.stride}, w.name);
  }
  const auto& items = g.at(g.root()).items;
  for (std::size_t i = 0; i + 1 < items.size(); i += 2) {
    Weight w{g.at(items[i]).text, &s, items[i + 1], std::nullopt};
    const auto& t = g.tensors[static_cast<std::size_t>(g.at(w.node).integer)];
    auto [it, inserted] = first.emplace(ViewKey{&s, t.storage, t.storage_offset, t.shape, t.stride}, w.name);
    if (!inserted) w.tied_to = it->second;
    out.push_back(std::move(w));
  }
}

DType output_dtype(DType dtype, const ConvertOptions& options) {
  return options.dtype && is_floating(dtype) && can_cast(dtype, *options.dtype) ? *options.dtype : dtype;
}

std::uint64_t nbytes_of(const std::vector<std::int64_t>& shape, DType dtype) { return *torch_archive::numel(shape) * element_size(dtype); }

// ---- writing tensor bytes ----

// Where bytes go: a plain file (safetensors) or a zip member (torch, which needs their CRC).
class Sink {
 public:
  virtual ~Sink() = default;
  virtual void write(std::span<const std::uint8_t> bytes) = 0;
  virtual void copy(const ReadOnlyFile& file, std::uint64_t offset, std::uint64_t length) = 0;
};

class FileSink : public Sink {
 public:
  explicit FileSink(AtomicFile& out) : out_(out) {}
  void write(std::span<const std::uint8_t> bytes) override { out_.write(bytes); }
  void copy(const ReadOnlyFile& file, std::uint64_t offset, std::uint64_t length) override { out_.copy_from(file, offset, length); }

 private:
  AtomicFile& out_;
};

class ZipSink : public Sink {
 public:
  explicit ZipSink(zip::Writer& zip) : zip_(zip) {}
  void write(std::span<const std::uint8_t> bytes) override { zip_.append(bytes); }
  void copy(const ReadOnlyFile& file, std::uint64_t offset, std::uint64_t length) override { zip_.append_file_range(file, offset, length); }

 private:
  zip::Writer& zip_;
};

// "a.bin", or "a.bin and 2 more": the input files one progress counts the bytes of.
std::string inputs_label(const std::vector<std::string>& paths) {
  const std::string first = paths.empty() ? "" : fs::path(paths.front()).filename().string();
  return paths.size() > 1 ? first + " and " + std::to_string(paths.size() - 1) + " more" : first;
}

// The bytes written from one input (or one set of shards), reported as they go; where a conversion may stop.
struct Progress {
  const ConvertOptions& options;
  std::string inputs;  // inputs_label
  std::uint64_t done = 0;
  std::uint64_t total = 0;
  void advance(std::uint64_t n) {
    done += n;
    stop_if_interrupted(options.interrupted);
    if (options.progress) options.progress(inputs, done, total);
  }
};

// Writes `count` elements starting at byte `offset` of `file` (contiguous), cast from `from` to `to`.
void write_contiguous(Sink& sink, const MappedFile& file, std::uint64_t offset, std::uint64_t count, DType from, DType to,
                      bool zero_dim, Progress& progress) {
  const std::uint64_t in_bytes = count * element_size(from);
  if (from == to) {
    sink.copy(file.file(), offset, in_bytes);
    progress.advance(in_bytes);
    return;
  }
  const std::size_t per_chunk = kChunk / element_size(from);
  std::vector<std::uint8_t> in(per_chunk * element_size(from));
  std::vector<std::uint8_t> out(per_chunk * element_size(to));
  for (std::uint64_t done = 0; done < count;) {
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(per_chunk, count - done));
    file.read_at(offset + done * element_size(from), std::span(in).first(n * element_size(from)));
    cast_elements(std::span(in).first(n * element_size(from)), from, std::span(out).first(n * element_size(to)), to, zero_dim);
    sink.write(std::span(out).first(n * element_size(to)));
    done += n;
    progress.advance(n * element_size(from));
  }
}

// A tensor's elements in row-major order, cast to `to`: a straight copy when its view is contiguous, else
// gathered element by element from the mapped storage.
void write_tensor(Sink& sink, const Source& s, const pickle::TensorRef& t, DType to, Progress& progress) {
  const std::uint64_t numel = *torch_archive::numel(t.shape);
  if (numel == 0) return;
  check_view_size(s, t);  // an expanded view (stride 0) is written out element by element
  const std::size_t es = element_size(t.dtype);
  const std::uint64_t base = s.storage_offsets[t.storage] + static_cast<std::uint64_t>(t.storage_offset) * es;
  if (numel == 1 || t.stride == contiguous_strides(t.shape)) {
    write_contiguous(sink, s.file(), base, numel, t.dtype, to, t.shape.empty(), progress);
    return;
  }
  const auto bytes = s.file().bytes();
  std::vector<std::uint8_t> gathered;
  std::vector<std::uint8_t> cast;
  std::vector<std::int64_t> index(t.shape.size(), 0);
  std::uint64_t element = 0;
  auto flush = [&] {
    if (gathered.empty()) return;
    if (t.dtype == to) {
      sink.write(gathered);
    } else {
      cast.resize(gathered.size() / es * element_size(to));
      // torch casts a view whose innermost stride is not 1 element by element, with its scalar code.
      cast_elements(gathered, t.dtype, cast, to, /*zero_dim=*/true);
      sink.write(cast);
    }
    progress.advance(gathered.size());
    gathered.clear();
  };
  for (std::uint64_t i = 0; i < numel; ++i) {
    const std::uint8_t* p = bytes.data() + base + element * es;
    gathered.insert(gathered.end(), p, p + es);
    if (gathered.size() >= kChunk) flush();
    for (std::size_t d = t.shape.size(); d-- > 0;) {
      if (++index[d] < t.shape[d]) {
        element += static_cast<std::uint64_t>(t.stride[d]);
        break;
      }
      element -= static_cast<std::uint64_t>(t.stride[d]) * static_cast<std::uint64_t>(t.shape[d] - 1);
      index[d] = 0;
    }
  }
  flush();
}

// ---- safetensors output ----

struct SafetensorsItem {
  std::string name;
  const Source* source = nullptr;
  const pickle::TensorRef* tensor = nullptr;  // or, for a numpy array:
  const pickle::NdArray* array = nullptr;
  DType dtype = DType::uint8;
};

void check_safetensors_dtype(DType dtype, const std::string& name) {
  if (!safetensors_code(dtype)) {
    throw Error(ErrorKind::unsupported, "", "tensor '" + name + "'", std::string(torch_name(dtype)) + " has no safetensors dtype");
  }
}

void write_safetensors_file(const std::string& path, std::vector<SafetensorsItem> items,
                            const std::vector<std::pair<std::string, std::string>>& metadata, Progress& progress) {
  std::vector<safetensors::OutputTensor> layout;
  std::map<std::string, const SafetensorsItem*> by_name;
  for (const auto& item : items) {
    check_safetensors_dtype(item.dtype, item.name);
    layout.push_back({item.name, item.dtype, item.tensor ? item.tensor->shape : std::vector<std::int64_t>{static_cast<std::int64_t>(item.array->data.size())}});
    by_name[item.name] = &item;
  }
  safetensors::write_file(path, std::move(layout), metadata, [&](const safetensors::OutputTensor& t, AtomicFile& out) {
    const SafetensorsItem& item = *by_name.at(t.name);
    FileSink sink(out);
    if (item.tensor) {
      write_tensor(sink, *item.source, *item.tensor, item.dtype, progress);
    } else {
      sink.write({reinterpret_cast<const std::uint8_t*>(item.array->data.data()), item.array->data.size()});
    }
  }, kOutput);
}

// ---- torch output ----

// Storages of a graph being written, each with the bytes that fill it.
struct StorageFill {
  const Source* source = nullptr;
  std::uint32_t source_storage = 0;
  DType from = DType::uint8;
  bool zero_dim = false;  // holds a single 0-d tensor (torch casts those with its scalar code)
};

void write_torch_file(const std::string& path, const Graph& g, const std::vector<StorageFill>& fills, Progress& progress) {
  torch_archive::write_file(path, g, [&](std::size_t i, zip::Writer& zip) {
    const StorageFill& fill = fills[i];
    ZipSink sink(zip);
    write_contiguous(sink, fill.source->file(), fill.source->storage_offsets[fill.source_storage], g.storages[i].numel, fill.from,
                     g.storages[i].dtype, fill.zero_dim, progress);
  }, kOutput);
}

// Copies tensors of source graphs into `g` (storages shared as in the sources, optionally cast).
class GraphBuilder {
 public:
  GraphBuilder(Graph& g, std::vector<StorageFill>& fills, const ConvertOptions& options) : g_(g), fills_(fills), options_(options) {}

  NodeId tensor(const Source& s, NodeId source_node) {
    if (auto it = nodes_.find({&s, source_node}); it != nodes_.end()) return it->second;
    const auto& st = s.graph().tensors[static_cast<std::size_t>(s.graph().at(source_node).integer)];
    auto [sit, inserted] = storages_.emplace(std::pair{&s, st.storage}, static_cast<std::uint32_t>(g_.storages.size()));
    if (inserted) {
      pickle::StorageRef storage = s.graph().storages[st.storage];
      storage.key = std::to_string(g_.storages.size());
      const DType from = storage.untyped ? DType::uint8 : storage.dtype;
      if (storage.untyped && output_dtype(st.dtype, options_) != st.dtype) {
        throw Error(ErrorKind::unsupported, s.path, "", "cannot cast a tensor of an untyped storage");
      }
      storage.dtype = storage.untyped ? storage.dtype : output_dtype(storage.dtype, options_);
      g_.storages.push_back(storage);
      fills_.push_back({&s, st.storage, from, st.shape.empty() && storage.numel == 1});
    }
    pickle::TensorRef t = st;
    t.storage = sit->second;
    t.dtype = output_dtype(st.dtype, options_);
    return nodes_[{&s, source_node}] = g_.add_tensor(std::move(t));
  }

 private:
  Graph& g_;
  std::vector<StorageFill>& fills_;
  const ConvertOptions& options_;
  std::map<std::pair<const Source*, std::uint32_t>, std::uint32_t> storages_;
  std::map<std::pair<const Source*, NodeId>, NodeId> nodes_;
};

// A copy of the value at `node` of `s` in `g`, its tensors through `builder` (storages follow them).
NodeId copy_value(const Source& s, NodeId node, Graph& g, GraphBuilder& builder) {
  std::vector<NamedArray> arrays;
  const json::Json structure = encode_structure(s.graph(), node, arrays);
  std::map<std::string, NodeId> tensor_by_name;
  std::map<std::string, const pickle::NdArray*> array_by_name;
  for (const auto& a : arrays) {
    const pickle::Node& n = s.graph().at(a.node);
    if (n.kind == Kind::tensor) tensor_by_name[a.name] = a.node;
    else array_by_name[a.name] = &s.graph().arrays[static_cast<std::size_t>(n.integer)];
  }
  return decode_structure(
      structure, g,
      [&](const std::string& name, bool requires_grad, bool parameter) {
        const NodeId copied = builder.tensor(s, tensor_by_name.at(name));
        auto& t = g.tensors[static_cast<std::size_t>(g.at(copied).integer)];
        t.requires_grad = requires_grad;
        t.is_parameter = parameter;
        return copied;
      },
      [&](const std::string& name) { return array_by_name.at(name)->data; });
}

NodeId add_string(Graph& g, const std::string& text) {
  pickle::Node n;
  n.kind = Kind::string;
  n.text = text;
  return g.add(std::move(n));
}

// The state dict's BUILD attributes (`_metadata`), copied across graphs through the structure encoding.
std::optional<json::Json> attributes_of(const Source& s) {
  const NodeId attrs = s.graph().at(s.graph().root()).attributes;
  if (attrs == 0) return std::nullopt;
  std::vector<NamedArray> arrays;
  return encode_structure(s.graph(), attrs, arrays);
}

// ---- weights conversion ----

struct WeightsPlan {
  std::vector<std::vector<std::size_t>> shards;  // indices into the weights, in order
  std::uint64_t total_size = 0;                  // bytes, tied tensors counted once
};

WeightsPlan plan_shards(const std::vector<Weight>& weights, const ConvertOptions& options) {
  WeightsPlan plan;
  std::vector<std::size_t> untied;
  std::vector<std::uint64_t> sizes;
  for (std::size_t i = 0; i < weights.size(); ++i) {
    if (weights[i].tied_to) continue;
    const auto& t = tensor_of(weights[i]);
    untied.push_back(i);
    sizes.push_back(nbytes_of(t.shape, output_dtype(t.dtype, options)));
    plan.total_size += sizes.back();
  }
  const auto groups = greedy_shards(sizes, options.max_shard_size);
  std::map<std::string, std::size_t> shard_of;
  for (std::size_t k = 0; k < groups.size(); ++k) {
    for (std::size_t j : groups[k]) shard_of[weights[untied[j]].name] = k;
  }
  // A tied tensor travels with the tensor it is tied to; state-dict order is kept within each shard.
  plan.shards.resize(groups.size());
  for (std::size_t i = 0; i < weights.size(); ++i) {
    const std::size_t k = shard_of.at(weights[i].tied_to ? *weights[i].tied_to : weights[i].name);
    plan.shards[k].push_back(i);
    shard_of[weights[i].name] = k;
  }
  return plan;
}

WeightsFormat format_of(ConvertTarget to) { return to == ConvertTarget::safetensors ? WeightsFormat::safetensors : WeightsFormat::pytorch; }

void write_weights_file(const std::string& path, const std::vector<Weight>& weights, const std::vector<std::size_t>& subset,
                        const std::optional<json::Json>& attributes,
                        const ConvertOptions& options, Progress& progress) {
  if (options.to == ConvertTarget::safetensors) {
    std::vector<SafetensorsItem> items;
    json::ObjectBuilder tied;
    json::Json names = json::Json::array();
    for (std::size_t i : subset) {
      const Weight& w = weights[i];
      names.push_back(w.name);
      if (w.tied_to) {
        tied.set(w.name, *w.tied_to);
        continue;
      }
      const auto& t = tensor_of(w);
      items.push_back({w.name, w.source, &t, nullptr, output_dtype(t.dtype, options)});
    }
    const json::Json aliases = tied.take();
    std::vector<std::pair<std::string, std::string>> metadata = {{"format", "pt"}};
    if (!aliases.empty()) metadata.emplace_back(kAliasesKey, json::dump(aliases));
    // The key order is recorded only when the file's own order (by dtype size, then name) would lose it.
    std::vector<safetensors::OutputTensor> sorted;
    for (const auto& item : items) sorted.push_back({item.name, item.dtype, {}});
    safetensors::make_header(sorted, {});
    bool in_file_order = aliases.empty() && sorted.size() == names.size();
    for (std::size_t k = 0; in_file_order && k < sorted.size(); ++k) in_file_order = names[k] == sorted[k].name;
    if (!in_file_order) metadata.emplace_back(kOrderKey, json::dump(names));
    if (attributes) metadata.emplace_back(kAttributesKey, json::dump(*attributes));
    write_safetensors_file(path, std::move(items), metadata, progress);
    return;
  }
  Graph g;
  std::vector<StorageFill> fills;
  GraphBuilder builder(g, fills, options);
  pickle::Node root;
  root.kind = Kind::dict;
  root.flag = true;
  std::map<std::string, NodeId> made;
  for (std::size_t i : subset) {
    const Weight& w = weights[i];
    const NodeId value = w.tied_to && made.count(*w.tied_to) ? made[*w.tied_to] : builder.tensor(*w.source, w.node);
    made[w.name] = value;
    root.items.push_back(add_string(g, w.name));
    root.items.push_back(value);
  }
  if (attributes) {
    root.attributes = decode_structure(*attributes, g, [](const std::string&, bool, bool) -> NodeId {
      throw Error(ErrorKind::corrupt, "", "ckpt_attributes", "holds a tensor");
    }, [](const std::string&) { return std::string(); });
  }
  g.set_root(g.add(std::move(root)));
  write_torch_file(path, g, fills, progress);
}

std::uint64_t file_size_or_zero(const std::string& path) {
  std::error_code ec;
  const auto size = fs::file_size(path, ec);
  return ec ? 0 : size;
}

// Writes weights as one file at `file_path`, or with a shard limit as shards and an index inside `dir`.
void write_weights(const std::vector<Weight>& weights, const std::optional<json::Json>& attributes, const ConvertOptions& options,
                   const std::string& file_path, const std::string& dir, std::vector<std::string> sources, ConvertResult& result) {
  const WeightsPlan plan = plan_shards(weights, options);
  Progress progress{options, inputs_label(sources)};
  progress.total = plan.total_size;
  const std::string joined_sources = sources.size() == 1 ? sources.front() : fs::path(sources.front()).parent_path().string();
  for (const auto& w : weights) {
    if (w.tied_to && options.to == ConvertTarget::safetensors) {
      result.notes.push_back("'" + w.name + "' is tied to '" + *w.tied_to + "': stored once, the alias recorded in __metadata__ ckpt_aliases");
    }
  }
  if (plan.shards.size() == 1 && !options.max_shard_size) {
    if (!options.dry_run) write_weights_file(file_path, weights, plan.shards[0], attributes, options, progress);
    result.files.push_back({joined_sources, file_path, "converted", options.dry_run ? 0 : file_size_or_zero(file_path)});
    return;
  }
  if (plan.shards.size() == 1) {
    const std::string path = (fs::path(dir) / single_weights_name(format_of(options.to))).string();
    if (!options.dry_run) write_weights_file(path, weights, plan.shards[0], attributes, options, progress);
    result.files.push_back({joined_sources, path, "converted", options.dry_run ? 0 : file_size_or_zero(path)});
    return;
  }
  std::vector<std::pair<std::string, std::string>> entries;
  for (std::size_t k = 0; k < plan.shards.size(); ++k) {
    const std::string name = shard_name(format_of(options.to), k, plan.shards.size());
    const std::string path = (fs::path(dir) / name).string();
    // The state dict's _metadata goes with the first shard, as each shard of torch's own sharding is a plain dict.
    if (!options.dry_run) write_weights_file(path, weights, plan.shards[k], k == 0 ? attributes : std::nullopt, options, progress);
    result.files.push_back({joined_sources, path, "converted", options.dry_run ? 0 : file_size_or_zero(path)});
    for (std::size_t i : plan.shards[k]) entries.emplace_back(weights[i].name, name);
  }
  const std::string index_path = (fs::path(dir) / index_name(format_of(options.to))).string();
  if (!options.dry_run) {
    AtomicFile out(index_path);
    out.write(index_json(plan.total_size, std::move(entries)));
    out.commit();
  }
  result.files.push_back({"", index_path, "written", options.dry_run ? 0 : file_size_or_zero(index_path)});
}

// Loads the shards an index names, in order; a missing shard is an error.
std::vector<std::unique_ptr<Source>> load_index(const std::string& index_path) {
  std::vector<std::string> files = read_weights_index(index_path).files;
  // In shard order (the numbered names sort so), as Hugging Face loads them: the merged state dict then has
  // the original key order.
  std::sort(files.begin(), files.end());
  std::vector<std::unique_ptr<Source>> sources;
  for (const auto& file : files) {
    const std::string path = (fs::path(index_path).parent_path() / file).string();
    if (!fs::exists(path)) throw Error(ErrorKind::corrupt, index_path, "weight_map", "shard '" + file + "' is missing");
    sources.push_back(load_source(path));
  }
  return sources;
}

void check_dtype_option(const ConvertOptions& options) {
  if (options.dtype && !can_cast(DType::float32, *options.dtype)) {
    throw Error(ErrorKind::invalid_argument, "", "--dtype", "only float32, float16 and bfloat16 are targets");
  }
}

void convert_weights(const std::vector<const Source*>& sources, const std::string& file_path, const std::string& dir,
                     const ConvertOptions& options, ConvertResult& result) {
  std::vector<Weight> weights;
  for (const Source* s : sources) collect_weights(*s, weights);
  std::vector<std::string> paths;
  for (const Source* s : sources) paths.push_back(s->path);
  write_weights(weights, attributes_of(*sources.front()), options, file_path, dir, paths, result);
}

// ---- other checkpoint files ----

void convert_state(const Source& s, const std::string& destination, const ConvertOptions& options, ConvertResult& result) {
  Progress progress{options, inputs_label({s.path})};
  if (options.to == ConvertTarget::safetensors) {
    std::vector<NamedArray> arrays;
    json::Json structure;
    try {
      structure = encode_structure(s.graph(), s.graph().root(), arrays);
    } catch (const Error& e) {
      throw e.with_context(s.path, "");
    }
    std::vector<SafetensorsItem> items;
    for (const auto& a : arrays) {
      const pickle::Node& n = s.graph().at(a.node);
      if (n.kind == Kind::tensor) {
        const auto& t = s.graph().tensors[static_cast<std::size_t>(n.integer)];
        items.push_back({a.name, &s, &t, nullptr, t.dtype});
        progress.total += nbytes_of(t.shape, t.dtype);
      } else {
        items.push_back({a.name, &s, nullptr, &s.graph().arrays[static_cast<std::size_t>(n.integer)], DType::uint8});
      }
    }
    const std::vector<std::pair<std::string, std::string>> metadata = {
        {"format", "pt"}, {kStructureKey, json::dump(structure)}, {kSourceNameKey, fs::path(s.path).filename().string()}};
    if (!options.dry_run) write_safetensors_file(destination, std::move(items), metadata, progress);
  } else {
    if (!s.safetensors || (!s.has_structure() && !is_state_dict(s.graph()))) {
      throw Error(ErrorKind::unsupported, s.path, "", "not a file ckpt converts to pytorch");
    }
    Graph g;
    std::vector<StorageFill> fills;
    GraphBuilder builder(g, fills, options);
    g.set_root(copy_value(s, s.graph().root(), g, builder));
    if (!options.dry_run) write_torch_file(destination, g, fills, progress);
  }
  result.files.push_back({s.path, destination, "converted", options.dry_run ? 0 : file_size_or_zero(destination)});
}

void consolidate_optimizer(const std::string& dir, const OptimizerShards& shards, const std::string& destination, const ConvertOptions& options,
                           ConvertResult& result) {
  std::vector<std::unique_ptr<Source>> loaded;
  std::vector<const Source*> views;
  for (const auto& name : shards.files) views.push_back(loaded.emplace_back(load_source((fs::path(dir) / name).string())).get());
  check_shard_set(views);
  Graph g;
  std::vector<StorageFill> fills;
  ConvertOptions exact = options;
  exact.dtype.reset();  // optimizer state keeps its dtypes
  GraphBuilder builder(g, fills, exact);
  Progress progress{options, inputs_label(shards.files)};
  // Every shard's state entries by index; each index at most once across the shards.
  std::map<std::int64_t, std::pair<const Source*, NodeId>> states;
  for (const auto& s : loaded) {
    const Graph& sg = s->graph();
    const NodeId* state = sg.is(sg.root(), Kind::dict) ? sg.dict_get(sg.root(), "state") : nullptr;
    if (!state || !sg.is(*state, Kind::dict) || !sg.dict_get(sg.root(), "param_groups")) {
      throw Error(ErrorKind::corrupt, s->path, "", "not an optimizer state dict");
    }
    const auto& items = sg.at(*state).items;
    for (std::size_t i = 0; i + 1 < items.size(); i += 2) {
      if (!sg.is(items[i], Kind::integer)) throw Error(ErrorKind::corrupt, s->path, "state", "a key that is not a parameter index");
      const std::int64_t index = sg.at(items[i]).integer;
      if (!states.emplace(index, std::pair{s.get(), items[i + 1]}).second) {
        throw Error(ErrorKind::corrupt, s->path, "state." + std::to_string(index), "held by two shards");
      }
    }
  }
  std::vector<NodeId> state_items;
  for (const auto& [index, where] : states) {
    pickle::Node key;
    key.kind = Kind::integer;
    key.integer = index;
    state_items.push_back(g.add(std::move(key)));
    state_items.push_back(copy_value(*where.first, where.second, g, builder));
  }
  pickle::Node state;
  state.kind = Kind::dict;
  state.items = std::move(state_items);
  const Source& first = *loaded.front();
  const NodeId groups = copy_value(first, *first.graph().dict_get(first.graph().root(), "param_groups"), g, builder);
  pickle::Node root;
  root.kind = Kind::dict;
  root.items = {add_string(g, "state"), g.add(std::move(state)), add_string(g, "param_groups"), groups};
  g.set_root(g.add(std::move(root)));
  for (const auto& st : g.storages) progress.total += st.untyped ? st.numel : st.numel * element_size(st.dtype);
  if (!options.dry_run) write_torch_file(destination, g, fills, progress);
  for (const auto& s : loaded) {
    result.files.push_back({s->path, destination, "consolidated", options.dry_run ? 0 : file_size_or_zero(destination)});
  }
}

void training_args_to_json(const Source& s, const std::string& destination, const ConvertOptions& options, ConvertResult& result) {
  const Graph& g = s.graph();
  json::Json doc;
  const pickle::Node& root = g.at(g.root());
  if (root.kind == Kind::object) {
    const NodeId callable = root.items[pickle::object_callable];
    doc["class"] = g.is(callable, Kind::global) ? g.global_name(callable) : "";
    doc["fields"] = to_data(g, root.items[pickle::object_state]);
  } else {
    doc["value"] = to_data(g, g.root());
  }
  if (!options.dry_run) {
    AtomicFile out(destination);
    out.write(json::dump(doc, 2) + "\n");
    out.commit();
  }
  result.files.push_back({s.path, destination, "converted one way to JSON", options.dry_run ? 0 : file_size_or_zero(destination)});
  result.notes.push_back(fs::path(s.path).filename().string() + " converts one way: its fields as JSON data; the class is not rebuilt");
}

// The files --include-state converts: what a name promises, as inspect and completeness read names.
bool is_state_file_name(const std::string& name) {
  const auto kind = promised_kind(name);
  return kind && *kind != FileKind::weights;
}

std::string state_safetensors_name(const std::string& name) { return fs::path(name).stem().string() + ".safetensors"; }

// The name a state file ckpt stored as STEM.safetensors goes back to. The name comes from the file's own metadata
// (ckpt_source_name: it keeps rng_state.pth's extension), so it is trusted only as far as the file's name vouches
// for it: the same stem with an extension torch.save files of a checkpoint carry.
std::string restored_state_name(const Source& s) {
  const std::string stem = fs::path(s.path).stem().string();
  const auto it = s.metadata.find(kSourceNameKey);
  if (it == s.metadata.end()) return stem + ".pt";
  for (const char* extension : {".pt", ".pth", ".bin"}) {
    if (it->second == stem + extension) return it->second;
  }
  throw Error(ErrorKind::corrupt, s.path, std::string("__metadata__ ") + kSourceNameKey,
              "names '" + it->second + "', but a file stored as " + stem + ".safetensors can only go back to " + stem + ".pt, " + stem +
                  ".pth or " + stem + ".bin");
}

// Every output of a directory conversion is made from one input: a second input that would become the same file
// (a copied file named like a converted one, two names converting to one) is refused before it replaces the first.
void claim_output(const ConvertResult& result, std::size_t first, const std::string& destination, const std::string& input) {
  for (std::size_t i = first; i < result.files.size(); ++i) {
    if (result.files[i].destination != destination) continue;
    const std::string& earlier = result.files[i].source.empty() ? "the weights index" : result.files[i].source;
    throw Error(ErrorKind::unsupported, input, "",
                "would become " + fs::path(destination).filename().string() + ", which " + earlier + " already became");
  }
}

// The config of weights cast to `dtype` says so, as transformers' save_pretrained writes it: torch_dtype the
// dtype's name, the whole file as json.dumps(indent=2, sort_keys=True) plus a newline.
void write_config_with_dtype(const std::string& source, const std::string& destination, DType dtype, const ConvertOptions& options) {
  json::Json config = json::parse_file(source);
  if (!config.is_object()) throw Error(ErrorKind::corrupt, source, "", "is not a JSON object, so its torch_dtype cannot be set");
  config["torch_dtype"] = std::string(torch_name(dtype));
  if (options.dry_run) return;
  AtomicFile out(destination);
  out.write(json::dump_python_sorted(config, 2) + "\n");
  out.commit();
}

// ---- destinations ----

void refuse_existing(const std::string& destination, const ConvertOptions& options) {
  if (fs::exists(fs::symlink_status(destination)) && !options.force) {
    throw Error(ErrorKind::invalid_argument, destination, "", "already exists; pass --force to replace it");
  }
}

// Builds a directory through build_output_directory (an existing destination is replaced only when it is an
// earlier output), or on a dry run only goes through the motions and says whether it would be replaced.
template <typename Fill>
void build_directory(const std::string& destination, const ConvertOptions& options, ConvertResult& result, Fill fill) {
  if (!options.dry_run) {
    build_output_directory(destination, {}, fill);
    return;
  }
  const std::size_t first = result.files.size();
  fill(destination);
  std::set<std::string> names;
  for (std::size_t i = first; i < result.files.size(); ++i) {
    names.insert(fs::path(result.files[i].destination).lexically_relative(destination).generic_string());
  }
  require_replaceable(destination, names);
}

void rebase(ConvertResult& result, std::size_t from, const std::string& staging, const std::string& destination) {
  for (std::size_t i = from; i < result.files.size(); ++i) {
    auto& d = result.files[i].destination;
    if (d.rfind(staging, 0) == 0) d = destination + d.substr(staging.size());
  }
}

void convert_directory(const std::string& source, const std::string& destination, const ConvertOptions& options, ConvertResult& result) {
  const auto weights = find_weights(source);
  std::set<std::string> weight_files;
  if (weights) {
    weight_files.insert(weights->files.begin(), weights->files.end());
    if (weights->index) weight_files.insert(*weights->index);
  }
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(source, ec)) {
    if (fs_util::require_regular_file(entry.path().string())) names.push_back(entry.path().filename().string());
  }
  if (ec) throw Error(ErrorKind::io, source, "", "cannot list directory: " + ec.message());
  std::sort(names.begin(), names.end());
  std::optional<OptimizerShards> shards;
  if (options.consolidate) {
    shards = find_optimizer_shards(source);
    if (!shards) throw Error(ErrorKind::invalid_argument, source, "", "has no optimizer shards (optimizer_<rank>.pt) to consolidate");
    if (fs::exists(fs::path(source) / "optimizer.pt")) throw Error(ErrorKind::corrupt, source, "", "holds both optimizer.pt and optimizer shards");
  }
  const bool convert_weights_here = weights && !options.copy_weights;

  const std::size_t first = result.files.size();
  std::string used_staging;
  build_directory(destination, options, result, [&](const std::string& out) {
    used_staging = out;
    if (shards) consolidate_optimizer(source, *shards, (fs::path(out) / "optimizer.pt").string(), options, result);
    if (convert_weights_here) {
      std::vector<std::unique_ptr<Source>> loaded;
      if (weights->index) loaded = load_index((fs::path(source) / *weights->index).string());
      else loaded.push_back(load_source((fs::path(source) / weights->files.front()).string()));
      std::vector<const Source*> views;
      for (const auto& s : loaded) views.push_back(s.get());
      convert_weights(views, (fs::path(out) / single_weights_name(format_of(options.to))).string(), out, options, result);
    }
    for (const auto& name : names) {
      stop_if_interrupted(options.interrupted);
      if (convert_weights_here && weight_files.count(name)) continue;
      if (shards && std::find(shards->files.begin(), shards->files.end(), name) != shards->files.end()) continue;
      const std::string path = (fs::path(source) / name).string();
      if (options.include_state && is_state_file_name(name) && options.to == ConvertTarget::safetensors) {
        const std::string to = (fs::path(out) / state_safetensors_name(name)).string();
        claim_output(result, first, to, path);
        convert_state(*load_source(path), to, options, result);
        continue;
      }
      if (options.include_state && options.to == ConvertTarget::safetensors && name == "training_args.bin") {
        const std::string to = (fs::path(out) / "training_args.json").string();
        claim_output(result, first, to, path);
        training_args_to_json(*load_source(path), to, options, result);
        continue;
      }
      if (options.include_state && options.to == ConvertTarget::pytorch && name.ends_with(".safetensors")) {
        const auto s = load_source(path);
        if (s->has_structure()) {
          const std::string to = (fs::path(out) / restored_state_name(*s)).string();
          claim_output(result, first, to, path);
          convert_state(*s, to, options, result);
          continue;
        }
      }
      const std::string to = (fs::path(out) / name).string();
      claim_output(result, first, to, path);
      if (name == "config.json" && convert_weights_here && options.dtype) {
        write_config_with_dtype(path, to, *options.dtype, options);
        result.files.push_back({path, to, "copied, torch_dtype " + std::string(torch_name(*options.dtype)),
                                options.dry_run ? 0 : file_size_or_zero(to)});
        continue;
      }
      if (!options.dry_run) fs_util::copy_file(path, to);
      result.files.push_back({path, to, "copied", options.dry_run ? 0 : file_size_or_zero(to)});
    }
  });
  if (!options.dry_run) rebase(result, first, used_staging, destination);
}

}  // namespace

namespace {

// "1.5" * factor, the whole text a number, the result at least one byte.
std::optional<std::uint64_t> scaled(const std::string& number, std::uint64_t factor) {
  double value = 0;
  auto [end, ec] = std::from_chars(number.data(), number.data() + number.size(), value);
  if (number.empty() || ec != std::errc() || end != number.data() + number.size() || !(value >= 0)) return std::nullopt;
  value *= static_cast<double>(factor);
  if (value < 1 || value > 1.8e19) return std::nullopt;
  return static_cast<std::uint64_t>(value);
}

}  // namespace

std::optional<std::uint64_t> parse_size(const std::string& text) {
  static const std::pair<const char*, std::uint64_t> kUnits[] = {
      {"KIB", 1ull << 10}, {"MIB", 1ull << 20}, {"GIB", 1ull << 30}, {"TIB", 1ull << 40}, {"KB", 1000ull},
      {"MB", 1000ull * 1000}, {"GB", 1000ull * 1000 * 1000}, {"TB", 1000ull * 1000 * 1000 * 1000}, {"B", 1}};
  std::string upper;
  for (char c : text) upper += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  for (const auto& [suffix, factor] : kUnits) {
    const std::string s(suffix);
    if (upper.size() <= s.size() || upper.compare(upper.size() - s.size(), s.size(), s) != 0) continue;
    return scaled(upper.substr(0, upper.size() - s.size()), factor);
  }
  return scaled(upper, 1);
}

ConvertResult convert(const std::string& source, const std::string& destination, const ConvertOptions& options) {
  check_dtype_option(options);
  ConvertResult result;
  result.destination = destination;
  std::error_code ec;
  const auto status = fs::status(source, ec);
  if (ec || !fs::exists(status)) throw Error(ErrorKind::not_found, source, "", "no such file or directory");
  refuse_existing(destination, options);
  if (!options.dry_run) {
    fs_util::create_parent_directories(destination);
    fs_util::clear_abandoned_temporaries_of(destination);  // left by an earlier convert, killed
  }
  if (!options.dry_run && fs::exists(fs::symlink_status(destination, ec))) {
    // Whether --force may replace it, from a dry run's names (metadata only), before converting anything.
    ConvertOptions dry_run = options;
    dry_run.dry_run = true;
    dry_run.progress = nullptr;
    convert(source, destination, dry_run);
  }

  if (fs::is_directory(status)) {
    convert_directory(source, destination, options, result);
    return result;
  }
  if (options.consolidate) throw Error(ErrorKind::invalid_argument, source, "", "--consolidate takes a checkpoint directory");

  // A single file: an index (merged), weights, or another checkpoint file.
  if (source.ends_with(".index.json")) {
    const auto loaded = load_index(source);
    std::vector<const Source*> views;
    for (const auto& s : loaded) views.push_back(s.get());
    if (options.max_shard_size) {
      std::string staging;
      build_directory(destination, options, result, [&](const std::string& out) {
        staging = out;
        convert_weights(views, "", out, options, result);
      });
      if (!options.dry_run) rebase(result, 0, staging, destination);
    } else {
      convert_weights(views, destination, "", options, result);
    }
    return result;
  }
  const auto s = load_source(source);
  const std::string name = fs::path(source).filename().string();
  if (is_state_dict(s->graph()) && !s->has_structure()) {
    if (options.max_shard_size) {
      std::string staging;
      build_directory(destination, options, result, [&](const std::string& out) {
        staging = out;
        convert_weights({s.get()}, "", out, options, result);
      });
      if (!options.dry_run) rebase(result, 0, staging, destination);
    } else {
      convert_weights({s.get()}, destination, "", options, result);
    }
    return result;
  }
  if (!s->safetensors && name.rfind("training_args", 0) == 0) {
    training_args_to_json(*s, destination, options, result);
    return result;
  }
  convert_state(*s, destination, options, result);
  return result;
}

}  // namespace ckpt::checkpoint
