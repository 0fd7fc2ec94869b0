// Pickle values as plain JSON data, for showing people and scripts what a file holds. Shapes of the
// non-JSON values are documented in docs/inspect-json.md.
#pragma once

#include <optional>
#include <string>
#include <unordered_map>

#include "format/json.hpp"
#include "format/pickle.hpp"

namespace ckpt::checkpoint {

// Converts the value at `id`. Shared references are expanded each time they occur, so the conversion has a
// budget of values (2^20) and of string bytes (64 MiB): past it, throws an unsupported Error rather than growing
// without bound.
json::Json to_data(const pickle::Graph& graph, pickle::NodeId id);

// Throws the same unsupported Error as to_data when the value at `id`, expanded, exceeds those budgets; for
// other walks that expand shared references (the structure encoding).
void check_expansion(const pickle::Graph& graph, pickle::NodeId id);

// The decimal digits of big-int nodes, each converted once: a shared big int may be reached a million times
// through references, and each conversion costs time quadratic in its length. For walks that expand references.
class BigIntDecimals {
 public:
  const std::string& of(const pickle::Graph& graph, pickle::NodeId id);

 private:
  std::unordered_map<pickle::NodeId, std::string> digits_;
};

// A state dict: an OrderedDict (possibly empty) or a non-empty dict, whose keys are strings and values tensors.
// A plain `{}` is not one (a disabled GradScaler's state is that).
bool is_state_dict(const pickle::Graph& graph);

// A numpy type string ("<u4", "|b1") as the dtype name numpy prints ("uint32", "bool").
std::string numpy_dtype_name(const std::string& descr);

// Why numpy (ndarray.__setstate__, numpy.core.multiarray.scalar) would refuse a numpy array's state as read, so
// that torch.load of the file fails; nullopt when it takes it. An array never given its state (no BUILD) is
// numpy's empty array.
std::optional<std::string> numpy_state_problem(const pickle::NdArray& array);

// Why a numpy array or dtype cannot be kept exactly in the pickle-free form (checkpoint/structure.hpp) and written
// back as numpy pickled it; nullopt when it can: a bool, integer, float or complex dtype whose state is a byte order
// alone, and, for an array, raw bytes of its size in either memory order.
std::optional<std::string> numpy_unstorable(const pickle::NdArray& array);
std::optional<std::string> numpy_dtype_unstorable(const std::string& descr, bool plain_dtype);

}  // namespace ckpt::checkpoint
