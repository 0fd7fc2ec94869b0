#include "checkpoint/diff.hpp"

#include <fnmatch.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <thread>
#include <tuple>
#include <unordered_map>

#include "checkpoint/archive.hpp"
#include "checkpoint/best.hpp"
#include "checkpoint/file_kind.hpp"
#include "checkpoint/inspect.hpp"
#include "checkpoint/run_dir.hpp"
#include "checkpoint/source.hpp"
#include "checkpoint/value_data.hpp"
#include "format/dtype_cast.hpp"
#include "format/torch_archive.hpp"
#include "util/byte_buffer.hpp"
#include "util/error.hpp"
#include "util/fs.hpp"
#include "util/memory_file.hpp"
#include "util/ordered_pool.hpp"

namespace ckpt::checkpoint {
namespace fs = std::filesystem;
using pickle::Graph;
using pickle::Kind;
using pickle::NodeId;

// ---- element statistics ----

namespace {

constexpr double kInfinity = std::numeric_limits<double>::infinity();
constexpr std::size_t kBlock = 1024;  // elements widened to double at a time
// Bytes per side read and compared at a time: a multiple of kBlock elements of every dtype.
constexpr std::uint64_t kCompareBlock = 256u << 10;

bool same_number(double a, double b) { return a == b || (std::isnan(a) && std::isnan(b)); }

// |a - b| of two integers of one 64-bit dtype, exactly as far as a double holds it (never 0 for unequal ones).
double integer_distance(const std::uint8_t* a, const std::uint8_t* b, DType dtype) {
  std::uint64_t x, y;
  std::memcpy(&x, a, 8);
  std::memcpy(&y, b, 8);
  const bool x_greater = dtype == DType::int64 ? static_cast<std::int64_t>(x) > static_cast<std::int64_t>(y) : x > y;
  return static_cast<double>(x_greater ? x - y : y - x);  // modulo 2^64, which holds any such difference
}

// One element pair that is not equal, `distance` apart, b being (br + bi i).
void add_unequal(double br, double bi, double distance, const Tolerance& tolerance, ElementStats& s) {
  const double magnitude_b = bi == 0 ? std::fabs(br) : std::hypot(br, bi);
  ++s.differing;
  s.max_abs_diff = std::max(s.max_abs_diff, distance);
  const bool unbounded = distance == kInfinity || magnitude_b == 0 || std::isnan(magnitude_b);
  s.max_rel_diff = std::max(s.max_rel_diff, unbounded ? kInfinity : distance / magnitude_b);
  s.sum_sq_diff += distance * distance;
  if (!(distance <= tolerance.absolute + tolerance.relative * magnitude_b)) ++s.outside_tolerance;
}

}  // namespace

void ElementStats::merge(const ElementStats& o) {
  elements += o.elements;
  differing += o.differing;
  outside_tolerance += o.outside_tolerance;
  max_abs_diff = std::max(max_abs_diff, o.max_abs_diff);
  max_rel_diff = std::max(max_rel_diff, o.max_rel_diff);
  sum_sq_diff += o.sum_sq_diff;
  sum_sq_a += o.sum_sq_a;
  sum_sq_b += o.sum_sq_b;
  dot += o.dot;
}

double ElementStats::l2_diff() const { return std::sqrt(sum_sq_diff); }
double ElementStats::l2_a() const { return std::sqrt(sum_sq_a); }

double ElementStats::cosine() const {
  const double norm_a = std::sqrt(sum_sq_a);
  const double norm_b = std::sqrt(sum_sq_b);
  if (norm_a == 0 && norm_b == 0) return 1;
  if (norm_a == 0 || norm_b == 0) return 0;
  return dot / (norm_a * norm_b);
}

void accumulate(std::span<const std::uint8_t> a, DType dtype_a, std::span<const std::uint8_t> b, DType dtype_b, const Tolerance& tolerance,
                ElementStats& s) {
  const std::size_t size_a = element_size(dtype_a);
  const std::size_t size_b = element_size(dtype_b);
  const std::size_t parts_a = is_complex(dtype_a) ? 2 : 1;
  const std::size_t parts_b = is_complex(dtype_b) ? 2 : 1;
  const std::size_t count = a.size() / size_a;
  // Integers and bools of one dtype are equal exactly when their bytes are: doubles would round 64-bit ones.
  const bool exact = dtype_a == dtype_b && !is_floating(dtype_a) && parts_a == 1;
  std::array<double, 2 * kBlock> wa;
  std::array<double, 2 * kBlock> wb;
  for (std::size_t start = 0; start < count; start += kBlock) {
    const std::size_t n = std::min(kBlock, count - start);
    widen_to_double(a.subspan(start * size_a, n * size_a), dtype_a, wa);
    widen_to_double(b.subspan(start * size_b, n * size_b), dtype_b, wb);
    s.elements += n;
    for (std::size_t i = 0; i < n; ++i) {
      const double ar = wa[i * parts_a];
      const double ai = parts_a == 2 ? wa[i * 2 + 1] : 0.0;
      const double br = wb[i * parts_b];
      const double bi = parts_b == 2 ? wb[i * 2 + 1] : 0.0;
      s.sum_sq_a += ar * ar + ai * ai;
      s.sum_sq_b += br * br + bi * bi;
      s.dot += ar * br + ai * bi;
      const std::uint8_t* pa = a.data() + (start + i) * size_a;
      const std::uint8_t* pb = b.data() + (start + i) * size_b;
      if (exact ? std::memcmp(pa, pb, size_a) == 0 : same_number(ar, br) && same_number(ai, bi)) continue;
      const bool nan = std::isnan(ar) || std::isnan(ai) || std::isnan(br) || std::isnan(bi);
      const double distance = nan                           ? kInfinity
                              : exact && size_a == 8        ? integer_distance(pa, pb, dtype_a)
                              : ai == 0 && bi == 0          ? std::fabs(ar - br)
                                                            : std::hypot(ar - br, ai - bi);
      add_unequal(br, bi, distance, tolerance, s);
    }
  }
}

void accumulate_equal(std::span<const std::uint8_t> a, DType dtype, ElementStats& s) {
  const std::size_t size = element_size(dtype);
  const std::size_t parts = is_complex(dtype) ? 2 : 1;
  const std::size_t count = a.size() / size;
  std::array<double, 2 * kBlock> w;
  for (std::size_t start = 0; start < count; start += kBlock) {
    const std::size_t n = std::min(kBlock, count - start);
    widen_to_double(a.subspan(start * size, n * size), dtype, w);
    // Four running sums, which the compiler may keep in one vector register (one would be a chain of dependent adds).
    std::array<double, 4> lanes{};
    const std::size_t values = n * parts;
    std::size_t i = 0;
    for (; i + 4 <= values; i += 4) {
      for (std::size_t lane = 0; lane < 4; ++lane) lanes[lane] += w[i + lane] * w[i + lane];
    }
    for (; i < values; ++i) lanes[0] += w[i] * w[i];
    const double squares = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
    s.elements += n;
    s.sum_sq_a += squares;
    s.sum_sq_b += squares;
    s.dot += squares;
  }
}

const char* to_string(TensorStatus status) {
  switch (status) {
    case TensorStatus::identical: return "identical";
    case TensorStatus::within_tolerance: return "within_tolerance";
    case TensorStatus::different: return "different";
    case TensorStatus::dtype_changed: return "dtype_changed";
    case TensorStatus::shape_changed: return "shape_changed";
    case TensorStatus::only_in_a: return "only_in_a";
    case TensorStatus::only_in_b: return "only_in_b";
  }
  return "different";
}

bool DiffSection::same() const {
  return file_a.has_value() == file_b.has_value() && std::all_of(tensors.begin(), tensors.end(), [](const TensorDiff& t) { return t.same(); }) &&
         std::all_of(values.begin(), values.end(), [](const ValueDiff& v) { return v.same; });
}

bool DiffResult::same() const {
  return std::all_of(sections.begin(), sections.end(), [](const DiffSection& s) { return s.same(); });
}

namespace {

// ---- where bytes are read from ----

// Tensor bytes come from a plain file, or from a file inside an archive, decoded chunk by chunk.
struct Location {
  const ReadOnlyFile* file = nullptr;
  const ArchiveFiles* archive = nullptr;
  std::size_t member = 0;
};

// One thread's way to read Locations: an archive's chunk cache per archive (whichever of its files is read).
class Readers {
 public:
  void read(const Location& where, std::uint64_t offset, std::span<std::uint8_t> out) {
    if (where.file) {
      where.file->read_at(offset, out);
    } else {
      where.archive->read(where.member, offset, out, caches_[where.archive]);
    }
  }

