// The per-process files of a checkpoint written by several processes (ckpt save --nproc-per-node N, or the
// Hugging Face Trainer under DDP):
//   rng_state_<rank>.pth   each process's generators (rng_state.pth when there was one process)
//   optimizer_<rank>.pt    with --shard-optimizer (ZeRO stage 1), each process's share of the optimizer state
//                          instead of optimizer.pt: a torch.optim state dict whose "state" holds only the
//                          parameters the rank owns, whose "param_groups" are the whole optimizer's, plus
//                          "shard": {"rank": r, "world_size": N, "params": [the state indices it owns]}
// Torch-free: list, inspect and convert use it as well as the trainer.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace ckpt::checkpoint {

struct Source;

inline constexpr const char* kShardKey = "shard";

std::string optimizer_shard_name(int rank);            // optimizer_<rank>.pt
std::string rng_state_name(int rank, int world_size);  // rng_state.pth for one process, else rng_state_<rank>.pth

struct OptimizerShards {
  int world_size = 0;
  std::vector<std::string> files;  // names, by rank
};

// The optimizer shards of a checkpoint directory; nullopt when it has none. Reads the pickles only (never tensor
// bytes). Throws corrupt when the set is not whole (a shard missing, or shards disagreeing about the world size
// or their ranks), unsupported for an optimizer_<n>.pt that ckpt did not write (no shard record).
std::optional<OptimizerShards> find_optimizer_shards(const std::string& dir);

// How many processes wrote the checkpoint: its optimizer shards' world size, else one more than the highest
// rank of its rng_state_<rank>.pth files, else 1.
int checkpoint_world_size(const std::string& dir);

// Checks loaded shards (in rank order) against each other: each holds state only for the indices its
// shard.params lists, those lists are disjoint and together cover every parameter of param_groups, and every
// shard has the same param_groups. Throws corrupt naming the shard.
void check_shard_set(const std::vector<const Source*>& shards);

}  // namespace ckpt::checkpoint
