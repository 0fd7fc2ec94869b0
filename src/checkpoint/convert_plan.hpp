// Internal to convert (checkpoint/convert*.cpp): what a conversion writes, decided before anything is written. The
// weights of a state dict by name with their ties, the dtype each is written in, how they are cut into shards, which
// files of a directory --include-state converts and the names they take and go back to, and the refusals: a --dtype
// that is no target, a state dict that is not one, two inputs that would become one output. Pure functions of
// parsed sources and options: no file is read or written here.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "checkpoint/assembled.hpp"
#include "checkpoint/convert.hpp"
#include "checkpoint/source.hpp"
#include "checkpoint/weights_layout.hpp"
#include "format/dtype.hpp"
#include "format/pickle.hpp"

namespace ckpt::checkpoint::convert_detail {

// A named tensor of a state dict: a tensor of a source file, or one assembled from several (--consolidate).
struct Weight {
  std::string name;
  const Source* source = nullptr;
  pickle::NodeId node = 0;                     // the tensor node in the source's graph
  std::optional<std::string> tied_to;          // the same view as an earlier tensor
  const AssembledTensor* assembled = nullptr;  // instead of source and node
};

// The tensor of a weight from a source file (not an assembled one).
const pickle::TensorRef& tensor_of(const Weight& w);
const std::vector<std::int64_t>& shape_of(const Weight& w);
DType dtype_of(const Weight& w);
// The weights of assembled tensors, ties kept.
std::vector<Weight> assembled_weights(const std::vector<AssembledTensor>& tensors);

// Appends the tensors of `s`'s state dict in its order, each tied to the first tensor (of `out` or `s`) that is the
// very same view. Throws unsupported when the root is no state dict of tensors.
void collect_weights(const Source& s, std::vector<Weight>& out);

// The dtype a tensor of `dtype` is written in: --dtype for floating dtypes that can be cast to it, else its own.
DType output_dtype(DType dtype, const ConvertOptions& options);

std::uint64_t nbytes_of(const std::vector<std::int64_t>& shape, DType dtype);

struct WeightsPlan {
  std::vector<std::vector<std::size_t>> shards;  // indices into the weights, in order
  std::uint64_t total_size = 0;                  // bytes, tied tensors counted once
};

// The shards of --max-shard-size (greedy_shards over the untied tensors' output sizes; one shard without it), a
// tied tensor in its tie's shard, state-dict order kept within each shard.
WeightsPlan plan_shards(const std::vector<Weight>& weights, const ConvertOptions& options);

WeightsFormat format_of(ConvertTarget to);

// Refuses (invalid_argument, where "--dtype") a --dtype that is not a floating target float32 can be cast to.
void check_dtype_option(const ConvertOptions& options);

// The files --include-state converts: what a name promises, as inspect and completeness read names.
bool is_state_file_name(const std::string& name);

// The name a state file takes as safetensors: optimizer.pt -> optimizer.safetensors.
std::string state_safetensors_name(const std::string& name);

// The name a state file ckpt stored as STEM.safetensors goes back to. The name comes from the file's own metadata
// (ckpt_source_name: it keeps rng_state.pth's extension), so it is trusted only as far as the file's name vouches
// for it: the same stem with an extension torch.save files of a checkpoint carry. Throws corrupt otherwise.
std::string restored_state_name(const Source& s);

// Every output of a directory conversion is made from one input: a second input that would become the same file
// (a copied file named like a converted one, two names converting to one) is refused (unsupported, naming `input`)
// before it replaces the first. `first`: the first of result.files that this conversion made.
void claim_output(const ConvertResult& result, std::size_t first, const std::string& destination,
                  const std::string& input);

}  // namespace ckpt::checkpoint::convert_detail
