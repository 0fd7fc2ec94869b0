#include "checkpoint/zero.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <charconv>
#include <filesystem>
#include <map>
#include <optional>
#include <set>

#include "checkpoint/tensor_scan.hpp"
#include "checkpoint/value_data.hpp"
#include "format/torch_archive.hpp"
#include "util/byte_reader.hpp"
#include "util/error.hpp"
#include "util/mapped_file.hpp"

namespace ckpt::checkpoint::zero {
namespace fs = std::filesystem;
using pickle::Graph;
using pickle::Kind;
using pickle::NodeId;

namespace {

// A world larger than any run (DeepSpeed's largest published runs use a few thousand ranks): a file claiming more
// is refused before anything is sized by it.
constexpr std::int64_t kMaxWorldSize = 1 << 16;
constexpr std::uint64_t kMaxLatestSize = 4096;

// ---- reading values of one file's graph, every failure naming the file and the key path ----

class Values {
 public:
  explicit Values(const Source& s) : s_(s), g_(s.graph()) {}

  [[noreturn]] void fail(const std::string& where, const std::string& what) const {
    throw Error(ErrorKind::corrupt, s_.path, where, what);
  }
  const Graph& graph() const { return g_; }
  const Source& source() const { return s_; }

  NodeId dict(NodeId id, const std::string& where) const {
    if (!g_.is(id, Kind::dict)) fail(where, "is not a dict");
    return id;
  }
  NodeId key(NodeId dict_id, const std::string& key, const std::string& where) const {
    dict(dict_id, where);
    const NodeId* value = g_.dict_get(dict_id, key);
    if (value == nullptr) fail(where + "[\"" + key + "\"]", "is missing");
    return *value;
  }
  std::optional<NodeId> optional_key(NodeId dict_id, const std::string& key) const {
    const NodeId* value = g_.is(dict_id, Kind::dict) ? g_.dict_get(dict_id, key) : nullptr;
    if (value == nullptr || g_.is(*value, Kind::none)) return std::nullopt;
    return *value;
  }
  std::int64_t integer(NodeId id, const std::string& where) const {
    if (!g_.is(id, Kind::integer)) fail(where, "is not an integer");
    return g_.at(id).integer;
  }
  const std::string& string(NodeId id, const std::string& where) const {
    if (!g_.is(id, Kind::string)) fail(where, "is not a string");
    return g_.at(id).text;
  }
  const std::vector<NodeId>& list(NodeId id, const std::string& where) const {
    if (!g_.is(id, Kind::list) && !g_.is(id, Kind::tuple)) fail(where, "is not a list");
    return g_.at(id).items;
  }
  // A dict's entries with string keys, in order.
  std::vector<std::pair<std::string, NodeId>> entries(NodeId id, const std::string& where) const {
    const auto& items = g_.at(dict(id, where)).items;
    std::vector<std::pair<std::string, NodeId>> out;
    for (std::size_t i = 0; i + 1 < items.size(); i += 2)
      out.emplace_back(string(items[i], where + " key"), items[i + 1]);
    return out;
  }
  std::vector<std::int64_t> shape(NodeId id, const std::string& where) const {
    std::vector<std::int64_t> dims;
    for (NodeId d : list(id, where)) {
      const std::int64_t n = integer(d, where);
      if (n < 0) fail(where, "has a negative dimension");
      dims.push_back(n);
    }
    if (!torch_archive::numel(dims)) fail(where, "has more elements than 2^64");
    return dims;
  }
  // A tensor whose elements lie one after another in its storage (what DeepSpeed saves), of `dtype` when given.
  const pickle::TensorRef& tensor(NodeId id, const std::string& where,
                                  std::optional<DType> dtype = std::nullopt) const {
    if (!g_.is(id, Kind::tensor)) fail(where, "is not a tensor");
    const auto& t = g_.tensors[static_cast<std::size_t>(g_.at(id).integer)];
    if (dtype && t.dtype != *dtype)
      fail(where, "is " + std::string(torch_name(t.dtype)) + ", not " + std::string(torch_name(*dtype)));
    if (*torch_archive::numel(t.shape) > 1 && t.stride != contiguous_strides(t.shape))
      throw Error(ErrorKind::unsupported, s_.path, where, "is not a contiguous tensor");
    return t;
  }
  // The elements [first, first + count) of a contiguous tensor, as a piece of the mapped file.
  Piece piece(const pickle::TensorRef& t, std::uint64_t first, std::uint64_t count) const {
    const std::size_t es = element_size(t.dtype);
    const std::uint64_t offset =
        s_.storage_offsets[t.storage] + (static_cast<std::uint64_t>(t.storage_offset) + first) * es;
    return Piece{&s_.file(), offset, count, t.dtype};
  }

