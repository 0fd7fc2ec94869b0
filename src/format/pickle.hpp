// A restricted unpickler: turns pickle bytes (protocols 0 to 5) into a plain value graph and never executes
// anything. Globals are recorded by name; the few reconstructors that checkpoints use are interpreted (see
// `interpret_call`), every other call becomes an opaque `object` node that carries its callable, arguments and
// state, to be shown and never called.
//
// Grammar (the pickle virtual machine, as CPython's Lib/pickle.py defines it):
//   pickle   = [PROTO u8] op* STOP
//   op       = push | memo | build | frame ; each reads its operands right after the opcode byte:
//     push:  NONE | NEWTRUE | NEWFALSE | INT line | LONG line | BININT i32 | BININT1 u8 | BININT2 u16
//            | LONG1 u8 n bytes[n] | LONG4 i32 n bytes[n] | FLOAT line | BINFLOAT f64be
//            | STRING line | BINSTRING i32 n | SHORT_BINSTRING u8 n | UNICODE line | BINUNICODE u32 n
//            | SHORT_BINUNICODE u8 n | BINUNICODE8 u64 n | BINBYTES u32 n | SHORT_BINBYTES u8 n
//            | BINBYTES8 u64 n | BYTEARRAY8 u64 n | EMPTY_TUPLE | EMPTY_LIST | EMPTY_DICT | EMPTY_SET
//            | GLOBAL line line | STACK_GLOBAL | PERSID line | BINPERSID
//     memo:  PUT line | BINPUT u8 | LONG_BINPUT u32 | MEMOIZE | GET line | BINGET u8 | LONG_BINGET u32
//     build: MARK | POP | POP_MARK | DUP | TUPLE | TUPLE1 | TUPLE2 | TUPLE3 | LIST | DICT | FROZENSET
//            | APPEND | APPENDS | SETITEM | SETITEMS | ADDITEMS | REDUCE | BUILD | NEWOBJ | NEWOBJ_EX
//            | INST line line | OBJ
//     frame: FRAME u64 (a hint; ignored)
//   Refused: EXT1/2/4 (the copyreg extension registry) and out-of-band buffers (NEXT_BUFFER, READONLY_BUFFER).
//
// Limits: every length is checked against the bytes that remain; at most kMaxNodes values; after parsing the
// graph must be acyclic and at most kMaxDepth deep, so every recursive walk over it terminates.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "format/dtype.hpp"

namespace ckpt::pickle {

using NodeId = std::uint32_t;

inline constexpr std::size_t kMaxNodes = 8u << 20;
inline constexpr std::size_t kMaxDepth = 512;

enum class Kind : std::uint8_t {
  none,
  boolean,
  integer,
  big_integer,
  floating,
  string,
  bytes,
  list,
  tuple,
  dict,
  set,
  frozenset,
  global,       // a module attribute named, never resolved: text = "module\nqualname"
  object,       // an opaque call: items = [callable, args, state or none, ...]; see Node
  storage,      // a torch storage reference (persistent id); index into Graph::storages
  tensor,       // a torch tensor view; index into Graph::tensors
  ndarray,      // a numpy array; index into Graph::arrays
  numpy_dtype,  // a numpy dtype: text = type string ("u4"), integer = byte order char, flag = its pickled state
                // held more than a byte order (fields, a subarray, metadata, an element size), which is not kept
  device,       // a torch.device: text = "cpu", "cuda:0"
};

// One value. Which fields matter depends on `kind`:
//   boolean: flag; integer: integer; big_integer: text = little-endian two's complement bytes;
//   floating: number; string: text (UTF-8); bytes: text (raw); list/tuple/set/frozenset: items;
//   dict: items = k0, v0, k1, v1, ... in insertion order, flag = ordered (an OrderedDict), attributes = the
//   BUILD state (e.g. a state dict's `_metadata`) or 0 when none;
//   object: items = [callable, args, state, appended, set_items]: state is the BUILD argument (None when
//   none), appended a list of APPENDed values and set_items a dict of SETITEMs (None until used);
//   flag = created by NEWOBJ rather than REDUCE.
struct Node {
  Kind kind = Kind::none;
  bool flag = false;
  std::int64_t integer = 0;
  double number = 0;
  std::string text;
  std::vector<NodeId> items;
  NodeId attributes = 0;
};

// Positions in an object node's items.
enum ObjectSlot : std::size_t { object_callable, object_args, object_state, object_appended, object_set_items };

struct StorageRef {
  std::string key;  // the archive record name under data/
  DType dtype = DType::uint8;
  std::string location;     // "cpu", "cuda:0"
  std::uint64_t numel = 0;  // elements of dtype (bytes for an untyped storage)
  bool untyped = false;
};

struct TensorRef {
  std::uint32_t storage = 0;  // index into Graph::storages
  DType dtype = DType::uint8;
  std::int64_t storage_offset = 0;  // in elements
  std::vector<std::int64_t> shape;
  std::vector<std::int64_t> stride;
  bool requires_grad = false;
  bool is_parameter = false;