 private:
  std::unordered_map<const ArchiveFiles*, ArchiveFiles::ChunkCache> caches_;
};

// A checkpoint file as parsed: its value graph, and where its tensors' bytes are read from.
struct LoadedFile {
  std::string name;  // as sections show it: the file's name inside a checkpoint, else the path given
  std::unique_ptr<Source> source;
  Location bytes;
};

// ---- the inputs ----

enum class InputKind { file, weights_index, checkpoint, model_directory, archive };

const char* to_string(InputKind kind) {
  switch (kind) {
    case InputKind::file: return "file";
    case InputKind::weights_index: return "weights_index";
    case InputKind::checkpoint: return "checkpoint";
    case InputKind::model_directory: return "model_directory";
    case InputKind::archive: return "archive";
  }
  return "file";
}

// One side of the comparison: a file, a weights index, or a set of files by name (a directory's, an archive's).
class Input {
 public:
  explicit Input(const std::string& path) : path_(path) {
    std::error_code ec;
    const auto status = fs::status(path, ec);
    if (ec || !fs::exists(status)) throw Error(ErrorKind::not_found, path, "", "no such file or directory");
    if (fs::is_directory(status)) {
      for (const auto& entry : fs::directory_iterator(path, ec)) {
        if (fs_util::require_regular_file(entry.path().string())) names_.push_back(entry.path().filename().string());
      }
      if (ec) throw Error(ErrorKind::io, path, "", "cannot list directory: " + ec.message());
      std::sort(names_.begin(), names_.end());
      kind_ = is_model_directory(path) ? InputKind::model_directory : InputKind::checkpoint;
    } else if (is_archive(path)) {
      archive_ = std::make_unique<ArchiveFiles>(path);
      for (const auto& f : archive_->manifest().files) {
        if (f.name.find('/') == std::string::npos) names_.push_back(f.name);
      }
      std::sort(names_.begin(), names_.end());
      kind_ = InputKind::archive;
    } else {
      kind_ = path.ends_with(".index.json") ? InputKind::weights_index : InputKind::file;
    }
  }

  const std::string& path() const { return path_; }
  InputKind kind() const { return kind_; }
  bool has_training_state() const { return kind_ == InputKind::checkpoint || kind_ == InputKind::archive; }
  // Files by name, directly inside (a directory's or an archive's; none for a file).
  const std::vector<std::string>& names() const { return names_; }

  // Where a parser can read the file `name`: beside the others, or an archived file's metadata copy.
  std::optional<std::string> path_of(const std::string& name) {
    if (kind_ == InputKind::weights_index) {
      const fs::path index(path_);
      if (name == index.filename().string()) return path_;
      const fs::path beside = index.parent_path() / name;
      return fs::exists(beside) ? std::optional(beside.string()) : std::nullopt;
    }
    if (std::find(names_.begin(), names_.end(), name) == names_.end()) return std::nullopt;
    if (!archive_) return (fs::path(path_) / name).string();
    auto& copy = copies_[name];
    if (!copy) copy = archive_->metadata_copy(*archive_->find(name));
    return copy->path();
  }

  // Parses the file `name` (for a file input, the path itself).
  std::unique_ptr<LoadedFile> load(const std::string& name) {
    auto loaded = std::make_unique<LoadedFile>();
    loaded->name = name;
    const std::string where = kind_ == InputKind::file ? path_ : *path_of(name);
    try {
      loaded->source = load_source(where);
    } catch (const Error& e) {
      throw renamed(e, name);
    }
    if (archive_) {
      loaded->bytes = Location{nullptr, archive_.get(), *archive_->find(name)};
    } else {
      loaded->bytes = Location{&loaded->source->file().file(), nullptr, 0};
    }
    return loaded;
  }

  json::Json load_json(const std::string& name) {
    try {
      return json::parse_file(*path_of(name));
    } catch (const Error& e) {
      throw renamed(e, name);
    }
  }

  // The weights files, in the order Hugging Face loads shards; empty when there are none.
  std::vector<std::unique_ptr<LoadedFile>> load_weights() {
    std::vector<std::unique_ptr<LoadedFile>> loaded;
    if (kind_ == InputKind::file) {
      loaded.push_back(load(path_));
      return loaded;
    }
    std::optional<WeightsFiles> weights;
    try {
      weights = find_weights_in([this](const std::string& name) { return path_of(name); });
    } catch (const Error& e) {
      throw renamed(e, "");
    }
    if (!weights) return loaded;
    weights_name_ = weights->index ? *weights->index : weights->files.front();
    std::vector<std::string> files = weights->files;
    if (weights->index) std::sort(files.begin(), files.end());  // shard order, as load_index reads them
    for (const auto& file : files) {
      if (!path_of(file)) {
        throw Error(ErrorKind::corrupt, display(*weights->index), "weight_map", "shard '" + file + "' is missing");
      }
      loaded.push_back(load(file));
    }
    return loaded;
  }

