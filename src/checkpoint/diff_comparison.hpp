// Internal to diff (checkpoint/diff*.cpp): the input model's pairing of what two inputs hold into a DiffResult.
// A Comparison adds sections, pairs tensors by name into TensorDiffs (their values queued for the engine,
// checkpoint/diff_engine.hpp, tied views once) and walks two value graphs side by side into ValueDiffs, comparing
// values whole and exactly. Everything added is filtered by DiffOptions::only. The LoadedFiles it is given must
// outlive it.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "checkpoint/diff.hpp"
#include "checkpoint/diff_engine.hpp"
#include "checkpoint/diff_input.hpp"
#include "format/json.hpp"
#include "format/pickle.hpp"
#include "util/byte_buffer.hpp"

namespace ckpt::checkpoint::diff_detail {

// The tensor at `id`, or nullptr when it is none.
const pickle::TensorRef* tensor_of(const pickle::Graph& g, pickle::NodeId id);

// A dict's entries by key text (a string's text, an integer's digits, else "#" and its position), in
// first-appearance order, each with its last value (the one Python keeps).
std::vector<std::pair<std::string, pickle::NodeId>> dict_entries(const pickle::Graph& g, pickle::NodeId dict);

class Comparison {
 public:
  Comparison(const DiffOptions& options, DiffResult& result) : options_(options), result_(result) {}

  // A new section of the result (nullopt: the input does not hold its file); its index.
  std::size_t add_section(std::string name, std::optional<std::string> file_a, std::optional<std::string> file_b);

  // Whether --only lets `name` in.
  bool wanted(const std::string& name) const;

  // A tensor of either or both sides, by name: its TensorDiff, its values queued when both sides have it in one
  // shape. Throws unsupported for a view far larger than its storage (check_view_size).
  void add_tensor(std::size_t section, const std::string& name, std::optional<TensorSide> a,
                  std::optional<TensorSide> b);

  // A value of either or both sides compared whole, shown in the result as `shown` makes it JSON.
  void add_value(std::size_t section, const std::string& name, const LoadedFile* fa, std::optional<pickle::NodeId> a,
                 const LoadedFile* fb, std::optional<pickle::NodeId> b,
                 const std::function<json::Json(const pickle::Graph&, pickle::NodeId)>& shown);

  // A value read from JSON on both sides (trainer_state.json's), NaN equal to NaN.
  void add_json_value(std::size_t section, const std::string& name, json::Json a, json::Json b);

  // Walks two values of state files side by side (either may be missing): tensors become TensorDiffs, dicts and
  // sequences of containers are walked into, anything else is one ValueDiff. The graphs must have passed
  // check_expansion: the walk expands shared references.
  void walk(std::size_t section, const std::string& name, const LoadedFile* fa, std::optional<pickle::NodeId> a,
            const LoadedFile* fb, std::optional<pickle::NodeId> b);

  // Compares the values of every tensor pair added (compare_tensor_values) and sets their statuses.
  void compare_tensors() { compare_tensor_values(pending_, tied_, options_, result_); }

 private:
  // Whether two values are equal whole: of one kind, with equal contents; numbers as elements compare, tensors by
  // dtype, shape and bytes, numpy arrays by their bytes. Pairs found equal are remembered, so shared references do
  // not expand.
  bool same_value(const LoadedFile& fa, pickle::NodeId a, const LoadedFile& fb, pickle::NodeId b);

  // Whether two tensors inside a value (a generator's state) have one dtype and shape and the same bytes, read a
  // chunk at a time.
  bool same_tensor(const TensorSide& a, const TensorSide& b);

  const DiffOptions& options_;
  DiffResult& result_;
  std::vector<Pending> pending_;
  // A tensor view: its file, storage, offset, shape and strides (dtype and shape are compared before).
  using View =
      std::tuple<const LoadedFile*, std::uint32_t, std::int64_t, std::vector<std::int64_t>, std::vector<std::int64_t>>;
  using ViewPair = std::pair<View, View>;
  static View view_of(const TensorSide& side) {
    const auto& t = *side.tensor;
    return {side.file, t.storage, t.storage_offset, t.shape, t.stride};
  }
  std::map<ViewPair, std::size_t> compared_views_;  // -> index into pending_
  std::vector<Tied> tied_;
  std::set<std::tuple<const LoadedFile*, pickle::NodeId, const LoadedFile*, pickle::NodeId>> equal_pairs_;
  Readers values_readers_;
  ByteBuffer values_worker_a_, values_worker_b_;
  Window values_window_a_, values_window_b_;
};

}  // namespace ckpt::checkpoint::diff_detail