 private:
  const Source& s_;
  const Graph& g_;
};

std::uint64_t numel_of(const std::vector<std::int64_t>& shape) { return *torch_archive::numel(shape); }

std::uint64_t add(const Values& v, std::uint64_t a, std::uint64_t b, const std::string& where) {
  std::uint64_t sum = 0;
  if (!checked_add(a, b, sum)) v.fail(where, "element counts overflow");
  return sum;
}

std::uint64_t ceil_div(std::uint64_t n, std::uint64_t d) { return n / d + (n % d != 0); }

// The stage of `zero_stage`: an int, ZeroStageEnum(n) pickled by value, or the member pickled by name (which the
// unpickler reads as the global `ZeroStageEnum.<member>`).
int stage_of(const Values& v, NodeId id, const std::string& where) {
  const Graph& g = v.graph();
  if (g.is(id, Kind::integer)) return static_cast<int>(std::clamp<std::int64_t>(g.at(id).integer, -1, 99));
  if (g.is(id, Kind::object)) {
    const auto& items = g.at(id).items;
    const NodeId callable = items[pickle::object_callable];
    if (g.is(callable, Kind::global) && g.global_name(callable).ends_with(".ZeroStageEnum")) {
      const auto& args = g.at(items[pickle::object_args]).items;
      if (args.size() == 1 && g.is(args[0], Kind::integer))
        return static_cast<int>(std::clamp<std::int64_t>(g.at(args[0]).integer, -1, 99));
    }
  }
  if (g.is(id, Kind::global)) {
    static const std::map<std::string, int> members = {
        {"disabled", 0}, {"optimizer_states", 1}, {"gradients", 2}, {"weights", 3}, {"max_stage", 3}};
    const std::string name = g.global_name(id);
    const auto dot = name.rfind('.');
    if (name.find(".ZeroStageEnum.") != std::string::npos && members.count(name.substr(dot + 1)))
      return members.at(name.substr(dot + 1));
  }
  v.fail(where, "is not a ZeRO stage");
}

// ---- the files of the tag directory ----

struct TagFiles {
  std::map<std::int64_t, std::string> optim;         // rank -> file name
  std::map<std::int64_t, std::string> stage3_model;  // rank -> file name
  bool stage12_model = false;
  std::string optim_prefix;  // "bf16_" or ""
};

// `zero_pp_rank_<r>_mp_rank_00_<suffix>` (with an optional `bf16_` before it for optim states): the rank r.
std::optional<std::int64_t> rank_in(const std::string& name, const std::string& prefix, const std::string& suffix) {
  if (!name.starts_with(prefix) || !name.ends_with(suffix) || name.size() <= prefix.size() + suffix.size())
    return std::nullopt;
  const std::string digits = name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());
  if (digits.size() > 1 && digits[0] == '0') return std::nullopt;
  std::int64_t rank = -1;
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), rank);
  if (ec != std::errc() || end != digits.data() + digits.size() || rank < 0) return std::nullopt;
  return rank;
}

TagFiles list_tag(const std::string& tag_dir) {
  TagFiles files;
  std::optional<std::string> optim_prefix;
  std::error_code ec;
  for (fs::directory_iterator it(tag_dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name == "mp_rank_00_model_states.pt") {
      files.stage12_model = true;
    } else if (auto r = rank_in(name, "zero_pp_rank_", "_mp_rank_00_model_states.pt")) {
      files.stage3_model[*r] = name;
    } else {
      for (const char* prefix : {"zero_pp_rank_", "bf16_zero_pp_rank_"}) {
        auto rank = rank_in(name, prefix, "_mp_rank_00_optim_states.pt");
        if (!rank) continue;
        if (optim_prefix && *optim_prefix != prefix)
          throw Error(ErrorKind::corrupt, tag_dir, "",
                      "holds optimizer states with two prefixes (" + *optim_prefix + " and " + prefix + ")");
        optim_prefix = prefix;
        files.optim_prefix = *optim_prefix == "bf16_zero_pp_rank_" ? "bf16_" : "";
        files.optim[*rank] = name;
      }
    }
  }
  if (ec) throw Error(ErrorKind::io, tag_dir, "", "cannot list directory: " + ec.message());
  return files;
}

// The tag `latest` names, checked to be a directory inside the checkpoint.
std::string read_latest(const std::string& dir) {
  const std::string path = (fs::path(dir) / kLatestName).string();
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) throw Error(ErrorKind::corrupt, path, "", "is missing");
  if (!S_ISREG(st.st_mode))
    throw Error(ErrorKind::corrupt, path, "", std::string("is ") + file_type_name(st.st_mode) + ", not a file");
  if (static_cast<std::uint64_t>(st.st_size) > kMaxLatestSize)
    throw Error(ErrorKind::corrupt, path, "", "is " + std::to_string(st.st_size) + " bytes, not a tag name");
  std::string text(static_cast<std::size_t>(st.st_size), '\0');
  ReadOnlyFile(path).read_at(0, {reinterpret_cast<std::uint8_t*>(text.data()), text.size()});
  const auto first = text.find_first_not_of(" \t\r\n");
  const std::string tag =
      first == std::string::npos ? "" : text.substr(first, text.find_last_not_of(" \t\r\n") + 1 - first);
  if (tag.empty() || tag == "." || tag == ".." || tag.find_first_of(std::string("/\\\0", 3)) != std::string::npos)
    throw Error(ErrorKind::corrupt, path, "", "names '" + tag + "', not a directory inside the checkpoint");
  const std::string tag_dir = (fs::path(dir) / tag).string();
  if (::lstat(tag_dir.c_str(), &st) != 0)
    throw Error(ErrorKind::corrupt, path, "", "names tag '" + tag + "', which is not there");
  if (!S_ISDIR(st.st_mode))
    throw Error(ErrorKind::corrupt, path, "", "names tag '" + tag + "', which is " + file_type_name(st.st_mode));
  return tag;
}