  // The weights' file name (a sharded set's index), once load_weights found them; the path for a file input.
  const std::string& weights_name() const { return kind_ == InputKind::file ? path_ : weights_name_; }

  // How errors and sections name a file of this input.
  std::string display(const std::string& name) const {
    if (kind_ == InputKind::file) return path_;
    if (kind_ == InputKind::weights_index) return (fs::path(path_).parent_path() / name).string();
    return archive_ ? archive_->path() + ": " + name : (fs::path(path_) / name).string();
  }

 private:
  // An error about an archived file (about its metadata copy, when a parser raised it) named as the user knows the
  // file: the archive, then the file in it.
  Error renamed(const Error& e, const std::string& name) const {
    if (!archive_) return e;
    for (const auto& [copy_name, copy] : copies_) {
      if (e.path() == copy->path()) return Error(e.kind(), archive_->path(), e.where().empty() ? copy_name : copy_name + ": " + e.where(), e.detail());
    }
    return name.empty() ? e : e.with_context(archive_->path(), name);
  }

  std::string path_;
  InputKind kind_ = InputKind::file;
  std::vector<std::string> names_;
  std::unique_ptr<ArchiveFiles> archive_;
  std::map<std::string, std::unique_ptr<MemoryFile>> copies_;
  std::string weights_name_;
};

// ---- reading a tensor's elements ----

struct TensorSide {
  const LoadedFile* file = nullptr;
  const pickle::TensorRef* tensor = nullptr;
};

bool is_contiguous(const pickle::TensorRef& t) {
  std::int64_t expected = 1;
  for (std::size_t d = t.shape.size(); d-- > 0;) {
    if (t.shape[d] != 1 && t.stride[d] != expected) return false;
    expected *= t.shape[d];
  }
  return true;
}

std::uint64_t first_byte(const TensorSide& side) {
  const auto& t = *side.tensor;
  return side.file->source->storage_offsets[t.storage] + static_cast<std::uint64_t>(t.storage_offset) * element_size(t.dtype);
}

// The bytes of a strided view around the elements being gathered, so that neighbours come from one read.
struct Window {
  const LoadedFile* file = nullptr;
  std::uint64_t start = 0;
  ByteBuffer bytes;
};

// Elements [first, first + count) of a tensor in row-major order, its bytes into `out`: one read when the view is
// contiguous, else gathered through `window`, a chunk of the view's extent at a time.
void read_elements(const TensorSide& side, std::uint64_t first, std::uint64_t count, std::uint64_t chunk_bytes, ByteBuffer& out, Readers& readers,
                   Window& window) {
  const auto& t = *side.tensor;
  const std::size_t es = element_size(t.dtype);
  out.resize(static_cast<std::size_t>(count * es));
  const std::uint64_t base = first_byte(side);
  if (is_contiguous(t)) {
    readers.read(side.file->bytes, base + first * es, out.span());
    return;
  }
  std::uint64_t last = 0;  // the view's last element, in elements from its first
  for (std::size_t d = 0; d < t.shape.size(); ++d) last += static_cast<std::uint64_t>(t.shape[d] - 1) * static_cast<std::uint64_t>(t.stride[d]);
  const std::uint64_t extent_end = base + (last + 1) * es;
  std::vector<std::int64_t> index(t.shape.size());
  std::uint64_t element = 0;
  for (std::size_t d = t.shape.size(), rest = first; d-- > 0;) {
    index[d] = static_cast<std::int64_t>(rest % static_cast<std::uint64_t>(t.shape[d]));
    rest /= static_cast<std::uint64_t>(t.shape[d]);
    element += static_cast<std::uint64_t>(index[d]) * static_cast<std::uint64_t>(t.stride[d]);
  }
  for (std::uint64_t i = 0; i < count; ++i) {
    const std::uint64_t at = base + element * es;
    if (window.file != side.file || at < window.start || at + es > window.start + window.bytes.size()) {
      window.file = side.file;
      window.start = at;
      window.bytes.resize(static_cast<std::size_t>(std::min(std::max<std::uint64_t>(chunk_bytes, es), extent_end - at)));
      readers.read(side.file->bytes, at, window.bytes.span());
    }
    std::memcpy(out.data() + i * es, window.bytes.data() + (at - window.start), es);
    for (std::size_t d = t.shape.size(); d-- > 0;) {
      if (++index[d] < t.shape[d]) {
        element += static_cast<std::uint64_t>(t.stride[d]);
        break;
      }
      element -= static_cast<std::uint64_t>(t.stride[d]) * static_cast<std::uint64_t>(t.shape[d] - 1);
      index[d] = 0;
    }
  }
}

std::uint64_t numel_of(const pickle::TensorRef& t) { return *torch_archive::numel(t.shape); }

// ---- the comparison ----

// A pair of tensors whose values are compared: the TensorDiff it fills.
struct Pending {
  std::size_t section = 0;
  std::size_t tensor = 0;
  TensorSide a;
  TensorSide b;
};

const pickle::TensorRef* tensor_of(const Graph& g, NodeId id) {
  return g.is(id, Kind::tensor) ? &g.tensors[static_cast<std::size_t>(g.at(id).integer)] : nullptr;
}

// A dict key as a name part: its text, an integer's digits, else its position.
std::string key_text(const Graph& g, NodeId key, std::size_t position) {
  if (g.is(key, Kind::string)) return g.at(key).text;
  if (g.is(key, Kind::integer)) return std::to_string(g.at(key).integer);
  return "#" + std::to_string(position);
}

// A dict's entries by key text, in first-appearance order, each with its last value (the one Python keeps).
std::vector<std::pair<std::string, NodeId>> dict_entries(const Graph& g, NodeId dict) {
  std::vector<std::pair<std::string, NodeId>> entries;
  std::unordered_map<std::string, std::size_t> position;
  const auto& items = g.at(dict).items;
  for (std::size_t i = 0; i + 1 < items.size(); i += 2) {
    std::string key = key_text(g, items[i], i / 2);
    const auto [it, inserted] = position.try_emplace(key, entries.size());
    if (inserted) entries.emplace_back(std::move(key), items[i + 1]);
    else entries[it->second].second = items[i + 1];
  }
  return entries;
}

bool is_sequence(const Graph& g, NodeId id) { return g.is(id, Kind::list) || g.is(id, Kind::tuple); }

// Whether a value is walked into rather than compared whole: a dict, or a sequence holding containers or tensors
// (param_groups: a list of dicts), but not a sequence of plain values (betas, params, _last_lr).
bool is_walked(const Graph& g, NodeId id) {
  if (g.is(id, Kind::dict)) return true;
  if (!is_sequence(g, id)) return false;
  return std::any_of(g.at(id).items.begin(), g.at(id).items.end(),
                     [&](NodeId item) { return g.is(item, Kind::dict) || is_sequence(g, item) || g.is(item, Kind::tensor); });
}

// Whether two JSON values are equal, NaN equal to NaN (as elements compare).
bool same_json(const json::Json& a, const json::Json& b) {
  if (a.is_number_float() && b.is_number_float()) return same_number(a.get<double>(), b.get<double>());
  return a == b;
}

class Comparison {
 public:
  Comparison(const DiffOptions& options, DiffResult& result) : options_(options), result_(result) {}

