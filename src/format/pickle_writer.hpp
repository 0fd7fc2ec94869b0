// Writing a pickle::Graph value back as a protocol-2 pickle that Python's torch.load reads, using only globals
// that torch.load(weights_only=True) accepts for state dicts and optimizer/scheduler/scaler states
// (collections.OrderedDict, torch._utils._rebuild_tensor_v2 / _rebuild_parameter, torch.<Type>Storage,
// _codecs.encode, builtins set/frozenset/bytes) plus, only when the value holds them, numpy's array and dtype
// reconstructors (rng_state), torch.device, and whatever globals an opaque object names.
//
// Grammar of what is written (a subset of format/pickle.hpp's):
//   pickle  = PROTO 2 value STOP
//   value   = NONE | NEWTRUE | NEWFALSE | BININT1/BININT2/BININT/LONG1 | BINFLOAT | BINUNICODE
//           | bytes | tuple | list | dict | ordered_dict | set | tensor | ... , each container followed by BINPUT
//             so that a value referenced twice in the graph is written once and fetched with BINGET
//   tensor  = GLOBAL torch._utils _rebuild_tensor_v2 ( BINPERSID(storage_pid) offset size stride
//             requires_grad ordered_dict() ) REDUCE
//   storage_pid = ('storage', GLOBAL torch <Type>Storage, key, location, numel)
#pragma once

#include <string>

#include "format/pickle.hpp"

namespace ckpt::pickle {

// Serialises the value at `root`. Storages are written as persistent ids with their StorageRef's key; the
// caller writes each storage's bytes as the record data/<key>.
std::string write(const Graph& graph, NodeId root);

}  // namespace ckpt::pickle
