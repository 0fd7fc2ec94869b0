#include "checkpoint/diff_comparison.hpp"

#include <fnmatch.h>

#include <algorithm>
#include <cstring>
#include <unordered_map>

#include "checkpoint/source.hpp"
#include "checkpoint/value_data.hpp"
#include "util/error.hpp"

namespace ckpt::checkpoint::diff_detail {
using pickle::Graph;
using pickle::Kind;
using pickle::NodeId;

const pickle::TensorRef* tensor_of(const Graph& g, NodeId id) {
  return g.is(id, Kind::tensor) ? &g.tensors[static_cast<std::size_t>(g.at(id).integer)] : nullptr;
}

namespace {

// A dict key as a name part: its text, an integer's digits, else its position.
std::string key_text(const Graph& g, NodeId key, std::size_t position) {
  if (g.is(key, Kind::string)) return g.at(key).text;
  if (g.is(key, Kind::integer)) return std::to_string(g.at(key).integer);
  return "#" + std::to_string(position);
}

}  // namespace

std::vector<std::pair<std::string, NodeId>> dict_entries(const Graph& g, NodeId dict) {
  std::vector<std::pair<std::string, NodeId>> entries;
  std::unordered_map<std::string, std::size_t> position;
  const auto& items = g.at(dict).items;
  for (std::size_t i = 0; i + 1 < items.size(); i += 2) {
    std::string key = key_text(g, items[i], i / 2);
    const auto [it, inserted] = position.try_emplace(key, entries.size());
    if (inserted)
      entries.emplace_back(std::move(key), items[i + 1]);
    else
      entries[it->second].second = items[i + 1];
  }
  return entries;
}

namespace {

bool is_sequence(const Graph& g, NodeId id) { return g.is(id, Kind::list) || g.is(id, Kind::tuple); }

// Whether a value is walked into rather than compared whole: a dict, or a sequence holding containers or tensors
// (param_groups: a list of dicts), but not a sequence of plain values (betas, params, _last_lr).
bool is_walked(const Graph& g, NodeId id) {
  if (g.is(id, Kind::dict)) return true;
  if (!is_sequence(g, id)) return false;
  return std::any_of(g.at(id).items.begin(), g.at(id).items.end(), [&](NodeId item) {
    return g.is(item, Kind::dict) || is_sequence(g, item) || g.is(item, Kind::tensor);
  });
}

// Whether two JSON values are equal, NaN equal to NaN (as elements compare).
bool same_json(const json::Json& a, const json::Json& b) {
  if (a.is_number_float() && b.is_number_float()) return same_number(a.get<double>(), b.get<double>());
  return a == b;
}

}  // namespace

std::size_t Comparison::add_section(std::string name, std::optional<std::string> file_a,
                                    std::optional<std::string> file_b) {
  result_.sections.push_back({std::move(name), std::move(file_a), std::move(file_b), {}, {}});
  return result_.sections.size() - 1;
}

bool Comparison::wanted(const std::string& name) const {
  if (options_.only.empty()) return true;
  return std::any_of(options_.only.begin(), options_.only.end(),
                     [&](const std::string& p) { return ::fnmatch(p.c_str(), name.c_str(), 0) == 0; });
}

void Comparison::add_tensor(std::size_t section, const std::string& name, std::optional<TensorSide> a,
                            std::optional<TensorSide> b) {
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
  if (!a)
    t.status = TensorStatus::only_in_b;
  else if (!b)
    t.status = TensorStatus::only_in_a;
  else if (a->tensor->shape != b->tensor->shape)
    t.status = TensorStatus::shape_changed;
  else
    t.status = a->tensor->dtype == b->tensor->dtype ? TensorStatus::identical : TensorStatus::dtype_changed;
  auto& tensors = result_.sections[section].tensors;
  if (a && b && t.status != TensorStatus::shape_changed) {
    // Elements are compared one by one: an expanded view may not claim far more than its storage holds.
    check_view_size(*a->file->source, *a->tensor);
    check_view_size(*b->file->source, *b->tensor);
    // Tied tensors (one view of one storage under two names, on both sides alike) are compared once.
    const ViewPair views{view_of(*a), view_of(*b)};
    const auto [first, inserted] = compared_views_.try_emplace(views, pending_.size());
    if (inserted)
      pending_.push_back({section, tensors.size(), *a, *b});
    else
      tied_.push_back({first->second, section, tensors.size()});
  }
  tensors.push_back(std::move(t));
}

void Comparison::add_value(std::size_t section, const std::string& name, const LoadedFile* fa, std::optional<NodeId> a,
                           const LoadedFile* fb, std::optional<NodeId> b,
                           const std::function<json::Json(const Graph&, NodeId)>& shown) {
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

void Comparison::add_json_value(std::size_t section, const std::string& name, json::Json a, json::Json b) {
  if (!wanted(name)) return;
  const bool same = same_json(a, b);
  result_.sections[section].values.push_back({name, true, true, std::move(a), std::move(b), same});
}

void Comparison::walk(std::size_t section, const std::string& name, const LoadedFile* fa, std::optional<NodeId> a,
                      const LoadedFile* fb, std::optional<NodeId> b) {
  const Graph* ga = fa ? &fa->source->graph() : nullptr;
  const Graph* gb = fb ? &fb->source->graph() : nullptr;
  const pickle::TensorRef* ta = a ? tensor_of(*ga, *a) : nullptr;
  const pickle::TensorRef* tb = b ? tensor_of(*gb, *b) : nullptr;
  if ((ta || !a) && (tb || !b)) {
    add_tensor(section, name, ta ? std::optional(TensorSide{fa, ta}) : std::nullopt,
               tb ? std::optional(TensorSide{fb, tb}) : std::nullopt);
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

// dtype, shape and bytes, numpy arrays by their bytes. Pairs found equal are remembered, so shared references do
// not expand.
bool Comparison::same_value(const LoadedFile& fa, NodeId a, const LoadedFile& fb, NodeId b) {
  if (equal_pairs_.count({&fa, a, &fb, b})) return true;
  const Graph& ga = fa.source->graph();
  const Graph& gb = fb.source->graph();
  const pickle::Node& na = ga.at(a);
  const pickle::Node& nb = gb.at(b);
  if (na.kind != nb.kind || na.flag != nb.flag || na.items.size() != nb.items.size()) return false;
  bool same = true;
  switch (na.kind) {
    case Kind::integer:
      same = na.integer == nb.integer;
      break;
    case Kind::floating:
      same = same_number(na.number, nb.number);
      break;
    case Kind::tensor:
      same = same_tensor(TensorSide{&fa, tensor_of(ga, a)}, TensorSide{&fb, tensor_of(gb, b)});
      break;
    case Kind::storage: {
      const auto& sa = ga.storages[static_cast<std::size_t>(na.integer)];
      const auto& sb = gb.storages[static_cast<std::size_t>(nb.integer)];
      same = sa.dtype == sb.dtype && sa.numel == sb.numel && sa.untyped == sb.untyped;
      break;
    }
    case Kind::ndarray: {
      const auto& x = ga.arrays[static_cast<std::size_t>(na.integer)];
      const auto& y = gb.arrays[static_cast<std::size_t>(nb.integer)];
      same = x.descr == y.descr && x.shape == y.shape && x.data == y.data && x.fortran_order == y.fortran_order &&
             x.scalar == y.scalar && x.plain_dtype == y.plain_dtype && x.data_kind == y.data_kind;
      break;
    }
    default:
      same = na.text == nb.text && (na.kind != Kind::numpy_dtype || na.integer == nb.integer);
      break;
  }
  for (std::size_t i = 0; same && i < na.items.size(); ++i) same = same_value(fa, na.items[i], fb, nb.items[i]);
  if (same && (na.attributes != 0) != (nb.attributes != 0)) same = false;
  if (same && na.attributes != 0) same = same_value(fa, na.attributes, fb, nb.attributes);
  if (same) equal_pairs_.insert({&fa, a, &fb, b});
  return same;
}

bool Comparison::same_tensor(const TensorSide& a, const TensorSide& b) {
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

}  // namespace ckpt::checkpoint::diff_detail