  std::size_t add_section(std::string name, std::optional<std::string> file_a, std::optional<std::string> file_b) {
    result_.sections.push_back({std::move(name), std::move(file_a), std::move(file_b), {}, {}});
    return result_.sections.size() - 1;
  }

  bool wanted(const std::string& name) const {
    if (options_.only.empty()) return true;
    return std::any_of(options_.only.begin(), options_.only.end(), [&](const std::string& p) { return ::fnmatch(p.c_str(), name.c_str(), 0) == 0; });
  }

  void add_tensor(std::size_t section, const std::string& name, std::optional<TensorSide> a, std::optional<TensorSide> b) {
    if (!wanted(name)) return;
    TensorDiff t;
    t.name = name;
    if (a) {
      t.dtype_a = a->tensor->dtype;
      t.shape_a = a->tensor->shape;
    }
    if (b) {
      t.dtype_b = b->tensor->dtype;
      t.shape_b = b->tensor->shape;
    }
    if (!a) t.status = TensorStatus::only_in_b;
    else if (!b) t.status = TensorStatus::only_in_a;
    else if (a->tensor->shape != b->tensor->shape) t.status = TensorStatus::shape_changed;
    else t.status = a->tensor->dtype == b->tensor->dtype ? TensorStatus::identical : TensorStatus::dtype_changed;
    auto& tensors = result_.sections[section].tensors;
    if (a && b && t.status != TensorStatus::shape_changed) {
      // Elements are compared one by one: an expanded view may not claim far more than its storage holds.
      check_view_size(*a->file->source, *a->tensor);
      check_view_size(*b->file->source, *b->tensor);
      // Tied tensors (one view of one storage under two names, on both sides alike) are compared once.
      const ViewPair views{view_of(*a), view_of(*b)};
      const auto [first, inserted] = compared_views_.try_emplace(views, pending_.size());
      if (inserted) pending_.push_back({section, tensors.size(), *a, *b});
      else tied_.push_back({first->second, section, tensors.size()});
    }
    tensors.push_back(std::move(t));
  }

  void add_value(std::size_t section, const std::string& name, const LoadedFile* fa, std::optional<NodeId> a, const LoadedFile* fb,
                 std::optional<NodeId> b, const std::function<json::Json(const Graph&, NodeId)>& shown) {
    if (!wanted(name)) return;
    ValueDiff v;
    v.name = name;
    v.in_a = a.has_value();
    v.in_b = b.has_value();
    v.a = a ? shown(fa->source->graph(), *a) : json::Json(nullptr);
    v.b = b ? shown(fb->source->graph(), *b) : json::Json(nullptr);
    v.same = a && b && same_value(*fa, *a, *fb, *b);
    result_.sections[section].values.push_back(std::move(v));
  }

  void add_json_value(std::size_t section, const std::string& name, json::Json a, json::Json b) {
    if (!wanted(name)) return;
    const bool same = same_json(a, b);
    result_.sections[section].values.push_back({name, true, true, std::move(a), std::move(b), same});
  }

  // Walks two values of state files side by side (either may be missing): tensors become TensorDiffs, dicts and
  // sequences of containers are walked into, anything else is one ValueDiff.
  void walk(std::size_t section, const std::string& name, const LoadedFile* fa, std::optional<NodeId> a, const LoadedFile* fb,
            std::optional<NodeId> b) {
    const Graph* ga = fa ? &fa->source->graph() : nullptr;
    const Graph* gb = fb ? &fb->source->graph() : nullptr;
    const pickle::TensorRef* ta = a ? tensor_of(*ga, *a) : nullptr;
    const pickle::TensorRef* tb = b ? tensor_of(*gb, *b) : nullptr;
    if ((ta || !a) && (tb || !b)) {
      add_tensor(section, name, ta ? std::optional(TensorSide{fa, ta}) : std::nullopt, tb ? std::optional(TensorSide{fb, tb}) : std::nullopt);
      return;
    }
    const bool dicts = (!a || ga->is(*a, Kind::dict)) && (!b || gb->is(*b, Kind::dict));
    const bool sequences = (!a || is_sequence(*ga, *a)) && (!b || is_sequence(*gb, *b));
    const bool walked = (!a || is_walked(*ga, *a)) && (!b || is_walked(*gb, *b));
    const auto child = [&](const std::string& key) { return name + "." + key; };
    if (walked && dicts) {
      const auto entries_a = a ? dict_entries(*ga, *a) : std::vector<std::pair<std::string, NodeId>>{};
      const auto entries_b = b ? dict_entries(*gb, *b) : std::vector<std::pair<std::string, NodeId>>{};
      std::unordered_map<std::string, NodeId> by_key_b(entries_b.begin(), entries_b.end());
      std::set<std::string> keys_a;
      for (const auto& [key, value] : entries_a) {
        keys_a.insert(key);
        const auto other = by_key_b.find(key);
        walk(section, child(key), fa, value, fb, other == by_key_b.end() ? std::nullopt : std::optional(other->second));
      }
      for (const auto& [key, value] : entries_b) {
        if (!keys_a.count(key)) walk(section, child(key), fa, std::nullopt, fb, value);
      }
      return;
    }
    if (walked && sequences) {
      const std::size_t size_a = a ? ga->at(*a).items.size() : 0;
      const std::size_t size_b = b ? gb->at(*b).items.size() : 0;
      for (std::size_t i = 0; i < std::max(size_a, size_b); ++i) {
        walk(section, child(std::to_string(i)), fa, i < size_a ? std::optional(ga->at(*a).items[i]) : std::nullopt, fb,
             i < size_b ? std::optional(gb->at(*b).items[i]) : std::nullopt);
      }
      return;
    }
    add_value(section, name, fa, a, fb, b, [](const Graph& g, NodeId id) { return to_data(g, id); });
  }

