// What a checkpoint file's name promises (pytorch_model.bin holds weights, scheduler.pt a scheduler's state, ...)
// and whether its value has the structure resume needs: a name alone is no proof, a `{}` or an unrelated pickle
// under it would only fail at the next resume.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "format/pickle.hpp"

namespace ckpt::checkpoint {

// What a file of a checkpoint is, as inspect classifies it by content. Code that treats kinds differently switches
// over FileKind without a default arm, so a kind added here without its handling fails to compile.
enum class FileKind : std::uint8_t {
  weights,
  weights_index,
  optimizer,
  scheduler,
  scaler,
  rng_state,
  trainer_state,
  training_args,
  config,
  json,       // any other JSON file
  pickle,     // any other torch.save value
  archive,    // a ckpt archive of a checkpoint directory
  deepspeed,  // DeepSpeed's own: `latest`, its tag's model and optimizer states, zero_to_fp32.py (never run)
  other,      // a file ckpt does not read
  error,      // a file that could not be read (in directory reports)
};

// The kind's name in inspect's text and --json (docs/inspect-json.md): "weights", "weights_index", "rng_state", ...
std::string_view kind_name(FileKind kind);

// The kind a file name promises: weights (pytorch_model*.bin, model*.safetensors, adapter_model.*), optimizer
// (optimizer.pt, optimizer_<rank>.pt), scheduler, scaler, rng_state (rng_state[_<rank>].pth); nullopt for any other
// name.
std::optional<FileKind> promised_kind(const std::string& file_name);

// What is wrong with the value at the graph's root as a file of `kind` (one promised_kind returns), or nullopt:
//   weights    a non-empty dict of name -> tensor
//   optimizer  a dict with "state" (parameter index -> dict of named values) and "param_groups" (non-empty list of
//              dicts, each with "params": indices, every index in one group), torch.optim's state_dict
//   scheduler  LambdaLR's state_dict: "base_lrs" and "_last_lr" lists of numbers of one length, "last_epoch" an int
//   scaler     GradScaler's state_dict: {} (disabled) or "scale", "growth_factor", "backoff_factor" numbers and
//              "growth_interval", "_growth_tracker" ints
//   rng_state  the Trainer's RNG dict: "python" (random.getstate()), "numpy" (('MT19937', array, pos, has_gauss,
//              gauss)), "cpu" (a tensor), and only generator names as keys
std::optional<std::string> kind_problem(const pickle::Graph& graph, FileKind kind);

}  // namespace ckpt::checkpoint
