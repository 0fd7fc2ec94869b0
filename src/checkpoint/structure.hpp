// A lossless JSON encoding of pickle values, so that optimizer, scheduler, scaler and RNG states can live in a
// safetensors file (tensors as tensors, the rest of the structure as JSON in __metadata__) and be turned back
// into exactly the object Python pickled.
//
// Grammar of the encoding E(v):
//   None, bool, str                     -> themselves
//   int (64-bit)                        -> a JSON integer;  other int -> {"$int": "<decimal digits>"}
//   float                               -> a JSON number written with a fraction or exponent (so it reads back
//                                          as a float); NaN/inf -> {"$float": "nan" | "inf" | "-inf"}
//   list                                -> [E...]
//   tuple / set / frozenset             -> {"$tuple": [E...]} / {"$set": [...]} / {"$frozenset": [...]}
//   dict with only string keys not starting with "$", not ordered, no attributes
//                                       -> {key: E, ...}
//   any other dict                      -> {"$dict": [[E(key), E(value)], ...], "$ordered": bool, "$attrs": E}
//   bytes                               -> {"$bytes": "<hex>"}
//   tensor                              -> {"$tensor": "<name in the safetensors file>", "requires_grad": bool,
//                                           "parameter": bool}
//   numpy array                         -> {"$ndarray": "<name>", "descr": "<u4", "shape": [...]}, plus
//                                          "fortran_order": true when its bytes are column-major, "scalar": true
//                                          for a numpy scalar; the raw bytes (numel * itemsize of them) are stored
//                                          as a 1-d uint8 tensor of that name. Only bool, integer, float and
//                                          complex dtypes of either byte order: object arrays, structured and
//                                          other dtypes cannot be encoded (unsupported)
//   numpy dtype                         -> {"$numpy_dtype": "<u4"}
//   torch.device                        -> {"$device": "cpu"}
//   a global                            -> {"$global": ["module", "qualname"]}
// Tensor names are the value's path: dict keys and sequence indices joined by '.' ("state.0.exp_avg", "cpu",
// "numpy.1"); a tensor reached twice is stored once and referenced by its first name.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "format/json.hpp"
#include "format/pickle.hpp"

namespace ckpt::checkpoint {

struct NamedArray {
  std::string name;
  pickle::NodeId node;  // a tensor or ndarray node
};

// Encodes the value at `root`; fills `arrays` with every tensor and numpy array to store, named by path.
// Opaque objects cannot be encoded: throws unsupported naming their class.
json::Json encode_structure(const pickle::Graph& graph, pickle::NodeId root, std::vector<NamedArray>& arrays);

// Builds the value back into `graph`. `make_tensor(name, requires_grad, is_parameter)` returns a tensor node
// for a stored tensor; `array_bytes(name)` returns a stored array's raw bytes. Throws corrupt on malformed JSON.
pickle::NodeId decode_structure(const json::Json& encoded, pickle::Graph& graph,
                                const std::function<pickle::NodeId(const std::string&, bool, bool)>& make_tensor,
                                const std::function<std::string(const std::string&)>& array_bytes);

}  // namespace ckpt::checkpoint