  // Compares the values of every pending pair, chunk by chunk on every core, and sets their statuses.
  void compare_tensors() {
    // A piece is one chunk of a tensor pair; a job, consecutive pieces of at most a chunk's bytes per side (small
    // tensors share one), so that the threads hand over work once per chunk, not once per tensor.
    struct Piece {
      std::size_t pair;
      std::uint64_t first;
      std::uint64_t count;
    };
    std::vector<Piece> pieces;
    std::uint64_t total = 0;
    for (std::size_t p = 0; p < pending_.size(); ++p) {
      const std::uint64_t numel = numel_of(*pending_[p].a.tensor);
      const std::uint64_t per_piece = std::max<std::uint64_t>(1, options_.chunk_bytes / widest(p));
      for (std::uint64_t first = 0; first < numel; first += per_piece) pieces.push_back({p, first, std::min(per_piece, numel - first)});
      total += numel * (element_size(pending_[p].a.tensor->dtype) + element_size(pending_[p].b.tensor->dtype));
    }
    const auto jobs_of = [&](const std::vector<std::size_t>& piece_indices) {
      std::vector<std::pair<std::size_t, std::size_t>> jobs;  // [begin, end) in piece_indices
      std::uint64_t bytes = 0;
      for (std::size_t i = 0; i < piece_indices.size(); ++i) {
        const Piece& piece = pieces[piece_indices[i]];
        const std::uint64_t piece_bytes = piece.count * widest(piece.pair);
        if (jobs.empty() || bytes + piece_bytes > options_.chunk_bytes) {
          jobs.emplace_back(i, i);
          bytes = 0;
        }
        jobs.back().second = i + 1;
        bytes += piece_bytes;
      }
      return jobs;
    };
    struct Worker {
      Readers readers;
      ByteBuffer a, b;
      Window window_a, window_b;
      ByteBuffer block_a, block_b;
    };
    const unsigned threads = options_.threads ? options_.threads : std::max(1u, std::thread::hardware_concurrency());
    const std::size_t window = 2 * static_cast<std::size_t>(threads);
    std::vector<Worker> workers(threads);
    struct Result {
      bool equal = false;
      ElementStats stats;
    };
    std::vector<std::vector<Result>> slots(window);  // per job in flight, a result per piece
    struct PairState {
      bool bytes_differ = false;
      ElementStats stats;
      std::vector<std::size_t> equal_pieces;
    };
    std::vector<PairState> states(pending_.size());
    const auto read = [&](const Piece& piece, bool both, Worker& worker) {
      const Pending& p = pending_[piece.pair];
      try {
        read_elements(p.a, piece.first, piece.count, options_.chunk_bytes, worker.a, worker.readers, worker.window_a);
        if (both) read_elements(p.b, piece.first, piece.count, options_.chunk_bytes, worker.b, worker.readers, worker.window_b);
      } catch (const Error& e) {
        throw e.with_context("", "tensor '" + result_.sections[p.section].tensors[p.tensor].name + "'");
      }
    };

    // Whether a piece's bytes are the same on both sides, compared a block at a time: blocks small enough to stay in
    // the core's cache between the read and the comparison (reading a whole piece first would go out to memory and
    // back). Strided views are gathered whole.
    const auto same_bytes = [&](const Piece& piece, Worker& worker) {
      const Pending& p = pending_[piece.pair];
      if (!is_contiguous(*p.a.tensor) || !is_contiguous(*p.b.tensor)) {
        read(piece, true, worker);
        return std::memcmp(worker.a.data(), worker.b.data(), worker.a.size()) == 0;
      }
      const std::uint64_t es = element_size(p.a.tensor->dtype);
      const std::uint64_t begin_a = first_byte(p.a) + piece.first * es;
      const std::uint64_t begin_b = first_byte(p.b) + piece.first * es;
      const std::uint64_t length = piece.count * es;
      for (std::uint64_t at = 0; at < length; at += kCompareBlock) {
        const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(kCompareBlock, length - at));
        worker.block_a.resize(n);
        worker.block_b.resize(n);
        try {
          worker.readers.read(p.a.file->bytes, begin_a + at, worker.block_a.span());
          worker.readers.read(p.b.file->bytes, begin_b + at, worker.block_b.span());
        } catch (const Error& e) {
          throw e.with_context("", "tensor '" + result_.sections[p.section].tensors[p.tensor].name + "'");
        }
        if (std::memcmp(worker.block_a.data(), worker.block_b.data(), n) != 0) return false;
      }
      return true;
    };

    // Every piece's bytes, then the values of those whose bytes differ.
    std::vector<std::size_t> all(pieces.size());
    for (std::size_t i = 0; i < all.size(); ++i) all[i] = i;
    const auto jobs = jobs_of(all);
    std::uint64_t done = 0;
    run_ordered(
        jobs.size(), threads, window,
        [&](std::size_t j, unsigned w) {
          auto& results = slots[j % window];
          results.assign(jobs[j].second - jobs[j].first, Result{});
          for (std::size_t k = jobs[j].first; k < jobs[j].second; ++k) {
            const Piece& piece = pieces[k];
            const Pending& p = pending_[piece.pair];
            Worker& worker = workers[w];
            Result& r = results[k - jobs[j].first];
            r.equal = p.a.tensor->dtype == p.b.tensor->dtype && same_bytes(piece, worker);
            if (r.equal) continue;
            read(piece, true, worker);
            accumulate(worker.a.span(), p.a.tensor->dtype, worker.b.span(), p.b.tensor->dtype, options_.tolerance, r.stats);
          }
        },
        [&](std::size_t j) {
          for (std::size_t k = jobs[j].first; k < jobs[j].second; ++k) {
            const Piece& piece = pieces[k];
            const Result& r = slots[j % window][k - jobs[j].first];
            PairState& state = states[piece.pair];
            if (r.equal) {
              state.equal_pieces.push_back(k);
            } else {
              state.bytes_differ = true;
              state.stats.merge(r.stats);
            }
            done += piece.count * (element_size(pending_[piece.pair].a.tensor->dtype) + element_size(pending_[piece.pair].b.tensor->dtype));
          }
          if (options_.progress) options_.progress(done, total);
        });

