#include "checkpoint/convert_write.hpp"

#include <algorithm>
#include <filesystem>

#include "checkpoint/structure.hpp"
#include "checkpoint/tensor_scan.hpp"
#include "format/dtype_cast.hpp"
#include "format/safetensors.hpp"
#include "format/torch_archive.hpp"
#include "format/zip_writer.hpp"
#include "util/atomic_file.hpp"

namespace ckpt::checkpoint::convert_detail {
namespace fs = std::filesystem;
using pickle::Graph;
using pickle::Kind;
using pickle::NodeId;

namespace {

constexpr std::size_t kChunk = 4u << 20;
// Outputs are written with direct I/O (util/atomic_file.hpp): converting gigabytes should neither pay for nor
// evict page cache.
constexpr WriteOptions kOutput{.direct = true};

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
  void copy(const ReadOnlyFile& file, std::uint64_t offset, std::uint64_t length) override {
    out_.copy_from(file, offset, length);
  }

 private:
  AtomicFile& out_;
};

class ZipSink : public Sink {
 public:
  explicit ZipSink(zip::Writer& zip) : zip_(zip) {}
  void write(std::span<const std::uint8_t> bytes) override { zip_.append(bytes); }
  void copy(const ReadOnlyFile& file, std::uint64_t offset, std::uint64_t length) override {
    zip_.append_file_range(file, offset, length);
  }

 private:
  zip::Writer& zip_;
};

}  // namespace

std::string inputs_label(const std::vector<std::string>& paths) {
  const std::string first = paths.empty() ? "" : fs::path(paths.front()).filename().string();
  return paths.size() > 1 ? first + " and " + std::to_string(paths.size() - 1) + " more" : first;
}

namespace {

// Writes `count` elements starting at byte `offset` of `file` (contiguous), cast from `from` to `to`.
void write_contiguous(Sink& sink, const MappedFile& file, std::uint64_t offset, std::uint64_t count, DType from,
                      DType to, bool zero_dim, Progress& progress) {
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
    cast_elements(std::span(in).first(n * element_size(from)), from, std::span(out).first(n * element_size(to)), to,
                  zero_dim);
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
    next_element(t.shape, t.stride, index, element);
  }
  flush();
}

// An assembled tensor's pieces one after another, each cast to `to`. Integer elements (a buffer such as
// num_batches_tracked) go through float32 first, as zero_to_fp32 turns every buffer into float32.
void write_pieces(Sink& sink, const AssembledTensor& t, DType to, Progress& progress) {
  for (const Piece& p : t.pieces) {
    if (is_floating(p.dtype) || p.dtype == to) {
      write_contiguous(sink, *p.file, p.offset, p.count, p.dtype, to, t.shape.empty(), progress);
      continue;
    }
    const std::size_t per_chunk = kChunk / element_size(p.dtype);
    std::vector<std::uint8_t> in(per_chunk * element_size(p.dtype));
    std::vector<std::uint8_t> floats(per_chunk * 4);
    std::vector<std::uint8_t> out(per_chunk * element_size(to));
    for (std::uint64_t done = 0; done < p.count;) {
      const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(per_chunk, p.count - done));
      const auto src = std::span(in).first(n * element_size(p.dtype));
      p.file->read_at(p.offset + done * element_size(p.dtype), src);
      try {
        integers_to_float32(src, p.dtype, std::span(floats).first(n * 4));
      } catch (const Error& e) {
        throw e.with_context(p.file->path(), "tensor '" + t.name + "'");
      }
      cast_elements(std::span(floats).first(n * 4), DType::float32, std::span(out).first(n * element_size(to)), to,
                    t.shape.empty());
      sink.write(std::span(out).first(n * element_size(to)));
      done += n;
      progress.advance(src.size());
    }
  }
}

void check_safetensors_dtype(DType dtype, const std::string& name) {
  if (!safetensors_code(dtype)) {
    throw Error(ErrorKind::unsupported, "", "tensor '" + name + "'",
                std::string(torch_name(dtype)) + " has no safetensors dtype");
  }
}

}  // namespace

