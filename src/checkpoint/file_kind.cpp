#include "checkpoint/file_kind.hpp"

#include <set>

#include "checkpoint/value_data.hpp"

namespace ckpt::checkpoint {
namespace {

using pickle::Graph;
using pickle::Kind;
using pickle::NodeId;

bool has_rank_suffix(const std::string& name, const std::string& prefix, const std::string& extension) {
  if (!name.starts_with(prefix) || !name.ends_with(extension) || name.size() <= prefix.size() + extension.size())
    return false;
  const std::string middle = name.substr(prefix.size(), name.size() - prefix.size() - extension.size());
  return middle.find_first_not_of("0123456789") == std::string::npos;
}

bool is_number(const Graph& g, NodeId id) { return g.is(id, Kind::floating) || g.is(id, Kind::integer); }

const NodeId* member(const Graph& g, NodeId dict, std::string_view key) {
  return g.is(dict, Kind::dict) ? g.dict_get(dict, key) : nullptr;
}

std::optional<std::string> optimizer_problem(const Graph& g, NodeId root) {
  const NodeId* state = member(g, root, "state");
  const NodeId* groups = member(g, root, "param_groups");
  if (!state || !g.is(*state, Kind::dict)) return "no 'state' dict";
  if (!groups || !g.is(*groups, Kind::list) || g.at(*groups).items.empty()) return "no 'param_groups' list";
  std::set<std::int64_t> params;
  for (NodeId group : g.at(*groups).items) {
    const NodeId* indices = member(g, group, "params");
    if (!indices || !g.is(*indices, Kind::list)) return "a param group without a 'params' list";
    for (NodeId index : g.at(*indices).items) {
      if (!g.is(index, Kind::integer)) return "a param group's 'params' holds a value that is not a parameter index";
      if (!params.insert(g.at(index).integer).second)
        return "parameter " + std::to_string(g.at(index).integer) + " in two param groups";
    }
  }
  const auto& entries = g.at(*state).items;
  for (std::size_t i = 0; i + 1 < entries.size(); i += 2) {
    if (!g.is(entries[i], Kind::integer)) return "a 'state' key that is not a parameter index";
    if (!g.is(entries[i + 1], Kind::dict))
      return "the state of parameter " + std::to_string(g.at(entries[i]).integer) + " is not a dict";
  }
  return std::nullopt;
}

std::optional<std::string> scheduler_problem(const Graph& g, NodeId root) {
  const NodeId* base = member(g, root, "base_lrs");
  const NodeId* last = member(g, root, "_last_lr");
  const NodeId* epoch = member(g, root, "last_epoch");
  if (!base || !g.is(*base, Kind::list) || !last || !g.is(*last, Kind::list))
    return "no 'base_lrs' and '_last_lr' lists";
  const auto& base_items = g.at(*base).items;
  const auto& last_items = g.at(*last).items;
  if (base_items.empty() || base_items.size() != last_items.size())
    return "'base_lrs' and '_last_lr' are not one learning rate per group";
  for (const auto* items : {&base_items, &last_items}) {
    for (NodeId lr : *items) {
      if (!is_number(g, lr)) return "a learning rate that is not a number";
    }
  }
  if (!epoch || !g.is(*epoch, Kind::integer)) return "no integer 'last_epoch'";
  return std::nullopt;
}

std::optional<std::string> scaler_problem(const Graph& g, NodeId root) {
  if (g.at(root).items.empty()) return std::nullopt;  // a disabled GradScaler
  for (const char* key : {"scale", "growth_factor", "backoff_factor"}) {
    const NodeId* v = member(g, root, key);
    if (!v || !is_number(g, *v)) return std::string("no number '") + key + "'";
  }
  for (const char* key : {"growth_interval", "_growth_tracker"}) {
    const NodeId* v = member(g, root, key);
    if (!v || !g.is(*v, Kind::integer)) return std::string("no integer '") + key + "'";
  }
  return std::nullopt;
}

std::optional<std::string> rng_problem(const Graph& g, NodeId root) {
  static const std::set<std::string> kGenerators = {"python", "numpy", "cpu", "cuda", "mps", "npu",
                                                    "xpu",    "xla",   "hpu", "mlu",  "musa"};
  const auto& entries = g.at(root).items;
  for (std::size_t i = 0; i + 1 < entries.size(); i += 2) {
    if (!g.is(entries[i], Kind::string) || !kGenerators.count(g.at(entries[i]).text))
      return "a key that names no random generator";
  }
  const NodeId* python = member(g, root, "python");
  if (!python || !g.is(*python, Kind::tuple) || g.at(*python).items.size() != 3 ||
      !g.is(g.at(*python).items[0], Kind::integer) || !g.is(g.at(*python).items[1], Kind::tuple)) {
    return "no 'python' state as random.getstate() returns it";
  }
  const NodeId* numpy = member(g, root, "numpy");
  if (!numpy || !g.is(*numpy, Kind::tuple) || g.at(*numpy).items.size() != 5 ||
      !g.is(g.at(*numpy).items[0], Kind::string) || !g.is(g.at(*numpy).items[1], Kind::ndarray)) {
    return "no 'numpy' state as numpy.random.get_state() returns it";
  }
  const NodeId* cpu = member(g, root, "cpu");
  if (!cpu || !g.is(*cpu, Kind::tensor)) return "no 'cpu' generator state tensor";
  return std::nullopt;
}

}  // namespace

std::string_view kind_name(FileKind kind) {
  switch (kind) {
    case FileKind::weights:
      return "weights";
    case FileKind::weights_index:
      return "weights_index";
    case FileKind::optimizer:
      return "optimizer";
    case FileKind::scheduler:
      return "scheduler";
    case FileKind::scaler:
      return "scaler";
    case FileKind::rng_state:
      return "rng_state";
    case FileKind::trainer_state:
      return "trainer_state";
    case FileKind::training_args:
      return "training_args";
    case FileKind::config:
      return "config";
    case FileKind::json:
      return "json";
    case FileKind::pickle:
      return "pickle";
    case FileKind::archive:
      return "archive";
    case FileKind::deepspeed:
      return "deepspeed";
    case FileKind::other:
      return "other";
    case FileKind::error:
      return "error";
  }
  return "other";
}

std::optional<FileKind> promised_kind(const std::string& name) {
  if (name == "pytorch_model.bin" || name == "model.safetensors" || name == "adapter_model.bin" ||
      name == "adapter_model.safetensors" || (name.starts_with("pytorch_model-") && name.ends_with(".bin")) ||
      (name.starts_with("model-") && name.ends_with(".safetensors"))) {
    return FileKind::weights;
  }
  if (name == "optimizer.pt" || has_rank_suffix(name, "optimizer_", ".pt")) return FileKind::optimizer;
  if (name == "scheduler.pt") return FileKind::scheduler;
  if (name == "scaler.pt") return FileKind::scaler;
  if (name == "rng_state.pth" || has_rank_suffix(name, "rng_state_", ".pth")) return FileKind::rng_state;
  return std::nullopt;
}

std::optional<std::string> kind_problem(const Graph& g, FileKind kind) {
  const NodeId root = g.root();
  if (kind == FileKind::weights) {
    if (!is_state_dict(g)) return "not a dict of tensor names -> tensors";
    if (g.at(root).items.empty()) return "holds no tensors";
    return std::nullopt;
  }
  if (!g.is(root, Kind::dict)) return "not a dict";
  switch (kind) {
    case FileKind::optimizer:
      return optimizer_problem(g, root);
    case FileKind::scheduler:
      return scheduler_problem(g, root);
    case FileKind::scaler:
      return scaler_problem(g, root);
    case FileKind::rng_state:
      return rng_problem(g, root);
    case FileKind::weights:
    case FileKind::weights_index:
    case FileKind::trainer_state:
    case FileKind::training_args:
    case FileKind::config:
    case FileKind::json:
    case FileKind::pickle:
    case FileKind::archive:
    case FileKind::deepspeed:
    case FileKind::other:
    case FileKind::error:
      break;
  }
  return std::nullopt;
}

}  // namespace ckpt::checkpoint
