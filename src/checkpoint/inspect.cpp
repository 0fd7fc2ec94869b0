#include "checkpoint/inspect.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <filesystem>
#include <map>
#include <set>
#include <tuple>
#include <unordered_map>

#include "checkpoint/archive.hpp"
#include "checkpoint/file_kind.hpp"
#include "checkpoint/run_dir.hpp"
#include "checkpoint/shards.hpp"
#include "checkpoint/source.hpp"
#include "checkpoint/tensor_scan.hpp"
#include "checkpoint/value_data.hpp"
#include "format/safetensors.hpp"
#include "format/torch_archive.hpp"
#include "util/mapped_file.hpp"
#include "util/sha256.hpp"

namespace ckpt::checkpoint {
namespace fs = std::filesystem;
using pickle::Graph;
using pickle::Kind;
using pickle::NodeId;

namespace {

std::string base_name(const std::string& path) { return fs::path(path).filename().string(); }

const pickle::TensorRef* tensor_of(const Graph& g, NodeId id) {
  return g.is(id, Kind::tensor) ? &g.tensors[static_cast<std::size_t>(g.at(id).integer)] : nullptr;
}

// ---- classification of a torch.save file by the structure of its root value ----

bool has_keys(const Graph& g, NodeId root, std::initializer_list<std::string_view> keys) {
  return std::all_of(keys.begin(), keys.end(), [&](std::string_view k) { return g.dict_get(root, k) != nullptr; });
}

bool is_rng_state(const Graph& g, NodeId root) {
  static const std::set<std::string> kGenerators = {"python", "numpy", "cpu", "cuda", "mps", "npu",
                                                    "xpu",    "xla",   "hpu", "mlu",  "musa"};
  const pickle::Node& n = g.at(root);
  if (n.kind != Kind::dict || !(g.dict_get(root, "cpu") || g.dict_get(root, "python"))) return false;
  for (std::size_t i = 0; i + 1 < n.items.size(); i += 2) {
    if (!g.is(n.items[i], Kind::string) || !kGenerators.count(g.at(n.items[i]).text)) return false;
  }
  return true;
}

FileKind classify_pickle(const Graph& g, const std::string& file_name) {
  const NodeId root = g.root();
  if (is_state_dict(g)) return FileKind::weights;
  if (g.is(root, Kind::dict)) {
    if (g.at(root).items.empty())
      return file_name.find("scaler") != std::string::npos ? FileKind::scaler : FileKind::pickle;
    const NodeId* state = g.dict_get(root, "state");
    const NodeId* groups = g.dict_get(root, "param_groups");
    if (state && groups && g.is(*state, Kind::dict) && g.is(*groups, Kind::list)) return FileKind::optimizer;
    if (g.dict_get(root, "last_epoch") && (g.dict_get(root, "base_lrs") || g.dict_get(root, "_last_lr")))
      return FileKind::scheduler;
    if (has_keys(g, root, {"scale", "_growth_tracker"})) return FileKind::scaler;
    if (is_rng_state(g, root)) return FileKind::rng_state;
    // ckpt save writes TrainingArguments' keys as a plain dict.
    if (file_name.rfind("training_args", 0) == 0) return FileKind::training_args;
  }
  if (g.is(root, Kind::object)) {
    const NodeId callable = g.at(root).items[pickle::object_callable];
    const std::string cls = g.is(callable, Kind::global) ? g.global_name(callable) : "";
    if (file_name.rfind("training_args", 0) == 0 || cls.ends_with("Arguments")) return FileKind::training_args;
  }
  return FileKind::pickle;
}

// ---- weights ----

// Fills the totals of a weights report from its tensors (tied views counted once); dtypes in order of appearance.
void total_weights(FileReport& report, std::uint64_t storage_bytes, json::Json metadata) {
  struct DTypeTotal {
    DType dtype;
    std::uint64_t count = 0;
    std::uint64_t numel = 0;
  };
  std::vector<DTypeTotal> totals;
  std::uint64_t parameters = 0;
  for (const auto& t : report.tensors) {
    if (t.tied_to) continue;
    const std::uint64_t n = *torch_archive::numel(t.shape);
    parameters += n;
    auto total = std::find_if(totals.begin(), totals.end(), [&](const DTypeTotal& d) { return d.dtype == t.dtype; });
    if (total == totals.end()) total = totals.insert(totals.end(), DTypeTotal{t.dtype});
    ++total->count;
    total->numel += n;
  }
  json::ObjectBuilder dtypes(totals.size());
  for (const auto& d : totals) {
    dtypes.set(std::string(torch_name(d.dtype)),
               {{"count", d.count}, {"numel", d.numel}, {"nbytes", d.numel * element_size(d.dtype)}});
  }
  report.fields["num_tensors"] = report.tensors.size();
  report.fields["num_parameters"] = parameters;
  report.fields["storage_bytes"] = storage_bytes;
  report.fields["dtypes"] = dtypes.take();
  report.fields["metadata"] = std::move(metadata);
}

void summarize_pickled_weights(const Source& file, FileReport& report, const InspectOptions& options) {
  const Graph& g = file.graph();
  const auto& items = g.at(g.root()).items;
  using ViewKey = std::tuple<std::uint32_t, std::int64_t, std::vector<std::int64_t>, std::vector<std::int64_t>>;
  std::map<ViewKey, std::string> first_view;
  std::set<std::uint32_t> storages;
  std::uint64_t storage_bytes = 0;
  for (std::size_t i = 0; i + 1 < items.size(); i += 2) {
    const pickle::TensorRef& t = *tensor_of(g, items[i + 1]);
    TensorSummary s;
    s.name = g.at(items[i]).text;
    s.dtype = t.dtype;
    s.shape = t.shape;
    s.stride = t.stride;
    s.nbytes = *torch_archive::numel(t.shape) * element_size(t.dtype);
    s.storage = g.storages[t.storage].key;
    s.storage_offset = t.storage_offset;
    auto [it, inserted] = first_view.emplace(ViewKey{t.storage, t.storage_offset, t.shape, t.stride}, s.name);
    if (!inserted) s.tied_to = it->second;
    if (storages.insert(t.storage).second) {
      const auto& storage = g.storages[t.storage];
      storage_bytes += storage.untyped ? storage.numel : storage.numel * element_size(storage.dtype);
    }
    if (options.verify && is_floating(t.dtype)) {
      auto c = count_nonfinite(file.tensor_extent(t), t.dtype, t.shape, t.stride);
      s.nonfinite = NonFinite{c.nan, c.inf};
    }
    report.tensors.push_back(std::move(s));
  }
  json::Json metadata = json::Json::object();
  total_weights(report, storage_bytes, std::move(metadata));
}

void summarize_safetensors(const MappedFile& file, const safetensors::Header& header, FileReport& report,
                           const InspectOptions& options) {
  for (const auto& t : header.tensors) {
    TensorSummary s;
    s.name = t.name;
    s.dtype = t.dtype;
    s.shape = t.shape;
    s.stride = contiguous_strides(t.shape);
    s.nbytes = t.end - t.begin;
    if (options.verify && is_floating(t.dtype)) {
      auto c = count_nonfinite(safetensors::tensor_bytes(file.bytes(), header, t), t.dtype, s.shape, s.stride);
      s.nonfinite = NonFinite{c.nan, c.inf};
    }
    report.tensors.push_back(std::move(s));
  }
  json::ObjectBuilder metadata;
  for (const auto& [k, v] : header.metadata) metadata.set(k, v);
  total_weights(report, file.size() - header.buffer_offset, metadata.take());
  if (options.verify) report.verify->checks.push_back("safetensors header rules");
}

// ckpt_order, ckpt_aliases and ckpt_attributes are read back by convert: checked as it reads them (headers only).
void verify_weights_metadata(const std::string& path, const safetensors::Header& header, Verification& v) {
  if (std::none_of(header.metadata.begin(), header.metadata.end(), [](const auto& m) {
        return m.first == kOrderKey || m.first == kAliasesKey || m.first == kAttributesKey;
      })) {
    return;
  }
  try {
    load_source(path);
    v.checks.push_back("ckpt metadata names each tensor once");
  } catch (const Error& e) {
    v.errors.push_back(e.what());
  }
}

// ---- the other torch.save files ----

void summarize_optimizer(const Source& file, FileReport& report) {
  const Graph& g = file.graph();
  const NodeId state = *g.dict_get(g.root(), "state");
  report.fields["param_groups"] = to_data(g, *g.dict_get(g.root(), "param_groups"));
  const auto& entries = g.at(state).items;
  std::set<std::string> keys;
  std::optional<double> step;
  std::uint64_t state_bytes = 0;
  for (std::size_t i = 0; i + 1 < entries.size(); i += 2) {
    const NodeId per_param = entries[i + 1];
    if (!g.is(per_param, Kind::dict)) continue;
    std::vector<std::int64_t> shape;
    std::uint64_t largest = 0;
    bool has_tensor = false;
    const auto& fields = g.at(per_param).items;
    for (std::size_t k = 0; k + 1 < fields.size(); k += 2) {
      if (g.is(fields[k], Kind::string)) keys.insert(g.at(fields[k]).text);
      const bool is_step = g.is(fields[k], Kind::string) && g.at(fields[k]).text == "step";
      if (const auto* t = tensor_of(g, fields[k + 1])) {
        const std::uint64_t n = *torch_archive::numel(t->shape);
        state_bytes += n * element_size(t->dtype);
        if (is_step && !step && n == 1) step = scalar_value(file.tensor_extent(*t), t->dtype);
        if (!is_step && (!has_tensor || n > largest)) {
          shape = t->shape;
          largest = n;
          has_tensor = true;
        }
      } else if (is_step && !step) {
        const pickle::Node& v = g.at(fields[k + 1]);
        if (v.kind == Kind::integer) step = static_cast<double>(v.integer);
        if (v.kind == Kind::floating) step = v.number;
      }
    }
    if (has_tensor && g.is(entries[i], Kind::integer))
      report.optimizer_state_shapes.emplace_back(g.at(entries[i]).integer, shape);
  }
  report.fields["num_param_states"] = entries.size() / 2;
  report.fields["state_keys"] = keys;
  report.fields["step"] = step ? json::Json(*step) : json::Json(nullptr);
  report.fields["state_bytes"] = state_bytes;
  if (const NodeId* shard = g.dict_get(g.root(), kShardKey)) report.fields["shard"] = to_data(g, *shard);
}

void summarize_scheduler(const Graph& g, FileReport& report) {
  const NodeId root = g.root();
  report.fields["last_epoch"] = to_data(g, *g.dict_get(root, "last_epoch"));
  const NodeId* last_lr = g.dict_get(root, "_last_lr");
  report.fields["last_lr"] = last_lr ? to_data(g, *last_lr) : json::Json(nullptr);
  report.fields["state"] = to_data(g, root);
}

void summarize_scaler(const Graph& g, FileReport& report) {
  const NodeId root = g.root();
  report.fields["enabled"] = !g.at(root).items.empty();
  for (const char* key : {"scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker"}) {
    if (const NodeId* v = g.dict_get(root, key)) report.fields[key] = to_data(g, *v);
  }
}

void summarize_rng(const Source& file, FileReport& report) {
  const Graph& g = file.graph();
  json::Json generators = json::Json::array();
  const auto& items = g.at(g.root()).items;
  for (std::size_t i = 0; i + 1 < items.size(); i += 2) generators.push_back(g.at(items[i]).text);
  report.fields["generators"] = generators;
  for (const char* name : {"python", "numpy", "cpu", "cuda"}) {
    const NodeId* value = g.dict_get(g.root(), name);
    if (!value) continue;
    json::Json summary = rng_generator_summary(g, name, *value);
    if (!summary.is_null()) report.fields[name] = std::move(summary);
  }
}

void summarize_training_args(const Graph& g, FileReport& report) {
  if (g.is(g.root(), Kind::dict)) {
    report.fields["class"] = nullptr;
    report.fields["fields"] = to_data(g, g.root());
    return;
  }
  const auto& slots = g.at(g.root()).items;
  const NodeId callable = slots[pickle::object_callable];
  report.fields["class"] = g.is(callable, Kind::global) ? g.global_name(callable) : "";
  report.fields["fields"] = to_data(g, slots[pickle::object_state]);
}

void verify_zip(const torch_archive::TorchFile& file, Verification& v) {
  std::size_t checked = 0;
  for (const auto& entry : file.zip().entries()) {
    if (entry.method != 0) {
      v.errors.push_back("member '" + entry.name + "': compressed, cannot check");
      continue;
    }
    ++checked;
    if (!file.zip().crc_matches(entry))
      v.errors.push_back("member '" + entry.name + "': CRC-32 does not match the directory");
  }
  v.checks.push_back("crc32 of " + std::to_string(checked) + " zip members");
  v.checks.push_back("every tensor inside its storage");
}

// A file named as one kind of checkpoint file must have the structure resume needs of that kind.
void verify_kind(const Graph& g, const std::string& name, Verification& v) {
  const auto kind = promised_kind(name);
  if (!kind) return;
  if (auto why = kind_problem(g, *kind)) {
    v.errors.push_back("named " + name + " (" + std::string(kind_name(*kind)) + ") but " + *why);
  } else {
    v.checks.push_back("a " + std::string(kind_name(*kind)) + " file as resume reads it");
  }
}

// A safetensors file without ckpt_structure holds weights: only a weights name promises that, and never none.
void verify_safetensors_kind(const std::string& name, const safetensors::Header& header, Verification& v) {
  const auto kind = promised_kind(name);
  if (!kind) return;
  if (*kind != FileKind::weights)
    v.errors.push_back("named " + name + " (" + std::string(kind_name(*kind)) + ") but holds weights");
  else if (header.tensors.empty())
    v.errors.push_back("named " + name + " (weights) but holds no tensors");
  else
    v.checks.push_back("a weights file as resume reads it");
}

// numpy arrays are rebuilt by numpy when torch.load unpickles them: one it would refuse fails the file.
void verify_numpy_arrays(const Graph& g, Verification& v) {
  for (std::size_t i = 0; i < g.arrays.size(); ++i) {
    if (auto why = numpy_state_problem(g.arrays[i]))
      v.errors.push_back("numpy array " + std::to_string(i + 1) + " of " + std::to_string(g.arrays.size()) + ": " +
                         *why);
  }
  v.checks.push_back("numpy arrays' bytes match their shapes");
}

// A torch.save file, or a safetensors file holding another checkpoint file in ckpt's pickle-free form: summarised
// by what its value is.
void summarize_value(const Source& file, FileReport& report, const InspectOptions& options) {
  const Graph& g = file.graph();
  const std::string source_name =
      file.has_structure() && file.metadata.count(kSourceNameKey) ? file.metadata.at(kSourceNameKey) : report.file;
  report.kind = classify_pickle(g, source_name);
  try {
    switch (report.kind) {
      case FileKind::weights:
        summarize_pickled_weights(file, report, options);
        break;
      case FileKind::optimizer:
        summarize_optimizer(file, report);
        break;
      case FileKind::scheduler:
        summarize_scheduler(g, report);
        break;
      case FileKind::scaler:
        summarize_scaler(g, report);
        break;
      case FileKind::rng_state:
        summarize_rng(file, report);
        break;
      case FileKind::training_args:
        summarize_training_args(g, report);
        break;
      case FileKind::weights_index:  // JSON and archives are never pickles
      case FileKind::trainer_state:
      case FileKind::config:
      case FileKind::json:
      case FileKind::archive:
      case FileKind::pickle:
      case FileKind::deepspeed:
      case FileKind::other:
      case FileKind::error:
        report.fields["value"] = to_data(g, g.root());
        break;
    }
  } catch (const Error& e) {
    throw e.with_context(file.path, "");
  }
  if (file.has_structure())
    report.fields["converted_from"] = file.metadata.count(kSourceNameKey) ? file.metadata.at(kSourceNameKey) : "";
  if (options.verify && file.torch) verify_zip(*file.torch, *report.verify);
  if (options.verify && !g.arrays.empty()) verify_numpy_arrays(g, *report.verify);
  if (options.verify) {
    verify_kind(g, report.file, *report.verify);
    if (source_name != report.file) verify_kind(g, source_name, *report.verify);
  }
}

// ---- JSON files ----

void summarize_json(const std::string& path, FileReport& report) {
  report.format = "json";
  const json::Json doc = json::parse_file(path);
  if (!doc.is_object()) {
    report.kind = FileKind::json;
    report.fields["value"] = doc;
    return;
  }
  // Shown as the file has them: a member of an unexpected type is shown as it is, or left out of a count.
  const json::Fields fields(doc, path, "", json::WrongType::absent);
  if (fields.has("global_step") && fields.has("log_history")) {
    report.kind = FileKind::trainer_state;
    for (const char* key : {"global_step", "epoch", "max_steps", "best_metric", "best_model_checkpoint"})
      report.fields[key] = fields.value_or_null(key);
    const json::Json history = fields.value_or_null("log_history");
    report.fields["num_log_entries"] = history.is_array() ? history.size() : 0;
    report.fields["last_train_log"] = last_log_with(history, [](const std::string& k) { return k == "loss"; });
    report.fields["last_eval_log"] =
        last_log_with(history, [](const std::string& k) { return k.rfind("eval_", 0) == 0; });
  } else if (fields.has("weight_map")) {
    report.kind = FileKind::weights_index;
    const auto meta = fields.optional_object("metadata");
    report.fields["total_size"] = meta ? meta->value_or_null("total_size") : json::Json(nullptr);
    std::vector<std::pair<std::string, std::uint64_t>> shard_counts;  // in order of first appearance
    std::unordered_map<std::string, std::size_t> shard_position;
    std::size_t count = 0;
    if (const auto weight_map = fields.optional_object("weight_map")) {
      weight_map->for_each([&](const std::string&, const json::Value& shard) {
        ++count;
        const std::string name = shard.json().is_string() ? shard.string() : json::dump(shard.json());
        const auto [it, inserted] = shard_position.try_emplace(name, shard_counts.size());
        if (inserted) shard_counts.emplace_back(name, 0);
        ++shard_counts[it->second].second;
      });
    }
    json::ObjectBuilder shards;
    for (auto& [name, n] : shard_counts) shards.set(std::move(name), n);
    report.fields["num_tensors"] = count;
    report.fields["shards"] = shards.take();
  } else if (fields.has("model_type") || report.file == "config.json") {
    report.kind = FileKind::config;
    for (const char* key : {"model_type", "architectures", "torch_dtype"})
      report.fields[key] = fields.value_or_null(key);
    report.fields["config"] = doc;
  } else {
    report.kind = FileKind::json;
    report.fields["value"] = doc;
  }
}

// An archive (checkpoint/archive.hpp) from its manifest; --verify decodes every frame and checks every sha256.
void summarize_archive(const std::string& path, FileReport& report, const InspectOptions& options) {
  report.format = "ckpt_archive";
  report.kind = FileKind::archive;
  const auto info = read_archive_info(path);
  const auto& m = info.manifest;
  json::Json files = json::Json::array();
  for (const auto& f : m.files)
    files.push_back({{"name", f.name}, {"size_bytes", f.size}, {"sha256", Sha256::hex(f.sha256)}});
  report.fields = {{"checkpoint", m.checkpoint},
                   {"step", m.step ? json::Json(*m.step) : json::Json(nullptr)},
                   {"original_bytes", info.summary.original_bytes},
                   {"ratio", info.summary.ratio()},
                   {"chunk_size", m.chunk_size},
                   {"files", std::move(files)},
                   {"trainer_state", m.trainer_state}};
  for (const auto& t : m.tensors) {
    TensorSummary ts;
    ts.name = m.files[t.file].name + ":" + t.name;
    ts.dtype = t.dtype;
    ts.shape = t.shape;
    ts.stride = contiguous_strides(t.shape);
    ts.nbytes = *torch_archive::numel(t.shape) * element_size(t.dtype);  // read_manifest checked it fits its segment
    report.tensors.push_back(std::move(ts));
  }
  if (options.verify) {
    try {
      verify_archive(path, {});
      report.verify->checks.push_back("every frame decodes and every file's sha256 matches");
    } catch (const Error& e) {
      report.verify->errors.push_back(e.what());
    }
  }
}

FileReport inspect_one(const std::string& path, const InspectOptions& options, bool unknown_is_error) {
  FileReport report;
  report.path = path;
  report.file = base_name(path);
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) fail_io(path, "stat", errno);
  report.size_bytes = static_cast<std::uint64_t>(st.st_size);
  if (options.verify) report.verify = Verification{};