// The N of a `global_step<N>` tag (the engine's default name, which the Trainer uses); nullopt for another tag.
std::optional<std::int64_t> checkpoint_step_of_tag(const std::string& tag) { return rank_in(tag, "global_step", ""); }

// ---- stage 1/2 and stage 3 partitions ----

// A run of fp32 elements of one rank's flat master tensor, with the Adam moments beside it (null when absent).
struct Flat {
  const Values* values = nullptr;
  const pickle::TensorRef* master = nullptr;
  const pickle::TensorRef* moments[2] = {nullptr, nullptr};
  std::uint64_t count = 0;  // elements used, from the start of the tensors
};

// The pieces of elements [begin, begin + count) of the concatenation of `flats` (0: master, 1, 2: the moments).
std::vector<Piece> cut(const std::vector<Flat>& flats, std::uint64_t begin, std::uint64_t count, int which) {
  std::vector<Piece> pieces;
  for (const Flat& f : flats) {
    if (count == 0) break;
    if (begin >= f.count) {
      begin -= f.count;
      continue;
    }
    const std::uint64_t n = std::min(count, f.count - begin);
    const pickle::TensorRef* t = which == 0 ? f.master : f.moments[which - 1];
    pieces.push_back(f.values->piece(*t, begin, n));
    begin = 0;
    count -= n;
  }
  return pieces;
}

// Where a trainable parameter's elements are: stages 1/2 in its group's ranks one after another, stage 3 a
// `per_rank` slice at `offset` of every rank's sub-groups.
struct Placement {
  std::size_t group = 0;
  std::uint64_t offset = 0;
};

const char* moment_key(int which) { return which == 1 ? "exp_avg" : "exp_avg_sq"; }

}  // namespace

bool has_layout(const std::string& dir) {
  struct stat st {};
  return ::lstat((fs::path(dir) / kLatestName).c_str(), &st) == 0;
}

class Reader {
 public:
  Reader(Checkpoint& c, const std::string& dir) : c_(c), dir_(dir) {}

  void read() {
    c_.tag_ = read_latest(dir_);
    tag_dir_ = (fs::path(dir_) / c_.tag_).string();
    const TagFiles files = list_tag(tag_dir_);
    if (files.optim.empty())
      throw Error(ErrorKind::corrupt, tag_dir_, "", "holds no optimizer states (*_optim_states.pt)");
    // Rank 0's optimizer states say the stage and how many ranks there are.
    if (!files.optim.count(0)) throw Error(ErrorKind::corrupt, tag_dir_, "", "has no optimizer states of rank 0");
    optim_values_.push_back(open(files.optim.at(0), c_.optim_));
    const Values& v0 = *optim_values_[0];
    const NodeId osd0 = v0.key(v0.graph().root(), "optimizer_state_dict", "");
    if (!v0.graph().dict_get(osd0, "zero_stage"))
      throw Error(ErrorKind::unsupported, v0.source().path, "optimizer_state_dict",
                  "has no zero_stage: DeepSpeed's BF16_Optimizer or another optimizer this reader does not know");
    c_.stage_ =
        stage_of(v0, v0.key(osd0, "zero_stage", "optimizer_state_dict"), "optimizer_state_dict[\"zero_stage\"]");
    if (c_.stage_ < 1 || c_.stage_ > 3) v0.fail("optimizer_state_dict[\"zero_stage\"]", "is no ZeRO stage 1, 2 or 3");
    c_.world_ = static_cast<int>(partition_count(v0, osd0));
    for (std::int64_t r = 0; r < c_.world_; ++r) {
      if (!files.optim.count(r)) {
        missing(files.optim_prefix + "zero_pp_rank_" + std::to_string(r) + "_mp_rank_00_optim_states.pt",
                "partition_count is " + std::to_string(c_.world_));
      }
    }
    if (files.optim.size() != static_cast<std::size_t>(c_.world_))
      throw Error(ErrorKind::corrupt, tag_dir_, "",
                  "holds optimizer states of " + std::to_string(files.optim.size()) +
                      " ranks, but partition_count is " + std::to_string(c_.world_));
    for (std::int64_t r = 1; r < c_.world_; ++r) optim_values_.push_back(open(files.optim.at(r), c_.optim_));
    if (c_.stage_ == 3) {
      for (std::int64_t r = 0; r < c_.world_; ++r) {
        if (!files.stage3_model.count(r))
          missing("zero_pp_rank_" + std::to_string(r) + "_mp_rank_00_model_states.pt",
                  "stage 3 has one per rank, partition_count is " + std::to_string(c_.world_));
        model_values_.push_back(open(files.stage3_model.at(r), c_.model_));
      }
    } else {
      if (!files.stage12_model) missing("mp_rank_00_model_states.pt", "rank 0 writes it under stages 1 and 2");
      model_values_.push_back(open("mp_rank_00_model_states.pt", c_.model_));
    }
    read_model_states();
    for (std::int64_t r = 0; r < c_.world_; ++r) check_rank_agrees(r);
    if (c_.stage_ == 3)
      read_stage3();
    else
      read_stage12();
    assemble();
  }

