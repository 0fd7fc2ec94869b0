// Between LibTorch tensors and checkpoint files: dtype names, tensors read out of a loaded file (format
// readers, never torch's unpickler), and value graphs built from live tensors for the pickle writer.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "checkpoint/source.hpp"
#include "format/dtype.hpp"
#include "format/pickle.hpp"
#include "util/direct_reader.hpp"

namespace ckpt::train {

at::ScalarType to_scalar_type(DType dtype);  // throws unsupported for types LibTorch 1.13 lacks
DType to_dtype(at::ScalarType type);

// The bytes of a contiguous CPU tensor.
std::span<const std::uint8_t> bytes_of(const at::Tensor& tensor);

// An uninitialised contiguous tensor; a large one in memory of its own advised to use transparent huge pages, so
// that a checkpoint's gigabytes fault in 2 MiB at a time (a 4 KiB page fault costs microseconds under a
// hypervisor, and torch 1.13's allocator gives no such advice).
at::Tensor empty_large(at::IntArrayRef shape, at::ScalarType type);

// An owned, contiguous copy of a tensor stored in `source`, which must have `shape` and `type` (checked before
// anything is allocated, so a hostile file cannot make it large: invalid_argument naming `name`).
at::Tensor read_tensor_as(const checkpoint::Source& source, DirectReader& reader, pickle::NodeId tensor_node,
                          at::IntArrayRef shape, at::ScalarType type, const std::string& name);
// The same into `destination`, which has the stored tensor's shape and dtype (checked: invalid_argument). A
// contiguous stored tensor is read straight into it through `reader` (the same file, util/direct_reader.hpp).
void read_tensor_into(const checkpoint::Source& source, DirectReader& reader, pickle::NodeId tensor_node,
                      const at::Tensor& destination, const std::string& name);

// Builds the value graph of a file to write; tensors keep a reference to the live (or snapshot) tensor whose
// bytes become their storage's record.
class GraphMaker {
 public:
  pickle::NodeId none() { return graph.none(); }
  pickle::NodeId boolean(bool value);
  pickle::NodeId integer(std::int64_t value);
  pickle::NodeId number(double value);
  pickle::NodeId text(const std::string& value);
  pickle::NodeId list(std::vector<pickle::NodeId> items);
  pickle::NodeId tuple(std::vector<pickle::NodeId> items);
  // Keys and values alternating, in insertion order; `ordered` makes it a collections.OrderedDict.
  pickle::NodeId dict(std::vector<pickle::NodeId> items, bool ordered = false);
  // A contiguous tensor with a storage of its own.
  pickle::NodeId tensor(const at::Tensor& tensor);
  // A numpy array of little-endian uint32 (np.random.get_state()'s key).
  pickle::NodeId uint32_array(std::span<const std::uint32_t> values);

  // Writes the graph rooted at `root` as a torch.save file, atomically, with direct I/O (util/atomic_file.hpp);
  // `durable` false inside a staging directory whose files the caller fsyncs (util/atomic_file.hpp).
  void write(const std::string& path, pickle::NodeId root, bool durable);

  pickle::Graph graph;
  std::vector<at::Tensor> storages;  // parallel to graph.storages
};

// Reading values out of a parsed graph; each throws a corrupt Error naming `what` when the shape is wrong.
struct GraphReader {
  const pickle::Graph& graph;
  std::string path;

  [[noreturn]] void bad(const std::string& what) const;
  pickle::NodeId get(pickle::NodeId dict, const std::string& key) const;  // required key of a dict
  const pickle::Node& expect(pickle::NodeId id, pickle::Kind kind, const std::string& what) const;
  std::int64_t integer(pickle::NodeId id, const std::string& what) const;
  double number(pickle::NodeId id, const std::string& what) const;  // a float or an int
  std::vector<pickle::NodeId> items(pickle::NodeId id, pickle::Kind kind, const std::string& what) const;
};

}  // namespace ckpt::train