  if (is_archive(path)) {
    summarize_archive(path, report, options);
    return report;
  }
  switch (torch_archive::sniff(ReadOnlyFile(path))) {
    case torch_archive::Container::safetensors: {
      report.format = "safetensors";
      MappedFile file(path);
      try {
        const safetensors::Header header = safetensors::parse(file.bytes());
        if (std::none_of(header.metadata.begin(), header.metadata.end(),
                         [](const auto& m) { return m.first == kStructureKey; })) {
          report.kind = FileKind::weights;
          summarize_safetensors(file, header, report, options);
          if (options.verify) verify_weights_metadata(path, header, *report.verify);
          if (options.verify) verify_safetensors_kind(report.file, header, *report.verify);
          break;
        }
      } catch (const Error& e) {
        throw e.with_context(path, "");
      }
      summarize_value(*load_source(path), report, options);
      if (options.verify) report.verify->checks.push_back("safetensors header rules");
      break;
    }
    case torch_archive::Container::torch_zip:
      report.format = "torch_zip";
      summarize_value(*load_source(path), report, options);
      break;
    case torch_archive::Container::json:
      summarize_json(path, report);
      break;
    case torch_archive::Container::torch_legacy:
      throw Error(ErrorKind::unsupported, path, "",
                  "legacy torch.save format (PyTorch < 1.6); load and save it again with a newer PyTorch");
    case torch_archive::Container::unknown:
      if (unknown_is_error) {
        throw Error(ErrorKind::unsupported, path, "byte 0",
                    "not a torch.save zip, a safetensors file or JSON (detected from the content)");
      }
      report.format = "other";
      report.kind = FileKind::other;
  }
  if (options.verify && report.format == "json") report.verify->checks.push_back("JSON parses");
  return report;
}

}  // namespace

