// Internal to convert (checkpoint/convert*.cpp): the checkpoint files that are not weights. A state file (optimizer,
// scheduler, scaler, RNG state) goes to safetensors with its structure in the metadata and back to a torch.save
// zip; optimizer shards are merged into one optimizer.pt; training_args.bin goes one way, to JSON data; a config
// takes the torch_dtype of cast weights. Each adds what it wrote (nothing on a dry run) to the result.
#pragma once

#include <string>

#include "checkpoint/convert.hpp"
#include "checkpoint/shards.hpp"
#include "checkpoint/source.hpp"
#include "format/dtype.hpp"

namespace ckpt::checkpoint::convert_detail {

// A state file to options.to: safetensors (tensors and arrays as entries, the rest as ckpt_structure), or from such
// a file (or a plain state dict of safetensors) to torch. Throws unsupported for a file ckpt cannot convert so.
void convert_state(const Source& s, const std::string& destination, const ConvertOptions& options,
                   ConvertResult& result);

// The optimizer shards of `dir` merged into one torch optimizer state dict at `destination` (convert.hpp says
// how). Throws corrupt for shards that do not form one set or hold one parameter twice.
void consolidate_optimizer(const std::string& dir, const OptimizerShards& shards, const std::string& destination,
                           const ConvertOptions& options, ConvertResult& result);

// training_args.bin as JSON data: {"class", "fields"} of an object, else {"value"}; one way, said in the notes.
void training_args_to_json(const Source& s, const std::string& destination, const ConvertOptions& options,
                           ConvertResult& result);

// The config of weights cast to `dtype` says so, as transformers' save_pretrained writes it: torch_dtype the
// dtype's name, the whole file as json.dumps(indent=2, sort_keys=True) plus a newline.
void write_config_with_dtype(const std::string& source, const std::string& destination, DType dtype,
                             const ConvertOptions& options);

}  // namespace ckpt::checkpoint::convert_detail
