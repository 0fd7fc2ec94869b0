#include "checkpoint/convert_state.hpp"

#include <filesystem>
#include <map>
#include <memory>

#include "checkpoint/convert_write.hpp"
#include "checkpoint/structure.hpp"
#include "checkpoint/value_data.hpp"
#include "format/json.hpp"
#include "util/atomic_file.hpp"
#include "util/error.hpp"

namespace ckpt::checkpoint::convert_detail {
namespace fs = std::filesystem;
using pickle::Graph;
using pickle::Kind;
using pickle::NodeId;

void convert_state(const Source& s, const std::string& destination, const ConvertOptions& options,
                   ConvertResult& result) {
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
        {"format", "pt"},
        {kStructureKey, json::dump(structure)},
        {kSourceNameKey, fs::path(s.path).filename().string()}};
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

void consolidate_optimizer(const std::string& dir, const OptimizerShards& shards, const std::string& destination,
                           const ConvertOptions& options, ConvertResult& result) {
  std::vector<std::unique_ptr<Source>> loaded;
  std::vector<const Source*> views;
  for (const auto& name : shards.files)
    views.push_back(loaded.emplace_back(load_source((fs::path(dir) / name).string())).get());
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
      if (!sg.is(items[i], Kind::integer))
        throw Error(ErrorKind::corrupt, s->path, "state", "a key that is not a parameter index");
      const std::int64_t index = sg.at(items[i]).integer;
      if (!states.emplace(index, std::pair{s.get(), items[i + 1]}).second) {
        throw Error(ErrorKind::corrupt, s->path, "state." + std::to_string(index), "held by two shards");
      }
    }
  }
  std::vector<NodeId> state_items;
  for (const auto& [index, where] : states) {
    state_items.push_back(add_integer(g, index));
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
    result.files.push_back(
        {s->path, destination, "consolidated", options.dry_run ? 0 : file_size_or_zero(destination)});
  }
}

void training_args_to_json(const Source& s, const std::string& destination, const ConvertOptions& options,
                           ConvertResult& result) {
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
  result.files.push_back(
      {s.path, destination, "converted one way to JSON", options.dry_run ? 0 : file_size_or_zero(destination)});
  result.notes.push_back(fs::path(s.path).filename().string() +
                         " converts one way: its fields as JSON data; the class is not rebuilt");
}

void write_config_with_dtype(const std::string& source, const std::string& destination, DType dtype,
                             const ConvertOptions& options) {
  json::Json config = json::parse_file(source);
  if (!config.is_object())
    throw Error(ErrorKind::corrupt, source, "", "is not a JSON object, so its torch_dtype cannot be set");
  config["torch_dtype"] = std::string(torch_name(dtype));
  if (options.dry_run) return;
  AtomicFile out(destination);
  out.write(json::dump_python_sorted(config, 2) + "\n");
  out.commit();
}

}  // namespace ckpt::checkpoint::convert_detail
