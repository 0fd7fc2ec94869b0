// The trainer's arguments: one table (the X-macro lists below), which declares the typed structs the trainer
// reads (`args.training.learning_rate`: a misspelt name does not compile) and the rows from which the CLI registers
// `ckpt save` / `ckpt resume` flags and their help, training_args.bin is written (a plain dict of the training
// scope's keys, in this order) and read back, and config.json describes the model. Keys are Hugging Face's
// TrainingArguments names; flags are the keys in kebab-case. Strings and ArgValues appear only at those
// boundaries: the command line, training_args.bin, config.json and resume's overrides. Torch-free: the CLI
// includes it.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace ckpt::train {

// What a field may hold, built in the table as `.at_least(1)`, `.between(0, 1000)`. described_as: "must be
// <words>" replaces the message derived from the bounds ("must be positive", "must be between 1 and 1048576").
// NaN is outside any bounds.
template <typename T>
struct Bounds {
  std::optional<T> min;
  std::optional<T> max;
  bool max_excluded = false;
  const char* words = nullptr;

  constexpr Bounds at_least(T low) const {
    Bounds b = *this;
    b.min = low;
    return b;
  }
  constexpr Bounds between(T low, T high) const {
    Bounds b = *this;
    b.min = low;
    b.max = high;
    return b;
  }
  constexpr Bounds below(T high) const {
    Bounds b = *this;
    b.max = high;
    b.max_excluded = true;
    return b;
  }
  constexpr Bounds described_as(const char* text) const {
    Bounds b = *this;
    b.words = text;
    return b;
  }
};

inline constexpr std::int64_t kMaxModelWidth = std::int64_t{1} << 20;

// X(name, type, default, help, default_text, bounds...). std::optional: None is a value of its own (save_total_limit
// unset), resolved by the trainer. default_text: --help's words for such a default, or nullptr. bounds: calls on
// a Bounds of the field's value type (none: any value).
#define CKPT_MODEL_ARGUMENTS(X)                                                                                   \
  X(input_size, std::int64_t, 32, "Features per synthetic example", nullptr, .between(1, kMaxModelWidth))         \
  X(hidden_size, std::int64_t, 64, "Width of each hidden layer of the MLP", nullptr, .between(1, kMaxModelWidth)) \
  X(num_layers, std::int64_t, 2, "Hidden layers of the MLP", nullptr, .between(0, 1000))                          \
  X(num_labels, std::int64_t, 4, "Classes of the synthetic task", nullptr, .between(2, kMaxModelWidth))           \
  X(dropout, double, 0.0, "Dropout probability after each hidden layer", nullptr,                                 \
    .at_least(0.0).below(1.0).described_as("in [0, 1)"))

#define CKPT_TRAINING_ARGUMENTS(X)                                                                                   \
  X(output_dir, std::optional<std::string>, std::nullopt, "The run directory checkpoints are written to", nullptr)   \
  X(max_steps, std::int64_t, -1, "Optimizer steps to train; overrides --num-train-epochs when positive", nullptr)    \
  X(num_train_epochs, double, 3.0, "Epochs to train when --max-steps is not positive", nullptr)                      \
  X(per_device_train_batch_size, std::int64_t, 32, "Training batch size per process", nullptr, .at_least(1))         \
  X(per_device_eval_batch_size, std::int64_t, 128, "Evaluation batch size per process", nullptr, .at_least(1))       \
  X(learning_rate, double, 1e-3, "Peak learning rate of AdamW", nullptr, .at_least(0.0))                             \
  X(weight_decay, double, 0.0, "AdamW weight decay (not applied to biases)", nullptr)                                \
  X(adam_beta1, double, 0.9, "AdamW beta1", nullptr)                                                                 \
  X(adam_beta2, double, 0.999, "AdamW beta2", nullptr)                                                               \
  X(adam_epsilon, double, 1e-8, "AdamW epsilon", nullptr)                                                            \
  X(max_grad_norm, double, 1.0, "Clip the gradients' global L2 norm to this (0: no clipping)", nullptr)              \
  X(warmup_steps, std::int64_t, 0, "Linear warmup steps of the linear schedule", nullptr, .at_least(0))              \
  X(logging_steps, std::int64_t, 10, "Log loss, grad_norm, learning_rate every N steps", nullptr, .at_least(1))      \
  X(eval_steps, std::optional<std::int64_t>, std::nullopt, "Evaluate every N steps (0: never)", "--save-steps",      \
    .at_least(0))                                                                                                    \
  X(save_steps, std::int64_t, 20, "Save a checkpoint every N steps", nullptr, .at_least(1))                          \
  X(save_total_limit, std::optional<std::int64_t>, std::nullopt,                                                     \
    "Keep at most N checkpoints (the best is kept too), as ckpt rotate --keep", nullptr, .at_least(1))               \
  X(metric_for_best_model, std::string, "eval_loss", "Metric that decides the best checkpoint", nullptr)             \
  X(greater_is_better, std::optional<bool>, std::nullopt, "Whether a greater metric is better",                      \
    "false for losses, else true")                                                                                   \
  X(load_best_model_at_end, bool, false, "Save the best checkpoint's weights as the final model", nullptr)           \
  X(save_safetensors, bool, true, "Write model.safetensors rather than pytorch_model.bin", nullptr)                  \
  X(max_shard_size, std::string, "5GB", "Shard weights larger than this (B, KB, MB, GB, KiB, MiB, GiB)", nullptr)    \
  X(seed, std::int64_t, 42, "Seeds Python's random, numpy's and torch's generators, and the dataset", nullptr,       \
    .between(0, 0xffffffff).described_as("between 0 and 2**32 - 1 (numpy's range)"))                                 \
  X(fp16, bool, false, "Dynamic loss scaling with fp16 gradients (GradScaler semantics); writes scaler.pt", nullptr) \
  X(async_save, bool, false, "Write checkpoints from a background thread while training goes on (one process only)", \
    nullptr)                                                                                                         \
  X(shard_optimizer, bool, false,                                                                                    \
    "With several processes: each keeps and saves (optimizer_<rank>.pt) the optimizer state of its share of the "    \
    "parameters, "                                                                                                   \
    "ZeRO stage 1",                                                                                                  \
    nullptr)                                                                                                         \
  X(train_examples, std::int64_t, 2048, "Examples in the synthetic training split", nullptr, .at_least(1))           \
  X(eval_examples, std::int64_t, 512, "Examples in the synthetic evaluation split", nullptr, .at_least(1))           \
  X(input_noise, double, 0.1, "Standard deviation of the Gaussian noise added to each training batch", nullptr)      \
  X(threads, std::optional<std::int64_t>, std::nullopt, "Torch intra-op threads",                                    \
    "the cores, shared among the processes on this machine", .between(1, 1024))