    // The norms of a tensor whose bytes differ somewhere count its equal pieces too.
    std::vector<std::size_t> norm_pieces;
    for (const auto& state : states) {
      if (state.bytes_differ) norm_pieces.insert(norm_pieces.end(), state.equal_pieces.begin(), state.equal_pieces.end());
    }
    const auto norm_jobs = jobs_of(norm_pieces);
    run_ordered(
        norm_jobs.size(), threads, window,
        [&](std::size_t j, unsigned w) {
          auto& results = slots[j % window];
          results.assign(norm_jobs[j].second - norm_jobs[j].first, Result{});
          for (std::size_t k = norm_jobs[j].first; k < norm_jobs[j].second; ++k) {
            const Piece& piece = pieces[norm_pieces[k]];
            const TensorSide& a = pending_[piece.pair].a;
            Worker& worker = workers[w];
            ElementStats& stats = results[k - norm_jobs[j].first].stats;
            if (!is_contiguous(*a.tensor)) {
              read(piece, false, worker);
              accumulate_equal(worker.a.span(), a.tensor->dtype, stats);
              continue;
            }
            // A block at a time, as same_bytes reads: whole elements, whole widening blocks, so the sums come out as
            // from the whole piece.
            const std::uint64_t es = element_size(a.tensor->dtype);
            const std::uint64_t begin = first_byte(a) + piece.first * es;
            for (std::uint64_t at = 0; at < piece.count * es; at += kCompareBlock) {
              worker.block_a.resize(static_cast<std::size_t>(std::min<std::uint64_t>(kCompareBlock, piece.count * es - at)));
              worker.readers.read(a.file->bytes, begin + at, worker.block_a.span());
              accumulate_equal(worker.block_a.span(), a.tensor->dtype, stats);
            }
          }
        },
        [&](std::size_t j) {
          for (std::size_t k = norm_jobs[j].first; k < norm_jobs[j].second; ++k) {
            states[pieces[norm_pieces[k]].pair].stats.merge(slots[j % window][k - norm_jobs[j].first].stats);
          }
        });

    for (std::size_t p = 0; p < pending_.size(); ++p) {
      TensorDiff& t = result_.sections[pending_[p].section].tensors[pending_[p].tensor];
      if (!states[p].bytes_differ && t.status == TensorStatus::identical) continue;
      t.stats = states[p].stats;
      t.stats->elements = numel_of(*pending_[p].a.tensor);
      if (t.status == TensorStatus::dtype_changed) continue;
      t.status = t.stats->outside_tolerance == 0 ? TensorStatus::within_tolerance : TensorStatus::different;
    }
    for (const Tied& tied : tied_) {
      const TensorDiff& compared = result_.sections[pending_[tied.pending].section].tensors[pending_[tied.pending].tensor];
      TensorDiff& t = result_.sections[tied.section].tensors[tied.tensor];
      t.status = compared.status;
      t.stats = compared.stats;
    }
  }

 private:
  // The larger element size of a pending pair: its pieces hold a chunk's bytes of that side.
  std::uint64_t widest(std::size_t pair) const {
    return std::max(element_size(pending_[pair].a.tensor->dtype), element_size(pending_[pair].b.tensor->dtype));
  }

  // Whether two values are equal whole: of one kind, with equal contents; numbers as elements compare, tensors by
  // dtype, shape and bytes, numpy arrays by their bytes. Pairs found equal are remembered, so shared references do
  // not expand.
  bool same_value(const LoadedFile& fa, NodeId a, const LoadedFile& fb, NodeId b) {
    if (equal_pairs_.count({&fa, a, &fb, b})) return true;
    const Graph& ga = fa.source->graph();
    const Graph& gb = fb.source->graph();
    const pickle::Node& na = ga.at(a);
    const pickle::Node& nb = gb.at(b);
    if (na.kind != nb.kind || na.flag != nb.flag || na.items.size() != nb.items.size()) return false;
    bool same = true;
    switch (na.kind) {
      case Kind::integer: same = na.integer == nb.integer; break;
      case Kind::floating: same = same_number(na.number, nb.number); break;
      case Kind::tensor: same = same_tensor(TensorSide{&fa, tensor_of(ga, a)}, TensorSide{&fb, tensor_of(gb, b)}); break;
      case Kind::storage: {
        const auto& sa = ga.storages[static_cast<std::size_t>(na.integer)];
        const auto& sb = gb.storages[static_cast<std::size_t>(nb.integer)];
        same = sa.dtype == sb.dtype && sa.numel == sb.numel && sa.untyped == sb.untyped;
        break;
      }
      case Kind::ndarray: {
        const auto& x = ga.arrays[static_cast<std::size_t>(na.integer)];
        const auto& y = gb.arrays[static_cast<std::size_t>(nb.integer)];
        same = x.descr == y.descr && x.shape == y.shape && x.data == y.data && x.fortran_order == y.fortran_order && x.scalar == y.scalar &&
               x.plain_dtype == y.plain_dtype && x.data_kind == y.data_kind;
        break;
      }
      default: same = na.text == nb.text && (na.kind != Kind::numpy_dtype || na.integer == nb.integer); break;
    }
    for (std::size_t i = 0; same && i < na.items.size(); ++i) same = same_value(fa, na.items[i], fb, nb.items[i]);
    if (same && (na.attributes != 0) != (nb.attributes != 0)) same = false;
    if (same && na.attributes != 0) same = same_value(fa, na.attributes, fb, nb.attributes);
    if (same) equal_pairs_.insert({&fa, a, &fb, b});
    return same;
  }

  // Whether two tensors inside a value (a generator's state) have one dtype and shape and the same bytes, read a
  // chunk at a time.
  bool same_tensor(const TensorSide& a, const TensorSide& b) {
    if (a.tensor->dtype != b.tensor->dtype || a.tensor->shape != b.tensor->shape) return false;
    check_view_size(*a.file->source, *a.tensor);
    check_view_size(*b.file->source, *b.tensor);
    const std::uint64_t numel = numel_of(*a.tensor);
    const std::uint64_t per_read = std::max<std::uint64_t>(1, options_.chunk_bytes / element_size(a.tensor->dtype));
    for (std::uint64_t first = 0; first < numel; first += per_read) {
      const std::uint64_t count = std::min(per_read, numel - first);
      read_elements(a, first, count, options_.chunk_bytes, values_worker_a_, values_readers_, values_window_a_);
      read_elements(b, first, count, options_.chunk_bytes, values_worker_b_, values_readers_, values_window_b_);
      if (std::memcmp(values_worker_a_.data(), values_worker_b_.data(), values_worker_a_.size()) != 0) return false;
    }
    return true;
  }

