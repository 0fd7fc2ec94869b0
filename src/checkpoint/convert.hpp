// `ckpt convert`: weights between torch.save pickles and safetensors (single or sharded, with a dtype cast),
// the other checkpoint files to and from a pickle-free safetensors form, and whole checkpoint directories.
//
// Names: pytorch_model.bin <-> model.safetensors; sharded pytorch_model-0000i-of-0000N.bin <->
// model-0000i-of-0000N.safetensors with Hugging Face's index json; optimizer.pt -> optimizer.safetensors (the
// original name is kept in the metadata and restored). Safetensors metadata keys written besides
// {"format": "pt"}: ckpt_order (the state dict's key order), ckpt_aliases (tied tensors dropped from the file,
// as transformers does, and the tensor each one was tied to), ckpt_attributes (the state dict's _metadata),
// ckpt_structure (checkpoint/structure.hpp, for non-weights files), ckpt_source_name.
//
// Consolidating optimizer shards: "state" holds every shard's entries in index order (as the optimizer of one
// process saves them), "param_groups" are shard 0's (every shard holds the whole optimizer's), "shard" is dropped.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "format/dtype.hpp"

namespace ckpt::checkpoint {

enum class ConvertTarget { safetensors, pytorch };

struct ConvertOptions {
  ConvertTarget to = ConvertTarget::safetensors;
  std::optional<std::uint64_t> max_shard_size;  // makes weights a directory of shards with an index
  std::optional<DType> dtype;                   // cast floating weights (float32, float16, bfloat16)
  bool include_state = false;                   // in a directory: convert optimizer/scheduler/scaler/rng too
  // In a directory: merge the optimizer shards (optimizer_<rank>.pt, checkpoint/shards.hpp) into one optimizer.pt
  // that torch.optim loads.
  bool consolidate = false;
  bool copy_weights = false;  // in a directory: copy the weights as they are, whatever `to`
  bool dry_run = false;
  bool force = false;  // replace an existing destination
  // Called as tensor data is written, with the input file being converted (its name; the first of several and how
  // many more) and its bytes done and in all.
  std::function<void(const std::string& file, std::uint64_t done, std::uint64_t total)> progress;
  // Set (by a signal handler) to stop: convert throws Error(interrupted) at the next chunk or file, and what it had
  // begun to write is removed as on any failure. The destination is left as it was.
  const std::atomic<bool>* interrupted = nullptr;
};

struct ConvertedFile {
  std::string source;  // empty for files made from scratch (an index)
  std::string destination;
  std::string action;       // converted, copied, written, converted one way to JSON
  std::uint64_t bytes = 0;  // of the destination (0 on a dry run)
};

struct ConvertResult {
  std::string destination;
  std::vector<ConvertedFile> files;
  std::vector<std::string> notes;  // what a reader should know (aliases dropped, one-way conversions)
};

// Throws Error: not_found (missing source or shard), corrupt/unsupported (what cannot be converted, named),
// invalid_argument (existing destination without force, a dtype the target cannot hold), io, interrupted.
ConvertResult convert(const std::string& source, const std::string& destination, const ConvertOptions& options);

// Whether `source` is a directory of a multi-GPU layout that --consolidate assembles into one model (DeepSpeed ZeRO,
// FSDP) rather than one whose optimizer shards it merges: its weights are then always written, never copied.
bool holds_partitioned_weights(const std::string& source);

// "5GB" -> 5e9, "512MiB" -> 512 * 2^20; units B, KB, MB, GB, TB, KiB, MiB, GiB, TiB (Hugging Face's
// convert_file_size_to_int). Nullopt for anything else.
std::optional<std::uint64_t> parse_size(const std::string& text);

}  // namespace ckpt::checkpoint