  // Storage elements from the view's first element to its last (0 when it has none). Only for views the reader
  // accepted or a writer built: their arithmetic is known not to overflow.
  std::uint64_t element_extent() const;
};

// A numpy array as ndarray.__reduce__ pickles it: _reconstruct, then BUILD (version, shape, dtype, is_fortran,
// raw data); or a numpy scalar (numpy.core.multiarray.scalar(dtype, raw data)).
struct NdArray {
  std::string descr;  // numpy's type string with byte order: "<u4", "|u1", "<f8"
  std::vector<std::int64_t> shape;
  std::string data;            // the raw bytes, at most what the pickle held
  bool fortran_order = false;  // `data` is in column-major order (numpy pickles an F-contiguous array so)
  bool plain_dtype = true;     // the dtype's state was only a byte order (see Kind::numpy_dtype)
  bool scalar = false;         // a numpy scalar, not an array
  // How the raw data came: as bytes (or a latin-1 str), as a list of objects (an object array: not kept), or as
  // something else numpy would refuse. An array never given its state (no BUILD) has an empty descr.
  enum class Data : std::uint8_t { bytes, object_list, other } data_kind = Data::bytes;
};

class Graph {
 public:
  Graph();
  NodeId add(Node node);
  // A tensor or numpy array node for the value, which the graph keeps in `tensors` / `arrays`.
  NodeId add_tensor(TensorRef tensor);
  NodeId add_array(NdArray array);
  const Node& at(NodeId id) const { return nodes_[id]; }
  Node& at(NodeId id) { return nodes_[id]; }
  std::size_t size() const { return nodes_.size(); }
  NodeId root() const { return root_; }
  void set_root(NodeId id) { root_ = id; }
  NodeId none() const { return 0; }

  std::vector<StorageRef> storages;
  std::vector<TensorRef> tensors;
  std::vector<NdArray> arrays;

  // Helpers for readers of the graph.
  bool is(NodeId id, Kind kind) const { return nodes_[id].kind == kind; }
  bool is_global(NodeId id, std::string_view module, std::string_view name) const;
  std::string global_name(NodeId id) const;  // "module.qualname" for a global node
  // The value stored under string key `key` in dict `id`, or nullopt.
  const NodeId* dict_get(NodeId id, std::string_view key) const;

 private:
  std::vector<Node> nodes_;
  NodeId root_ = 0;
};

// Called for PERSID/BINPERSID with the persistent id's node; returns the node that replaces it.
using PersistentLoad = std::function<NodeId(Graph&, NodeId pid)>;

// Parses a whole pickle. Throws Error (corrupt or unsupported) with `where` = "byte N" of the pickle.
Graph parse(std::span<const std::uint8_t> bytes, const PersistentLoad& persistent_load = {});

// A torch.save'd legacy (pre-1.6) file starts with this pickled magic number.
bool looks_like_legacy_torch(std::span<const std::uint8_t> bytes);

}  // namespace ckpt::pickle