  const DiffOptions& options_;
  DiffResult& result_;
  std::vector<Pending> pending_;
  // A tensor view: its file, storage, offset, shape and strides (dtype and shape are compared before).
  using View = std::tuple<const LoadedFile*, std::uint32_t, std::int64_t, std::vector<std::int64_t>, std::vector<std::int64_t>>;
  using ViewPair = std::pair<View, View>;
  static View view_of(const TensorSide& side) {
    const auto& t = *side.tensor;
    return {side.file, t.storage, t.storage_offset, t.shape, t.stride};
  }
  std::map<ViewPair, std::size_t> compared_views_;  // -> index into pending_
  // A pair of views compared as an earlier pending pair: its TensorDiff takes that one's result.
  struct Tied {
    std::size_t pending;
    std::size_t section;
    std::size_t tensor;
  };
  std::vector<Tied> tied_;
  std::set<std::tuple<const LoadedFile*, NodeId, const LoadedFile*, NodeId>> equal_pairs_;
  Readers values_readers_;
  ByteBuffer values_worker_a_, values_worker_b_;
  Window values_window_a_, values_window_b_;
};

// ---- weights ----

using NamedTensors = std::vector<std::pair<std::string, TensorSide>>;

// Every tensor of a state dict (or of each shard, in order) by name; a name given twice keeps its last tensor.
NamedTensors named_tensors(const std::vector<std::unique_ptr<LoadedFile>>& files, const Input& input) {
  NamedTensors named;
  std::unordered_map<std::string, std::size_t> position;
  for (const auto& f : files) {
    const Graph& g = f->source->graph();
    if (!is_state_dict(g)) {
      throw Error(ErrorKind::unsupported, input.display(f->name), "", "not a state dict of tensors (an object or other values where weights were expected)");
    }
    const auto& items = g.at(g.root()).items;
    for (std::size_t i = 0; i + 1 < items.size(); i += 2) {
      const TensorSide side{f.get(), tensor_of(g, items[i + 1])};
      const auto [it, inserted] = position.try_emplace(g.at(items[i]).text, named.size());
      if (inserted) named.emplace_back(g.at(items[i]).text, side);
      else named[it->second].second = side;
    }
  }
  return named;
}

// Compares two sets of weights files (a file, or a sharded set's shards) tensor by tensor.
void compare_weights(Comparison& c, Input& a, std::vector<std::unique_ptr<LoadedFile>> files_a, Input& b,
                     std::vector<std::unique_ptr<LoadedFile>> files_b, std::vector<std::unique_ptr<LoadedFile>>& keep) {
  for (const auto& [input, files] : {std::pair{&a, &files_a}, std::pair{&b, &files_b}}) {
    if (files->empty()) {
      throw Error(ErrorKind::not_found, input->path(), "", "holds no weights (model.safetensors, pytorch_model.bin or a sharded index)");
    }
  }
  const std::size_t section = c.add_section("weights", a.weights_name(), b.weights_name());
  const NamedTensors named_a = named_tensors(files_a, a);
  const NamedTensors named_b = named_tensors(files_b, b);
  std::unordered_map<std::string, TensorSide> by_name_b(named_b.begin(), named_b.end());
  std::set<std::string> names_a;
  for (const auto& [name, side] : named_a) {
    names_a.insert(name);
    const auto other = by_name_b.find(name);
    c.add_tensor(section, name, side, other == by_name_b.end() ? std::nullopt : std::optional(other->second));
  }
  for (const auto& [name, side] : named_b) {
    if (!names_a.count(name)) c.add_tensor(section, name, std::nullopt, side);
  }
  for (auto* files : {&files_a, &files_b}) {
    for (auto& f : *files) keep.push_back(std::move(f));
  }
}

// ---- training state ----

// Training-state files by the stem they are matched on (optimizer.pt and optimizer.safetensors are both
// "optimizer"), with their kind; the first name of a stem wins.
struct StateFile {
  std::string name;
  FileKind kind;  // optimizer, scheduler, scaler, rng_state, trainer_state
};

std::map<std::string, StateFile> state_files(const Input& input) {
  std::map<std::string, StateFile> files;
  for (const auto& name : input.names()) {
    if (name == "trainer_state.json") {
      files.emplace("trainer_state", StateFile{name, FileKind::trainer_state});
      continue;
    }
    const std::string stem = fs::path(name).stem().string();
    const std::string extension = fs::path(name).extension().string();
    if (extension != ".pt" && extension != ".pth" && extension != ".bin" && extension != ".safetensors") continue;
    auto kind = promised_kind(stem + ".pt");
    if (!kind) kind = promised_kind(stem + ".pth");
    if (kind && *kind != FileKind::weights) files.emplace(stem, StateFile{name, *kind});
  }
  return files;
}

// The order sections are shown in: optimizer state first, trainer state last.
int kind_rank(FileKind kind) {
  static constexpr FileKind kOrder[] = {FileKind::optimizer, FileKind::scheduler, FileKind::scaler, FileKind::rng_state, FileKind::trainer_state};
  return static_cast<int>(std::find(std::begin(kOrder), std::end(kOrder), kind) - std::begin(kOrder));
}

// The values of trainer_state.json a resume depends on or a reader checks, by name.
std::vector<std::pair<std::string, json::Json>> trainer_state_values(const json::Json& doc, const std::string& shown_path) {
  const json::Fields fields(doc, shown_path, "");
  const auto field = [&](const char* key) { return fields.value_or_null(key); };
  const json::Json history = field("log_history");
  const auto last_logged = [&](const char* key) {
    const json::Json entry = last_log_with(history, [&](const std::string& k) { return k == key; });
    return entry.is_null() ? entry : json::Fields(entry, shown_path, "").value_or_null(key);
  };
  json::Json best = field("best_model_checkpoint");
  if (best.is_string()) best = recorded_checkpoint_name(best.get<std::string>());
  return {{"global_step", field("global_step")}, {"epoch", field("epoch")},       {"learning_rate", last_logged("learning_rate")},
          {"loss", last_logged("loss")},         {"best_metric", field("best_metric")}, {"best_model_checkpoint", best}};
}

// Compares two parsed state files of one kind in section `section`, their values named `stem`.KEY...
void compare_state_values(Comparison& c, std::size_t section, const std::string& stem, std::optional<FileKind> kind, const LoadedFile& fa,
                          const std::string& shown_a, const LoadedFile& fb, const std::string& shown_b) {
  const Graph& ga = fa.source->graph();
  const Graph& gb = fb.source->graph();
  for (const auto& [g, shown] : {std::pair{&ga, &shown_a}, std::pair{&gb, &shown_b}}) {
    try {
      check_expansion(*g, g->root());  // the walk below expands shared references
    } catch (const Error& e) {
      throw e.with_context(*shown, "");
    }
  }
  if (kind != FileKind::rng_state || !ga.is(ga.root(), Kind::dict) || !gb.is(gb.root(), Kind::dict)) {
    c.walk(section, stem, &fa, ga.root(), &fb, gb.root());
    return;
  }
  // A generator's state is one value, equal or not; inspect's summary of it shows where it stands.
  const auto entries_a = dict_entries(ga, ga.root());
  const auto entries_b = dict_entries(gb, gb.root());
  std::map<std::string, std::pair<std::optional<NodeId>, std::optional<NodeId>>> generators;
  std::vector<std::string> order;
  for (const auto& [key, value] : entries_a) {
    generators[key].first = value;
    order.push_back(key);
  }
  for (const auto& [key, value] : entries_b) {
    if (!generators.count(key)) order.push_back(key);
    generators[key].second = value;
  }
  for (const auto& key : order) {
    const auto& [va, vb] = generators[key];
    c.add_value(section, stem + "." + key, &fa, va, &fb, vb, [&key](const Graph& g, NodeId id) {
      json::Json summary = rng_generator_summary(g, key, id);
      return summary.is_null() ? to_data(g, id) : summary;
    });
  }
}

// Compares the state file of stem `stem` of each side (either may be missing: the section says which).
void compare_state_file(Comparison& c, const std::string& stem, FileKind kind, Input& a, const std::optional<std::string>& name_a,
                        Input& b, const std::optional<std::string>& name_b, std::vector<std::unique_ptr<LoadedFile>>& keep) {
  if ((!name_a || !name_b) && !c.wanted(stem)) return;
  const std::size_t section = c.add_section(stem, name_a, name_b);
  if (!name_a || !name_b) return;
  if (kind == FileKind::trainer_state) {
    const auto values_a = trainer_state_values(a.load_json(*name_a), a.display(*name_a));
    const auto values_b = trainer_state_values(b.load_json(*name_b), b.display(*name_b));
    for (std::size_t i = 0; i < values_a.size(); ++i) c.add_json_value(section, stem + "." + values_a[i].first, values_a[i].second, values_b[i].second);
    return;
  }
  const LoadedFile& fa = *keep.emplace_back(a.load(*name_a));
  const LoadedFile& fb = *keep.emplace_back(b.load(*name_b));
  compare_state_values(c, section, stem, kind, fa, a.display(*name_a), fb, b.display(*name_b));
}

void compare_training_state(Comparison& c, Input& a, Input& b, std::vector<std::unique_ptr<LoadedFile>>& keep) {
  const auto files_a = state_files(a);
  const auto files_b = state_files(b);
  std::vector<std::pair<std::string, FileKind>> stems;
  for (const auto* files : {&files_a, &files_b}) {
    for (const auto& entry : *files) {
      const std::string& stem = entry.first;
      const bool seen = std::any_of(stems.begin(), stems.end(), [&](const auto& s) { return s.first == stem; });
      if (!seen) stems.emplace_back(stem, entry.second.kind);
    }
  }
  std::stable_sort(stems.begin(), stems.end(), [](const auto& x, const auto& y) {
    return kind_rank(x.second) != kind_rank(y.second) ? kind_rank(x.second) < kind_rank(y.second) : x.first < y.first;
  });
  for (const auto& [stem, kind] : stems) {
    const auto in_a = files_a.find(stem);
    const auto in_b = files_b.find(stem);
    const auto name = [](const auto& files, const auto& it) { return it == files.end() ? std::nullopt : std::optional(it->second.name); };
    compare_state_file(c, stem, kind, a, name(files_a, in_a), b, name(files_b, in_b), keep);
  }
}

// What a single file holds: weights, a state file of a kind resume reads, or (nullopt) other values.
std::optional<FileKind> file_kind(const Graph& g) {
  for (const FileKind kind : {FileKind::weights, FileKind::optimizer, FileKind::scheduler, FileKind::scaler, FileKind::rng_state}) {
    if (!kind_problem(g, kind)) return kind;
  }
  return std::nullopt;
}

// Two single files: weights, or state files of one kind (a section named by the kind).
void compare_files(Comparison& c, Input& a, Input& b, std::vector<std::unique_ptr<LoadedFile>>& keep) {
  auto fa = a.load(a.path());
  auto fb = b.load(b.path());
  const auto kind_a = file_kind(fa->source->graph());
  const auto kind_b = file_kind(fb->source->graph());
  const auto held = [](const std::optional<FileKind>& kind) { return kind ? std::string(kind_name(*kind)) : std::string("other values"); };
  if (kind_a != kind_b) throw Error(ErrorKind::invalid_argument, "", "", a.path() + " holds " + held(kind_a) + ", " + b.path() + " " + held(kind_b) + ": nothing to compare");
  if (kind_a == FileKind::weights) {
    std::vector<std::unique_ptr<LoadedFile>> files_a, files_b;
    files_a.push_back(std::move(fa));
    files_b.push_back(std::move(fb));
    compare_weights(c, a, std::move(files_a), b, std::move(files_b), keep);
    return;
  }
  const std::string name = kind_a ? std::string(kind_name(*kind_a)) : "value";
  const std::size_t section = c.add_section(name, a.path(), b.path());
  compare_state_values(c, section, name, kind_a, *fa, a.path(), *fb, b.path());
  keep.push_back(std::move(fa));
  keep.push_back(std::move(fb));
}

}  // namespace

