// DeepSpeed ZeRO checkpoints inside Hugging Face checkpoint directories (docs/deepspeed-format.md has the layout,
// the keys and the partitioning, read from DeepSpeed's save code):
//
//   checkpoint-N/latest         = TAG                      one path component naming a directory below
//   checkpoint-N/TAG/           = model* optim{world}
//     model  = mp_rank_00_model_states.pt                   stages 1, 2
//            | zero_pp_rank_<r>_mp_rank_00_model_states.pt  stage 3, r = 0 .. world-1
//     optim  = [bf16_]zero_pp_rank_<r>_mp_rank_00_optim_states.pt, r = 0 .. world-1, world = partition_count
//
// Reading opens every rank's files (torch.save zips, their pickles parsed, tensor bytes never touched) and checks
// what the files promise each other: ranks and files, stage, world size, groups, version and step agree, and the
// partitions cover every parameter exactly. Consolidation then describes each tensor of the fp32 state dict that
// DeepSpeed's get_fp32_state_dict_from_zero_checkpoint returns as runs of elements in those files
// (checkpoint/assembled.hpp), for convert to stream out.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "checkpoint/assembled.hpp"
#include "checkpoint/source.hpp"
#include "format/dtype.hpp"
#include "format/json.hpp"

namespace ckpt::checkpoint::zero {

inline constexpr const char* kLatestName = "latest";

// Whether `dir` has DeepSpeed's `latest` entry (of any type): the mark of the layout, judged by reading it.
bool has_layout(const std::string& dir);

struct Parameter {
  std::string name;
  std::vector<std::int64_t> shape;
  std::uint64_t numel = 0;
};

struct ParamGroup {
  std::vector<Parameter> parameters;  // trainable, in the optimizer's order
  std::uint64_t numel = 0;
  json::Json hyperparameters;  // the torch optimizer's param_groups entry without `params`
};

struct RankFiles {
  std::string optim;                  // path
  std::string model;                  // path (stages 1/2: rank 0 only)
  std::uint64_t bytes = 0;            // of the rank's files
  std::uint64_t partition_numel = 0;  // fp32 master elements the rank holds, padding excluded
};

// The Adam state of one trainable parameter, as the optimizer of one process holds it.
struct OptimizerEntry {
  AssembledTensor exp_avg;  // named as the parameter
  AssembledTensor exp_avg_sq;
  // `step`, its group's (torch's AdamW keeps one per parameter, the same within a group): a 0-d tensor, or in files
  // of older torch the value at `step_node` of `step_source` (a number). Absent when the state has none.
  std::optional<AssembledTensor> step;
  const Source* step_source = nullptr;
  pickle::NodeId step_node = 0;
};

class Checkpoint {
 public:
  // Reads and checks the DeepSpeed checkpoint in `dir` (a checkpoint-N directory with `latest`). Throws Error naming
  // the file: corrupt when something it promises is missing or does not add up, unsupported for a variant this
  // reader does not know (DeepSpeed's BF16_Optimizer, MoE, model parallelism, elastic optimizer states).
  explicit Checkpoint(const std::string& dir);

  int stage() const { return stage_; }
  int world_size() const { return world_; }
  const std::string& tag() const { return tag_; }
  std::int64_t global_steps() const { return global_steps_; }
  const std::string& ds_version() const { return ds_version_; }
  DType model_dtype() const { return model_dtype_; }  // the 16-bit model's
  const std::vector<ParamGroup>& groups() const { return groups_; }
  const std::vector<Parameter>& frozen() const { return frozen_; }
  const std::vector<Parameter>& buffers() const { return buffers_; }
  const std::vector<std::pair<std::string, std::string>>& shared() const { return shared_; }  // alias, target
  const std::vector<RankFiles>& ranks() const { return ranks_; }
  std::uint64_t trainable_parameters() const;  // elements, padding excluded, a tied parameter once
  std::uint64_t frozen_parameters() const;
  // Every file read, rank 0's model states first: what --verify checks the records of.
  std::vector<const Source*> sources() const;
  // "deepspeed zero-2 x4"
  std::string describe() const;

  // get_fp32_state_dict_from_zero_checkpoint's tensors in its order: buffers (as float32), frozen parameters (as
  // saved), trainable parameters (float32), then each shared name tied to its target.
  const std::vector<AssembledTensor>& fp32_state_dict() const { return state_dict_; }
  // The Adam moments of every trainable parameter, in group order, cut as the weights are; `step` per group.
  // Throws unsupported when the optimizer state holds no exp_avg / exp_avg_sq (another optimizer).
  const std::vector<OptimizerEntry>& optimizer_state() const;
  // The torch optimizer's param_groups entry of group `g` in rank 0's file (copied by convert).
  pickle::NodeId param_group_node(std::size_t g) const { return param_group_nodes_[g]; }
  const Source& rank0_optim() const { return *optim_[0]; }
  // The engine's own scheduler state (model states' lr_scheduler), or 0 when it has none.
  pickle::NodeId lr_scheduler_node() const { return lr_scheduler_; }
  const Source& rank0_model() const { return *model_[0]; }

 private:
  friend class Reader;

  std::string tag_;
  int stage_ = 0;
  int world_ = 0;
  std::int64_t global_steps_ = 0;
  std::string ds_version_;
  DType model_dtype_ = DType::float16;
  std::vector<std::unique_ptr<Source>> model_;  // stage 3: one per rank; else rank 0's
  std::vector<std::unique_ptr<Source>> optim_;  // one per rank
  std::vector<ParamGroup> groups_;
  std::vector<Parameter> frozen_;
  std::vector<Parameter> buffers_;
  std::vector<std::pair<std::string, std::string>> shared_;
  std::vector<RankFiles> ranks_;
  std::vector<pickle::NodeId> param_group_nodes_;
  pickle::NodeId lr_scheduler_ = 0;
  std::vector<AssembledTensor> state_dict_;
  std::vector<OptimizerEntry> optimizer_;
  std::string no_optimizer_state_;  // why optimizer_state() has nothing, when it has not
};

}  // namespace ckpt::checkpoint::zero