 private:
  // A file of the tag directory that its other files promise.
  [[noreturn]] void missing(const std::string& name, const std::string& why) const {
    throw Error(ErrorKind::corrupt, (fs::path(tag_dir_) / name).string(), "", "is missing (" + why + ")");
  }

  std::unique_ptr<Values> open(const std::string& name, std::vector<std::unique_ptr<Source>>& into) {
    const std::string path = (fs::path(tag_dir_) / name).string();
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0) missing(name, "listed a moment ago");
    if (!S_ISREG(st.st_mode))  // a symlink is not followed out of the checkpoint, a FIFO never waited on
      throw Error(ErrorKind::corrupt, path, "", std::string("is ") + file_type_name(st.st_mode) + ", not a file");
    into.push_back(load_source(path));
    if (into.back()->safetensors) throw Error(ErrorKind::corrupt, path, "", "is not a torch.save file");
    return std::make_unique<Values>(*into.back());
  }

  std::int64_t partition_count(const Values& v, NodeId osd) const {
    const std::string where = "optimizer_state_dict[\"partition_count\"]";
    const NodeId node = v.key(osd, "partition_count", "optimizer_state_dict");
    std::int64_t count = 0;
    if (v.graph().is(node, Kind::integer)) {
      count = v.integer(node, where);
    } else {
      const auto& items = v.list(node, where);
      if (items.empty()) v.fail(where, "is empty");
      for (NodeId item : items) count = std::max(count, v.integer(item, where));
    }
    if (count < 1 || count > kMaxWorldSize)
      v.fail(where, "is " + std::to_string(count) + ", not a world size of 1 to " + std::to_string(kMaxWorldSize));
    return count;
  }

  // Rank r's files agree with rank 0's on stage, world size and version.
  void check_rank_agrees(std::int64_t r) {
    const Values& v = *optim_values_[static_cast<std::size_t>(r)];
    const NodeId osd = v.key(v.graph().root(), "optimizer_state_dict", "");
    const int stage =
        stage_of(v, v.key(osd, "zero_stage", "optimizer_state_dict"), "optimizer_state_dict[\"zero_stage\"]");
    if (stage != c_.stage_)
      v.fail("optimizer_state_dict[\"zero_stage\"]",
             "is " + std::to_string(stage) + ", but rank 0's is " + std::to_string(c_.stage_));
    if (partition_count(v, osd) != c_.world_)
      v.fail("optimizer_state_dict[\"partition_count\"]", "differs from rank 0's (" + std::to_string(c_.world_) + ")");
    if (const auto version = v.optional_key(v.graph().root(), "ds_version")) {
      if (v.string(*version, "ds_version") != c_.ds_version_)
        v.fail("ds_version", "is " + v.graph().at(*version).text + ", but the model states' is " + c_.ds_version_);
    }
    RankFiles rank;
    rank.optim = v.source().path;
    rank.bytes = v.source().file().size();
    if (c_.stage_ == 3 || r == 0) {
      const Source& model = *c_.model_[c_.stage_ == 3 ? static_cast<std::size_t>(r) : 0];
      rank.model = model.path;
      rank.bytes += model.file().size();
    }
    c_.ranks_.push_back(rank);
  }

  // Rank 0's model states (stage 3: every rank's, which must agree on the parameters).
  void read_model_states() {
    const Values& m = *model_values_[0];
    const NodeId root = m.graph().root();
    c_.ds_version_ = m.string(m.key(root, "ds_version", ""), "ds_version");
    c_.global_steps_ = m.integer(m.key(root, "global_steps", ""), "global_steps");
    if (const auto tag_step = checkpoint_step_of_tag(c_.tag_); tag_step && *tag_step != c_.global_steps_)
      m.fail("global_steps", "is " + std::to_string(c_.global_steps_) + ", but the tag is " + c_.tag_);
    const std::int64_t dp = m.integer(m.key(root, "dp_world_size", ""), "dp_world_size");
    if (dp != c_.world_)
      m.fail("dp_world_size", "is " + std::to_string(dp) + ", but there are " + std::to_string(c_.world_) +
                                  " partitions (partition_count)");
    if (const auto mp = m.optional_key(root, "mp_world_size"); mp && m.integer(*mp, "mp_world_size") != 1)
      throw Error(ErrorKind::unsupported, m.source().path, "mp_world_size", "model parallelism is not supported");
    if (const auto scheduler = m.optional_key(root, "lr_scheduler")) c_.lr_scheduler_ = *scheduler;

    const NodeId module = m.key(root, "module", "");
    std::set<std::string> buffer_names;
    for (NodeId id : m.list(m.key(root, "buffer_names", ""), "buffer_names"))
      buffer_names.insert(m.string(id, "buffer_names"));
    bool dtype_known = false;
    for (const auto& [name, value] : m.entries(module, "module")) {
      const std::string where = "module[\"" + name + "\"]";
      if (!m.graph().is(value, Kind::tensor)) m.fail(where, "is not a tensor");
      const auto& t = m.tensor(value, where);
      if (!dtype_known && is_floating(t.dtype) && !buffer_names.count(name)) {
        c_.model_dtype_ = t.dtype;
        dtype_known = true;
      }
      if (!buffer_names.count(name)) continue;
      claim(m, name, where);
      c_.buffers_.push_back({name, t.shape, numel_of(t.shape)});
      buffer_tensors_.push_back(&t);
    }

    // Trainable parameters by group (stage 3: by sub-group), from every rank's param_shapes for stage 3.
    const auto& shape_groups = m.list(m.key(root, "param_shapes", ""), "param_shapes");
    for (std::size_t k = 0; k < shape_groups.size(); ++k) {
      const std::string where = "param_shapes[" + std::to_string(k) + "]";
      ParamGroup group;
      for (const auto& [name, shape] : m.entries(shape_groups[k], where)) {
        claim(m, name, where);
        Parameter p{name, m.shape(shape, where + "[\"" + name + "\"]"), 0};
        p.numel = numel_of(p.shape);
        group.numel = add(m, group.numel, p.numel, where);
        group.parameters.push_back(std::move(p));
      }
      shape_groups_.push_back(std::move(group));
    }
    for (std::size_t r = 1; r < model_values_.size(); ++r) {
      const Values& other = *model_values_[r];
      const auto& theirs = other.list(other.key(other.graph().root(), "param_shapes", ""), "param_shapes");
      bool same = theirs.size() == shape_groups_.size();
      for (std::size_t k = 0; same && k < theirs.size(); ++k) {
        const auto entries = other.entries(theirs[k], "param_shapes");
        same = entries.size() == shape_groups_[k].parameters.size();
        for (std::size_t i = 0; same && i < entries.size(); ++i)
          same = entries[i].first == shape_groups_[k].parameters[i].name;
      }
      if (!same) other.fail("param_shapes", "differs from rank 0's");
      const std::int64_t steps = other.integer(other.key(other.graph().root(), "global_steps", ""), "global_steps");
      if (steps != c_.global_steps_)
        other.fail("global_steps",
                   "is " + std::to_string(steps) + ", but rank 0's is " + std::to_string(c_.global_steps_));
    }

    // Frozen parameters: stage 2 whole in rank 0's file, stage 3 one partition per rank.
    if (const auto frozen_shapes = m.optional_key(root, "frozen_param_shapes")) {
      for (const auto& [name, shape] : m.entries(*frozen_shapes, "frozen_param_shapes")) {
        const std::string where = "frozen_param_shapes[\"" + name + "\"]";
        claim(m, name, where);
        Parameter p{name, m.shape(shape, where), 0};
        p.numel = numel_of(p.shape);
        c_.frozen_.push_back(std::move(p));
      }
    }
    for (const Parameter& p : c_.frozen_) {
      std::vector<Piece> pieces;
      const std::uint64_t per_rank = c_.stage_ == 3 ? ceil_div(p.numel, c_.world_) : p.numel;
      for (std::size_t r = 0; r < model_values_.size(); ++r) {
        const Values& v = *model_values_[r];
        const std::string where = "frozen_param_fragments[\"" + p.name + "\"]";
        const auto fragments = v.optional_key(v.graph().root(), "frozen_param_fragments");
        if (!fragments) v.fail("frozen_param_fragments", "is missing, but frozen_param_shapes names parameters");
        const auto& t = v.tensor(v.key(*fragments, p.name, "frozen_param_fragments"), where, c_.model_dtype_);
        if (numel_of(t.shape) != per_rank)
          v.fail(where, "holds " + std::to_string(numel_of(t.shape)) + " elements, not " + std::to_string(per_rank));
        const std::uint64_t begin = r * per_rank;
        if (begin < p.numel) pieces.push_back(v.piece(t, 0, std::min(per_rank, p.numel - begin)));
      }
      frozen_pieces_.push_back(std::move(pieces));
    }

    // Tied names, only in rank 0's file: alias -> the first name of the same parameter.
    if (const auto shared = m.optional_key(root, "shared_params")) {
      for (const auto& [alias, target] : m.entries(*shared, "shared_params")) {
        const std::string where = "shared_params[\"" + alias + "\"]";
        c_.shared_.emplace_back(alias, m.string(target, where));
        if (names_.count(alias)) m.fail(where, "names a parameter the checkpoint also holds under that name");
      }
      std::set<std::string> aliases;
      for (const auto& [alias, target] : c_.shared_) {
        if (!aliases.insert(alias).second) m.fail("shared_params", "names '" + alias + "' twice");
      }
    }
  }

  // A name of the state dict, once.
  void claim(const Values& v, const std::string& name, const std::string& where) {
    if (!names_.insert(name).second) v.fail(where, "names '" + name + "' a second time");
  }

  // Stages 1/2: one torch param group per DeepSpeed group; each rank holds a lean partition of every group.
  void read_stage12() {
    const std::size_t groups = shape_groups_.size();
    flats_.assign(groups, {});
    for (std::int64_t r = 0; r < c_.world_; ++r) {
      const Values& v = *optim_values_[static_cast<std::size_t>(r)];
      const NodeId osd = v.key(v.graph().root(), "optimizer_state_dict", "");
      const auto& partitions = v.list(v.key(osd, "single_partition_of_fp32_groups", "optimizer_state_dict"),
                                      "single_partition_of_fp32_groups");
      const auto& paddings = v.list(v.key(osd, "group_paddings", "optimizer_state_dict"), "group_paddings");
      if (partitions.size() != groups || paddings.size() != groups)
        v.fail("single_partition_of_fp32_groups",
               "has " + std::to_string(partitions.size()) + " groups, but param_shapes has " + std::to_string(groups));
      const NodeId base = v.key(osd, "base_optimizer_state", "optimizer_state_dict");
      if (!v.graph().is(base, Kind::dict))
        throw Error(ErrorKind::unsupported, v.source().path, "base_optimizer_state",
                    "is not a torch optimizer state dict (an elastic checkpoint?)");
      const NodeId state = v.key(base, "state", "base_optimizer_state");
      const auto& param_groups = v.list(v.key(base, "param_groups", "base_optimizer_state"), "param_groups");
      if (param_groups.size() != groups)
        v.fail("base_optimizer_state[\"param_groups\"]", "has " + std::to_string(param_groups.size()) +
                                                             " groups, but param_shapes has " + std::to_string(groups));
      std::uint64_t held = 0;
      for (std::size_t g = 0; g < groups; ++g) {
        const std::string where = "single_partition_of_fp32_groups[" + std::to_string(g) + "]";
        Flat f{&v, &v.tensor(partitions[g], where, DType::float32), {nullptr, nullptr}, 0};
        f.count = numel_of(f.master->shape);
        const std::int64_t padding = v.integer(paddings[g], "group_paddings");
        std::uint64_t padded = 0;
        if (padding < 0 || !checked_add(f.count, static_cast<std::uint64_t>(padding), padded))
          v.fail("group_paddings", "is not a padding");
        // Every rank's padded partition has the same size; the padding lies past the group's last element, so rank
        // r pads min(size, max(0, (r + 1) * size - numel)) elements (docs/deepspeed-format.md "Partitioning").
        if (r == 0) partition_sizes_.push_back(padded);
        const std::uint64_t size = partition_sizes_[g];
        if (padded != size)
          v.fail(where, "holds " + std::to_string(f.count) + " + " + std::to_string(padding) +
                            " padding elements, but rank 0's partition is " + std::to_string(size));
        std::uint64_t end = 0;  // of the rank's partition in the group's flat buffer
        const std::uint64_t numel = shape_groups_[g].numel;
        const bool fits = checked_mul(size, static_cast<std::uint64_t>(r) + 1, end);
        const std::uint64_t expected = !fits ? size : std::min(size, end > numel ? end - numel : 0);
        if (static_cast<std::uint64_t>(padding) != expected)
          v.fail("group_paddings[" + std::to_string(g) + "]",
                 "is " + std::to_string(padding) + ", but a partition of " + std::to_string(size) +
                     " elements of rank " + std::to_string(r) + " in a group of " + std::to_string(numel) + " pads " +
                     std::to_string(expected));
        read_moments(v, state, g, f, partition_sizes_[g]);
        if (r == 0) {
          c_.param_group_nodes_.push_back(param_groups[g]);
          group_steps_.push_back(step_node(v, state, g));
        }
        held = add(v, held, f.count, where);
        flats_[g].push_back(f);
      }
      c_.ranks_[static_cast<std::size_t>(r)].partition_numel = held;
    }
    for (std::size_t g = 0; g < groups; ++g) {
      std::uint64_t available = 0;
      for (const Flat& f : flats_[g]) available += f.count;  // bounded by the files' sizes
      const ParamGroup& group = shape_groups_[g];
      if (available != group.numel) {
        throw Error(ErrorKind::corrupt, c_.optim_[0]->path,
                    "single_partition_of_fp32_groups[" + std::to_string(g) + "]",
                    "the ranks' partitions hold " + std::to_string(available) +
                        " elements, but the group's parameters (param_shapes[" + std::to_string(g) + "]) have " +
                        std::to_string(group.numel));
      }
      std::uint64_t offset = 0;
      for (const Parameter& p : group.parameters) {
        placements_.push_back({g, offset});
        offset += p.numel;
      }
      ParamGroup out = group;
      out.hyperparameters = hyperparameters(*optim_values_[0], c_.param_group_nodes_[g]);
      c_.groups_.push_back(std::move(out));
    }
  }

  // Stage 3: every parameter cut in world equal slices; each rank's slices of a sub-group lie one after another.
  void read_stage3() {
    const std::size_t sub_groups = shape_groups_.size();
    flats_.assign(static_cast<std::size_t>(c_.world_), {});
    std::uint64_t per_rank_total = 0;
    for (const ParamGroup& sub : shape_groups_) {
      for (const Parameter& p : sub.parameters) {
        placements_.push_back({0, per_rank_total});
        per_rank_total = add(*model_values_[0], per_rank_total, ceil_div(p.numel, c_.world_), "param_shapes");
      }
    }
    for (std::int64_t r = 0; r < c_.world_; ++r) {
      const Values& v = *optim_values_[static_cast<std::size_t>(r)];
      const NodeId osd = v.key(v.graph().root(), "optimizer_state_dict", "");
      const auto& flat_groups = v.list(v.key(osd, "fp32_flat_groups", "optimizer_state_dict"), "fp32_flat_groups");
      if (flat_groups.size() != sub_groups)
        v.fail("fp32_flat_groups", "has " + std::to_string(flat_groups.size()) + " sub-groups, but param_shapes has " +
                                       std::to_string(sub_groups));
      const NodeId torch_state = v.key(osd, "optimizer_state_dict", "optimizer_state_dict");
      const NodeId state = v.key(torch_state, "state", "optimizer_state_dict[\"optimizer_state_dict\"]");
      std::uint64_t held = 0;
      for (std::size_t s = 0; s < sub_groups; ++s) {
        const std::string where = "fp32_flat_groups[" + std::to_string(s) + "]";
        Flat f{&v, &v.tensor(flat_groups[s], where, DType::float32), {nullptr, nullptr}, 0};
        f.count = numel_of(f.master->shape);
        read_moments(v, state, s, f, f.count);
        held = add(v, held, f.count, where);
        flats_[static_cast<std::size_t>(r)].push_back(f);
      }
      if (held != per_rank_total)
        v.fail("fp32_flat_groups", "holds " + std::to_string(held) + " elements, but the parameters' partitions (" +
                                       "param_shapes) need " + std::to_string(per_rank_total));
      c_.ranks_[static_cast<std::size_t>(r)].partition_numel = held;
      if (r == 0) read_stage3_groups(v, torch_state, state);
    }
  }

  // Stage 3's torch param groups, each naming its sub-groups.
  void read_stage3_groups(const Values& v, NodeId torch_state, NodeId state) {
    const std::string where = "optimizer_state_dict[\"optimizer_state_dict\"][\"param_groups\"]";
    std::vector<bool> used(shape_groups_.size(), false);
    for (NodeId group : v.list(v.key(torch_state, "param_groups", where), where)) {
      ParamGroup out;
      std::optional<OptimizerEntry> step;
      for (NodeId index : v.list(v.key(group, "params", where), where + " params")) {
        const std::int64_t s = v.integer(index, where + " params");
        if (s < 0 || static_cast<std::size_t>(s) >= used.size() || used[static_cast<std::size_t>(s)])
          v.fail(where, "names sub-group " + std::to_string(s) + " twice or out of range");
        used[static_cast<std::size_t>(s)] = true;
        const ParamGroup& sub = shape_groups_[static_cast<std::size_t>(s)];
        out.parameters.insert(out.parameters.end(), sub.parameters.begin(), sub.parameters.end());
        out.numel += sub.numel;  // sums of parts whose total was checked
        if (!step) step = step_node(v, state, static_cast<std::size_t>(s));
      }
      out.hyperparameters = hyperparameters(v, group);
      c_.param_group_nodes_.push_back(group);
      group_steps_.push_back(step.value_or(OptimizerEntry{}));
      c_.groups_.push_back(std::move(out));
    }
    if (std::find(used.begin(), used.end(), false) != used.end())
      v.fail(where, "leaves a sub-group of param_shapes in no param group");
  }

  // The Adam moments of state[index], when the optimizer kept them: at least `count` fp32 elements each.
  void read_moments(const Values& v, NodeId state, std::size_t index, Flat& f, std::uint64_t count) {
    const std::string key = std::to_string(index);
    const NodeId* entry = nullptr;
    if (v.graph().is(state, Kind::dict)) {
      const auto& items = v.graph().at(state).items;
      for (std::size_t i = 0; i + 1 < items.size(); i += 2) {
        if (v.graph().is(items[i], Kind::integer) && v.graph().at(items[i]).integer == static_cast<std::int64_t>(index))
          entry = &items[i + 1];
      }
    }
    for (int which = 1; which <= 2; ++which) {
      const NodeId* moment = entry ? v.graph().dict_get(*entry, moment_key(which)) : nullptr;
      if (moment == nullptr) {
        c_.no_optimizer_state_ = v.source().path + ": state[" + key + "] holds no " + moment_key(which);
        continue;
      }
      const std::string where = "state[" + key + "][\"" + moment_key(which) + "\"]";
      const auto& t = v.tensor(*moment, where, DType::float32);
      if (numel_of(t.shape) != count)
        v.fail(where, "holds " + std::to_string(numel_of(t.shape)) + " elements, not " + std::to_string(count));
      f.moments[which - 1] = &t;
    }
  }

  // The `step` of state[index]: a one-element tensor as a piece of its file, else the value as it is.
  OptimizerEntry step_node(const Values& v, NodeId state, std::size_t index) {
    OptimizerEntry step;
    const auto& items = v.graph().is(state, Kind::dict) ? v.graph().at(state).items : std::vector<NodeId>{};
    for (std::size_t i = 0; i + 1 < items.size(); i += 2) {
      if (!v.graph().is(items[i], Kind::integer) || v.graph().at(items[i]).integer != static_cast<std::int64_t>(index))
        continue;
      const NodeId* node = v.graph().dict_get(items[i + 1], "step");
      if (node == nullptr) continue;
      if (v.graph().is(*node, Kind::tensor)) {
        const std::string where = "state[" + std::to_string(index) + "][\"step\"]";
        const auto& t = v.tensor(*node, where);
        if (numel_of(t.shape) != 1 || !is_floating(t.dtype)) v.fail(where, "is not one number");
        step.step = AssembledTensor{"step", t.dtype, t.shape, {v.piece(t, 0, 1)}, std::nullopt};
      } else {
        step.step_source = &v.source();
        step.step_node = *node;
      }
    }
    return step;
  }

  json::Json hyperparameters(const Values& v, NodeId group) {
    json::Json out = json::Json::object();
    for (const auto& [key, value] : v.entries(group, "param_groups")) {
      if (key == "params") continue;
      out[key] = to_data(v.graph(), value);
    }
    return out;
  }

  void assemble() {
    for (std::size_t i = 0; i < c_.buffers_.size(); ++i) {
      const Parameter& b = c_.buffers_[i];
      const auto& t = *buffer_tensors_[i];
      c_.state_dict_.push_back(
          {b.name, DType::float32, b.shape, {model_values_[0]->piece(t, 0, b.numel)}, std::nullopt});
      if (b.numel == 0) c_.state_dict_.back().pieces.clear();
    }
    for (std::size_t i = 0; i < c_.frozen_.size(); ++i) {
      const Parameter& p = c_.frozen_[i];
      c_.state_dict_.push_back({p.name, c_.model_dtype_, p.shape, frozen_pieces_[i], std::nullopt});
    }
    std::map<std::string, Placement> placement_of;
    std::size_t k = 0;
    for (const ParamGroup& sub : shape_groups_) {
      for (const Parameter& p : sub.parameters) {
        const Placement& where = placements_[k++];
        placement_of.emplace(p.name, where);
        c_.state_dict_.push_back({p.name, DType::float32, p.shape, pieces(p, where, 0), std::nullopt});
      }
    }
    for (const auto& [alias, target] : c_.shared_) {
      if (names_.count(target)) c_.state_dict_.push_back({alias, DType::float32, {}, {}, target});
    }
    if (!c_.no_optimizer_state_.empty()) return;
    // The optimizer's entries in its groups' order (stage 3's groups may list their sub-groups in any order), each
    // with its group's step.
    for (std::size_t g = 0; g < c_.groups_.size(); ++g) {
      for (const Parameter& p : c_.groups_[g].parameters) {
        const Placement& where = placement_of.at(p.name);
        OptimizerEntry entry = group_steps_[g];
        entry.exp_avg = {p.name, DType::float32, p.shape, pieces(p, where, 1), std::nullopt};
        entry.exp_avg_sq = {p.name, DType::float32, p.shape, pieces(p, where, 2), std::nullopt};
        c_.optimizer_.push_back(std::move(entry));
      }
    }
  }

  std::vector<Piece> pieces(const Parameter& p, const Placement& where, int which) const {
    if (c_.stage_ != 3) return cut(flats_[where.group], where.offset, p.numel, which);
    std::vector<Piece> out;
    const std::uint64_t per_rank = ceil_div(p.numel, c_.world_);
    for (std::size_t r = 0; r < flats_.size() && r * per_rank < p.numel; ++r) {
      auto run = cut(flats_[r], where.offset, std::min(per_rank, p.numel - r * per_rank), which);
      out.insert(out.end(), run.begin(), run.end());
    }
    return out;
  }

  Checkpoint& c_;
  std::string dir_;
  std::string tag_dir_;
  std::vector<std::unique_ptr<Values>> optim_values_;
  std::vector<std::unique_ptr<Values>> model_values_;
  std::set<std::string> names_;
  std::vector<ParamGroup> shape_groups_;  // param_shapes: groups (1/2) or sub-groups (3)
  std::vector<std::uint64_t> partition_sizes_;
  std::vector<std::vector<Flat>> flats_;  // stages 1/2: [group][rank]; stage 3: [rank][sub-group]
  std::vector<Placement> placements_;     // per trainable parameter, in param_shapes order
  std::vector<const pickle::TensorRef*> buffer_tensors_;
  std::vector<std::vector<Piece>> frozen_pieces_;
  std::vector<OptimizerEntry> group_steps_;  // only their steps
};

Checkpoint::Checkpoint(const std::string& dir) { Reader(*this, dir).read(); }

std::vector<const Source*> Checkpoint::sources() const {
  std::vector<const Source*> out;
  for (const auto& s : model_) out.push_back(s.get());
  for (const auto& s : optim_) out.push_back(s.get());
  return out;
}

std::uint64_t Checkpoint::trainable_parameters() const {
  std::uint64_t n = 0;
  for (const auto& g : groups_) n += g.numel;  // each checked against the files, which bound it
  return n;
}

std::uint64_t Checkpoint::frozen_parameters() const {
  std::uint64_t n = 0;
  for (const auto& p : frozen_) n += p.numel;  // each a shape's numel whose fragments the files hold
  return n;
}

std::string Checkpoint::describe() const {
  return "deepspeed zero-" + std::to_string(stage_) + " x" + std::to_string(world_);
}

const std::vector<OptimizerEntry>& Checkpoint::optimizer_state() const {
  if (!no_optimizer_state_.empty())
    throw Error(ErrorKind::unsupported, "", "", no_optimizer_state_ + ": not an Adam optimizer state");
  return optimizer_;
}

}  // namespace ckpt::checkpoint::zero