json::Json rng_generator_summary(const Graph& g, std::string_view generator, NodeId value) {
  const auto& t = g.at(value);
  if (generator == "python") {
    if (t.kind != Kind::tuple || t.items.size() != 3 || !g.is(t.items[1], Kind::tuple) ||
        g.at(t.items[1]).items.empty())
      return nullptr;
    return {{"version", to_data(g, t.items[0])},
            {"position", to_data(g, g.at(t.items[1]).items.back())},
            {"gauss", to_data(g, t.items[2])}};
  }
  if (generator == "numpy") {
    if (t.kind != Kind::tuple || t.items.size() != 5) return nullptr;
    return {{"algorithm", to_data(g, t.items[0])},
            {"position", to_data(g, t.items[2])},
            {"has_gauss", to_data(g, t.items[3])},
            {"cached_gaussian", to_data(g, t.items[4])}};
  }
  if (generator == "cpu") {
    const auto* tensor = tensor_of(g, value);
    return tensor ? json::Json{{"nbytes", *torch_archive::numel(tensor->shape) * element_size(tensor->dtype)}}
                  : json::Json(nullptr);
  }
  if (generator == "cuda") {
    std::uint64_t count = 0, nbytes = 0;
    auto add = [&](NodeId id) {
      if (const auto* tensor = tensor_of(g, id)) {
        ++count;
        nbytes += *torch_archive::numel(tensor->shape) * element_size(tensor->dtype);
      }
    };
    if (t.kind == Kind::list || t.kind == Kind::tuple) {
      for (NodeId id : t.items) add(id);
    } else {
      add(value);
    }
    return {{"count", count}, {"nbytes", nbytes}};
  }
  return nullptr;
}

FileReport inspect_file(const std::string& path, const InspectOptions& options) {
  return inspect_one(path, options, true);
}

FileReport inspect_checkpoint_file(const std::string& path, const InspectOptions& options) {
  return inspect_one(path, options, false);
}

FileReport inspect_loaded_file(const Source& file, FileKind kind, const InspectOptions& options) {
  FileReport report;
  report.path = file.path;
  report.file = base_name(file.path);
  report.size_bytes = file.file().size();
  report.format = file.safetensors ? "safetensors" : "torch_zip";
  report.kind = kind;
  if (options.verify) {
    report.verify = Verification{};
    if (file.torch) verify_zip(*file.torch, *report.verify);
  }
  return report;
}

}  // namespace ckpt::checkpoint
