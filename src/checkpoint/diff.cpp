#include "checkpoint/diff.hpp"

#include <algorithm>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <unordered_map>

#include "checkpoint/best.hpp"
#include "checkpoint/diff_comparison.hpp"
#include "checkpoint/diff_input.hpp"
#include "checkpoint/file_kind.hpp"
#include "checkpoint/inspect.hpp"
#include "checkpoint/run_dir.hpp"
#include "checkpoint/source.hpp"
#include "checkpoint/value_data.hpp"
#include "util/error.hpp"

namespace ckpt::checkpoint {
namespace fs = std::filesystem;
using diff_detail::Comparison;
using diff_detail::dict_entries;
using diff_detail::Input;
using diff_detail::InputKind;
using diff_detail::LoadedFile;
using diff_detail::tensor_of;
using diff_detail::TensorSide;
using pickle::Graph;
using pickle::Kind;
using pickle::NodeId;

const char* to_string(TensorStatus status) {
  switch (status) {
    case TensorStatus::identical:
      return "identical";
    case TensorStatus::within_tolerance:
      return "within_tolerance";
    case TensorStatus::different:
      return "different";
    case TensorStatus::dtype_changed:
      return "dtype_changed";
    case TensorStatus::shape_changed:
      return "shape_changed";
    case TensorStatus::only_in_a:
      return "only_in_a";
    case TensorStatus::only_in_b:
      return "only_in_b";
  }
  return "different";
}

bool DiffSection::same() const {
  return file_a.has_value() == file_b.has_value() &&
         std::all_of(tensors.begin(), tensors.end(), [](const TensorDiff& t) { return t.same(); }) &&
         std::all_of(values.begin(), values.end(), [](const ValueDiff& v) { return v.same; });
}

bool DiffResult::same() const {
  return std::all_of(sections.begin(), sections.end(), [](const DiffSection& s) { return s.same(); });
}

namespace {

// ---- weights ----

using NamedTensors = std::vector<std::pair<std::string, TensorSide>>;

// Every tensor of a state dict (or of each shard, in order) by name; a name given twice keeps its last tensor.
NamedTensors named_tensors(const std::vector<std::unique_ptr<LoadedFile>>& files, const Input& input) {
  NamedTensors named;
  std::unordered_map<std::string, std::size_t> position;
  for (const auto& f : files) {
    const Graph& g = f->source->graph();
    if (!is_state_dict(g)) {
      throw Error(ErrorKind::unsupported, input.display(f->name), "",
                  "not a state dict of tensors (an object or other values where weights were expected)");
    }
    const auto& items = g.at(g.root()).items;
    for (std::size_t i = 0; i + 1 < items.size(); i += 2) {
      const TensorSide side{f.get(), tensor_of(g, items[i + 1])};
      const auto [it, inserted] = position.try_emplace(g.at(items[i]).text, named.size());
      if (inserted)
        named.emplace_back(g.at(items[i]).text, side);
      else
        named[it->second].second = side;
    }
  }
  return named;
}

// Compares two sets of weights files (a file, or a sharded set's shards) tensor by tensor.
void compare_weights(Comparison& c, Input& a, std::vector<std::unique_ptr<LoadedFile>> files_a, Input& b,
                     std::vector<std::unique_ptr<LoadedFile>> files_b, std::vector<std::unique_ptr<LoadedFile>>& keep) {
  for (const auto& [input, files] : {std::pair{&a, &files_a}, std::pair{&b, &files_b}}) {
    if (files->empty()) {
      throw Error(ErrorKind::not_found, input->path(), "",
                  "holds no weights (model.safetensors, pytorch_model.bin or a sharded index)");
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
  static constexpr FileKind kOrder[] = {FileKind::optimizer, FileKind::scheduler, FileKind::scaler, FileKind::rng_state,
                                        FileKind::trainer_state};
  return static_cast<int>(std::find(std::begin(kOrder), std::end(kOrder), kind) - std::begin(kOrder));
}

// The values of trainer_state.json a resume depends on or a reader checks, by name.
std::vector<std::pair<std::string, json::Json>> trainer_state_values(const json::Json& doc,
                                                                     const std::string& shown_path) {
  const json::Fields fields(doc, shown_path, "");
  const auto field = [&](const char* key) { return fields.value_or_null(key); };
  const json::Json history = field("log_history");
  const auto last_logged = [&](const char* key) {
    const json::Json entry = last_log_with(history, [&](const std::string& k) { return k == key; });
    return entry.is_null() ? entry : json::Fields(entry, shown_path, "").value_or_null(key);
  };
  json::Json best = field("best_model_checkpoint");
  if (best.is_string()) best = recorded_checkpoint_name(best.get<std::string>());
  return {{"global_step", field("global_step")},           {"epoch", field("epoch")},
          {"learning_rate", last_logged("learning_rate")}, {"loss", last_logged("loss")},
          {"best_metric", field("best_metric")},           {"best_model_checkpoint", best}};
}

// Compares two parsed state files of one kind in section `section`, their values named `stem`.KEY...
void compare_state_values(Comparison& c, std::size_t section, const std::string& stem, std::optional<FileKind> kind,
                          const LoadedFile& fa, const std::string& shown_a, const LoadedFile& fb,
                          const std::string& shown_b) {
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
void compare_state_file(Comparison& c, const std::string& stem, FileKind kind, Input& a,
                        const std::optional<std::string>& name_a, Input& b, const std::optional<std::string>& name_b,
                        std::vector<std::unique_ptr<LoadedFile>>& keep) {
  if ((!name_a || !name_b) && !c.wanted(stem)) return;
  const std::size_t section = c.add_section(stem, name_a, name_b);
  if (!name_a || !name_b) return;
  if (kind == FileKind::trainer_state) {
    const auto values_a = trainer_state_values(a.load_json(*name_a), a.display(*name_a));
    const auto values_b = trainer_state_values(b.load_json(*name_b), b.display(*name_b));
    for (std::size_t i = 0; i < values_a.size(); ++i)
      c.add_json_value(section, stem + "." + values_a[i].first, values_a[i].second, values_b[i].second);
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
    const auto name = [](const auto& files, const auto& it) {
      return it == files.end() ? std::nullopt : std::optional(it->second.name);
    };
    compare_state_file(c, stem, kind, a, name(files_a, in_a), b, name(files_b, in_b), keep);
  }
}

// What a single file holds: weights, a state file of a kind resume reads, or (nullopt) other values.
std::optional<FileKind> file_kind(const Graph& g) {
  for (const FileKind kind :
       {FileKind::weights, FileKind::optimizer, FileKind::scheduler, FileKind::scaler, FileKind::rng_state}) {
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
  const auto held = [](const std::optional<FileKind>& kind) {
    return kind ? std::string(kind_name(*kind)) : std::string("other values");
  };
  if (kind_a != kind_b)
    throw Error(ErrorKind::invalid_argument, "", "",
                a.path() + " holds " + held(kind_a) + ", " + b.path() + " " + held(kind_b) + ": nothing to compare");
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
                  "is a run directory: compare one of its checkpoints (" +
                      (fs::path(input->path()) / "checkpoint-N").string() + ")" +
                      (final_weights
                           ? " or its final weights (" +
                                 (fs::path(input->path()) / final_weights->index.value_or(final_weights->files.front()))
                                     .string() +
                                 ")"
                           : ""));
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
    result.notes.push_back(other.path() + " is " +
                           (other.kind() == InputKind::model_directory ? "a model directory" : "no checkpoint") +
                           ": weights compared, training state not");
  }
  c.compare_tensors();
  if (!options.only.empty()) {
    std::erase_if(result.sections,
                  [](const DiffSection& s) { return s.file_a && s.file_b && s.tensors.empty() && s.values.empty(); });
    if (result.sections.empty())
      throw Error(ErrorKind::invalid_argument, "", "--only",
                  "matches no tensor or value of " + path_a + " or " + path_b);
  }
  return result;
}

}  // namespace ckpt::checkpoint