DiffResult diff(const std::string& path_a, const std::string& path_b, const DiffOptions& options) {
  Input a(path_a);
  Input b(path_b);
  for (const Input* input : {&a, &b}) {
    const bool directory = input->kind() == InputKind::checkpoint || input->kind() == InputKind::model_directory;
    if (directory && !discover_checkpoints(input->path()).empty()) {
      const auto final_weights = find_weights(input->path());
      throw Error(ErrorKind::invalid_argument, input->path(), "",
                  "is a run directory: compare one of its checkpoints (" + (fs::path(input->path()) / "checkpoint-N").string() + ")" +
                      (final_weights ? " or its final weights (" + (fs::path(input->path()) / final_weights->index.value_or(final_weights->files.front())).string() + ")" : ""));
    }
  }
  DiffResult result;
  result.a = {path_a, to_string(a.kind())};
  result.b = {path_b, to_string(b.kind())};
  Comparison c(options, result);
  std::vector<std::unique_ptr<LoadedFile>> loaded;  // what the comparisons read from
  if (a.kind() == InputKind::file && b.kind() == InputKind::file) {
    compare_files(c, a, b, loaded);
  } else {
    compare_weights(c, a, a.load_weights(), b, b.load_weights(), loaded);
  }
  if (a.has_training_state() && b.has_training_state()) {
    compare_training_state(c, a, b, loaded);
  } else if (a.has_training_state() || b.has_training_state()) {
    const Input& other = a.has_training_state() ? b : a;
    result.notes.push_back(other.path() + " is " + (other.kind() == InputKind::model_directory ? "a model directory" : "no checkpoint") +
                           ": weights compared, training state not");
  }
  c.compare_tensors();
  if (!options.only.empty()) {
    std::erase_if(result.sections, [](const DiffSection& s) { return s.file_a && s.file_b && s.tensors.empty() && s.values.empty(); });
    if (result.sections.empty()) throw Error(ErrorKind::invalid_argument, "", "--only", "matches no tensor or value of " + path_a + " or " + path_b);
  }
  return result;
}

}  // namespace ckpt::checkpoint