void write_safetensors_file(const std::string& path, std::vector<SafetensorsItem> items,
                            const std::vector<std::pair<std::string, std::string>>& metadata, Progress& progress) {
  std::vector<safetensors::OutputTensor> layout;
  std::map<std::string, const SafetensorsItem*> by_name;
  for (const auto& item : items) {
    check_safetensors_dtype(item.dtype, item.name);
    layout.push_back({item.name, item.dtype,
                      item.assembled ? item.assembled->shape
                      : item.tensor  ? item.tensor->shape
                                     : std::vector<std::int64_t>{static_cast<std::int64_t>(item.array->data.size())}});
    by_name[item.name] = &item;
  }
  safetensors::write_file(
      path, std::move(layout), metadata,
      [&](const safetensors::OutputTensor& t, AtomicFile& out) {
        const SafetensorsItem& item = *by_name.at(t.name);
        FileSink sink(out);
        if (item.assembled) {
          write_pieces(sink, *item.assembled, item.dtype, progress);
        } else if (item.tensor) {
          write_tensor(sink, *item.source, *item.tensor, item.dtype, progress);
        } else {
          sink.write({reinterpret_cast<const std::uint8_t*>(item.array->data.data()), item.array->data.size()});
        }
      },
      kOutput);
}

void write_torch_file(const std::string& path, const Graph& g, const std::vector<StorageFill>& fills,
                      Progress& progress) {
  torch_archive::write_file(
      path, g,
      [&](std::size_t i, zip::Writer& zip) {
        const StorageFill& fill = fills[i];
        ZipSink sink(zip);
        if (fill.assembled) {
          write_pieces(sink, *fill.assembled, g.storages[i].dtype, progress);
          return;
        }
        write_contiguous(sink, fill.source->file(), fill.source->storage_offsets[fill.source_storage],
                         g.storages[i].numel, fill.from, g.storages[i].dtype, fill.zero_dim, progress);
      },
      kOutput);
}

NodeId GraphBuilder::tensor(const Source& s, NodeId source_node) {
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

NodeId GraphBuilder::tensor(const AssembledTensor& t) {
  pickle::StorageRef storage;
  storage.key = std::to_string(g_.storages.size());
  storage.dtype = output_dtype(t.dtype, options_);
  storage.location = "cpu";
  storage.numel = *torch_archive::numel(t.shape);
  pickle::TensorRef view;
  view.storage = static_cast<std::uint32_t>(g_.storages.size());
  view.dtype = storage.dtype;
  view.shape = t.shape;
  view.stride = contiguous_strides(t.shape);
  g_.storages.push_back(std::move(storage));
  StorageFill fill;
  fill.assembled = &t;
  fills_.push_back(fill);
  return g_.add_tensor(std::move(view));
}

NodeId copy_value(const Source& s, NodeId node, Graph& g, GraphBuilder& builder) {
  std::vector<NamedArray> arrays;
  const json::Json structure = encode_structure(s.graph(), node, arrays);
  std::map<std::string, NodeId> tensor_by_name;
  std::map<std::string, const pickle::NdArray*> array_by_name;
  for (const auto& a : arrays) {
    const pickle::Node& n = s.graph().at(a.node);
    if (n.kind == Kind::tensor)
      tensor_by_name[a.name] = a.node;
    else
      array_by_name[a.name] = &s.graph().arrays[static_cast<std::size_t>(n.integer)];
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

NodeId add_integer(Graph& g, std::int64_t value) {
  pickle::Node n;
  n.kind = Kind::integer;
  n.integer = value;
  return g.add(std::move(n));
}

NodeId add_string(Graph& g, const std::string& text) {
  pickle::Node n;
  n.kind = Kind::string;
  n.text = text;
  return g.add(std::move(n));
}

std::optional<json::Json> attributes_of(const Source& s) {
  const NodeId attrs = s.graph().at(s.graph().root()).attributes;
  if (attrs == 0) return std::nullopt;
  std::vector<NamedArray> arrays;
  return encode_structure(s.graph(), attrs, arrays);
}

void write_weights_file(const std::string& path, const std::vector<Weight>& weights,
                        const std::vector<std::size_t>& subset, const std::optional<json::Json>& attributes,
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
      if (w.assembled) {
        items.push_back({w.name, nullptr, nullptr, nullptr, output_dtype(w.assembled->dtype, options), w.assembled});
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
    const NodeId value = w.tied_to && made.count(*w.tied_to) ? made[*w.tied_to]
                         : w.assembled                       ? builder.tensor(*w.assembled)
                                                             : builder.tensor(*w.source, w.node);
    made[w.name] = value;
    root.items.push_back(add_string(g, w.name));
    root.items.push_back(value);
  }
  if (attributes) {
    root.attributes = decode_structure(
        *attributes, g,
        [](const std::string&, bool, bool) -> NodeId {
          throw Error(ErrorKind::corrupt, "", "ckpt_attributes", "holds a tensor");
        },
        [](const std::string&) { return std::string(); });
  }
  g.set_root(g.add(std::move(root)));
  write_torch_file(path, g, fills, progress);
}

std::uint64_t file_size_or_zero(const std::string& path) {
  std::error_code ec;
  const auto size = fs::file_size(path, ec);
  return ec ? 0 : size;
}

}  // namespace ckpt::checkpoint::convert_detail
