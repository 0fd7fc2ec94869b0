// Internal to convert (checkpoint/convert*.cpp): the writers. Tensors go out in safetensors files or torch.save
// zips, copied (copy_file_range) when no cast is needed, else cast 4 MiB at a time, strided views gathered; value
// graphs are rebuilt in a new graph through the structure encoding (checkpoint/structure.hpp), their storages
// filled from the source files. Every file goes through AtomicFile with direct I/O; progress is reported, and
// ConvertOptions::interrupted checked, at each chunk (Progress), so an interrupted write throws and its temporary
// is removed.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "checkpoint/convert.hpp"
#include "checkpoint/convert_plan.hpp"
#include "checkpoint/source.hpp"
#include "format/json.hpp"
#include "format/pickle.hpp"
#include "util/error.hpp"

namespace ckpt::checkpoint::convert_detail {

// "a.bin", or "a.bin and 2 more": the input files one progress counts the bytes of.
std::string inputs_label(const std::vector<std::string>& paths);

// The bytes written from one input (or one set of shards), reported as they go; where a conversion may stop.
struct Progress {
  const ConvertOptions& options;
  std::string inputs;  // inputs_label
  std::uint64_t done = 0;
  std::uint64_t total = 0;
  void advance(std::uint64_t n) {
    done += n;
    stop_if_interrupted(options.interrupted);
    if (options.progress) options.progress(inputs, done, total);
  }
};

// ---- safetensors output ----

struct SafetensorsItem {
  std::string name;
  const Source* source = nullptr;
  const pickle::TensorRef* tensor = nullptr;  // or, for a numpy array:
  const pickle::NdArray* array = nullptr;
  DType dtype = DType::uint8;
  const AssembledTensor* assembled = nullptr;  // instead of a tensor or an array
};

// Writes `items` (tensors cast to their item's dtype, arrays as bytes) with `metadata`. Throws unsupported for a
// dtype safetensors has no code for, naming the tensor.
void write_safetensors_file(const std::string& path, std::vector<SafetensorsItem> items,
                            const std::vector<std::pair<std::string, std::string>>& metadata, Progress& progress);

// ---- torch output ----

// Storages of a graph being written, each with the bytes that fill it.
struct StorageFill {
  const Source* source = nullptr;
  std::uint32_t source_storage = 0;
  DType from = DType::uint8;
  bool zero_dim = false;                       // holds a single 0-d tensor (torch casts those with its scalar code)
  const AssembledTensor* assembled = nullptr;  // instead of a source storage: these pieces
};

// Writes `g` as a torch.save zip, storage i filled from fills[i] (cast to the storage's dtype).
void write_torch_file(const std::string& path, const pickle::Graph& g, const std::vector<StorageFill>& fills,
                      Progress& progress);

// Copies tensors of source graphs into `g` (storages shared as in the sources, optionally cast).
class GraphBuilder {
 public:
  GraphBuilder(pickle::Graph& g, std::vector<StorageFill>& fills, const ConvertOptions& options)
      : g_(g), fills_(fills), options_(options) {}

  // The copy of the tensor at `source_node` of `s` (one copy per source tensor, one storage per source storage).
  // Throws unsupported for a cast of a tensor of an untyped storage.
  pickle::NodeId tensor(const Source& s, pickle::NodeId source_node);
  // A contiguous tensor of its own storage, filled from `t`'s pieces and cast as options ask.
  pickle::NodeId tensor(const AssembledTensor& t);

 private:
  pickle::Graph& g_;
  std::vector<StorageFill>& fills_;
  const ConvertOptions& options_;
  std::map<std::pair<const Source*, std::uint32_t>, std::uint32_t> storages_;
  std::map<std::pair<const Source*, pickle::NodeId>, pickle::NodeId> nodes_;
};

// A copy of the value at `node` of `s` in `g`, its tensors through `builder` (storages follow them).
pickle::NodeId copy_value(const Source& s, pickle::NodeId node, pickle::Graph& g, GraphBuilder& builder);

pickle::NodeId add_string(pickle::Graph& g, const std::string& text);
pickle::NodeId add_integer(pickle::Graph& g, std::int64_t value);

// The state dict's BUILD attributes (`_metadata`), copied across graphs through the structure encoding.
std::optional<json::Json> attributes_of(const Source& s);

// ---- weights ----

// Writes the weights `subset` (indices into `weights`) as one file in options.to's format: safetensors with the
// ckpt_aliases, ckpt_order and ckpt_attributes metadata it needs, or a torch state dict (ties kept as shared views).
void write_weights_file(const std::string& path, const std::vector<Weight>& weights,
                        const std::vector<std::size_t>& subset, const std::optional<json::Json>& attributes,
                        const ConvertOptions& options, Progress& progress);

// A written file's size for the result; 0 when it cannot be read.
std::uint64_t file_size_or_zero(const std::string& path);

}  // namespace ckpt::checkpoint::convert_detail