#define CKPT_ARGUMENT_MEMBER(name, type, default_value, ...) type name = default_value;

// config.json: fixed for the life of a run; resume refuses a different value.
struct ModelArguments {
  CKPT_MODEL_ARGUMENTS(CKPT_ARGUMENT_MEMBER)
  bool operator==(const ModelArguments&) const = default;
};

// training_args.bin: resume restores it unless the command line overrides it.
struct TrainingArguments {
  CKPT_TRAINING_ARGUMENTS(CKPT_ARGUMENT_MEMBER)
  bool operator==(const TrainingArguments&) const = default;
};

#undef CKPT_ARGUMENT_MEMBER

struct Arguments {
  ModelArguments model;
  TrainingArguments training;
  bool operator==(const Arguments&) const = default;
};

// One argument's value at the boundaries. None is a value of its own, distinct from "not given".
using ArgValue = std::variant<std::monostate, bool, std::int64_t, double, std::string>;
// Values by key: the flags given on the command line, a training_args.bin's dict.
using ArgumentValues = std::map<std::string, ArgValue>;

enum class ArgType { boolean, integer, number, text };
enum class ArgScope { model, training };

// A row of the table, for what handles every argument alike.
struct ArgSpec {
  const char* key;
  ArgType type;
  ArgScope scope;
  ArgValue default_value;  // std::monostate: None
  const char* help;
  const char* default_text;  // see CKPT_TRAINING_ARGUMENTS
  ArgValue (*get)(const Arguments& args);
  // Throws invalid_argument naming the key for a value of another type (an integer where a number belongs is
  // that number: Python writes 3 for 3.0 too).
  void (*set)(Arguments& args, const ArgValue& value);
};

const std::vector<ArgSpec>& argument_specs();  // model scope first, then training, each in table order
const ArgSpec* find_spec(const std::string& key);

// "per_device_train_batch_size" -> "per-device-train-batch-size"
std::string flag_name(const std::string& key);

// `values` over the table's defaults. Throws invalid_argument naming the key for a key the table does not know
// or a value of the wrong type.
Arguments resolve_arguments(const ArgumentValues& values);

// Resume: the flags `given` now over the checkpoint's `saved` training arguments over the defaults, with the
// checkpoint's `model` (config.json). Throws corrupt naming the key for a `saved` key the table does not know or of
// the wrong type, and invalid_argument naming the key for a model flag given with another value than `model`'s.
Arguments resume_arguments(const ArgumentValues& given, const ArgumentValues& saved, const ModelArguments& model);

// Every field within the table's bounds, in table order; else invalid_argument naming the flag
// ("--seed: must be between 0 and 2**32 - 1 (numpy's range)"). A None is within any bounds.
void check_bounds(const ModelArguments& model);
void check_bounds(const Arguments& args);

}  // namespace ckpt::train
