#include "train/arguments.hpp"

#include "util/error.hpp"

namespace ckpt::train {

namespace {
using std::int64_t;
constexpr auto kModel = ArgScope::model;
constexpr auto kTraining = ArgScope::training;
}  // namespace

const std::vector<ArgSpec>& argument_specs() {
  static const std::vector<ArgSpec> specs = {
      {"input_size", ArgType::integer, kModel, int64_t{32}, "Features per synthetic example"},
      {"hidden_size", ArgType::integer, kModel, int64_t{64}, "Width of each hidden layer of the MLP"},
      {"num_layers", ArgType::integer, kModel, int64_t{2}, "Hidden layers of the MLP"},
      {"num_labels", ArgType::integer, kModel, int64_t{4}, "Classes of the synthetic task"},
      {"dropout", ArgType::number, kModel, 0.0, "Dropout probability after each hidden layer"},
      {"output_dir", ArgType::text, kTraining, std::monostate{}, "The run directory checkpoints are written to"},
      {"max_steps", ArgType::integer, kTraining, int64_t{-1}, "Optimizer steps to train; overrides --num-train-epochs when positive"},
      {"num_train_epochs", ArgType::number, kTraining, 3.0, "Epochs to train when --max-steps is not positive"},
      {"per_device_train_batch_size", ArgType::integer, kTraining, int64_t{32}, "Training batch size per process"},
      {"per_device_eval_batch_size", ArgType::integer, kTraining, int64_t{128}, "Evaluation batch size per process"},
      {"learning_rate", ArgType::number, kTraining, 1e-3, "Peak learning rate of AdamW"},
      {"weight_decay", ArgType::number, kTraining, 0.0, "AdamW weight decay (not applied to biases)"},
      {"adam_beta1", ArgType::number, kTraining, 0.9, "AdamW beta1"},
      {"adam_beta2", ArgType::number, kTraining, 0.999, "AdamW beta2"},
      {"adam_epsilon", ArgType::number, kTraining, 1e-8, "AdamW epsilon"},
      {"max_grad_norm", ArgType::number, kTraining, 1.0, "Clip the gradients' global L2 norm to this (0: no clipping)"},
      {"warmup_steps", ArgType::integer, kTraining, int64_t{0}, "Linear warmup steps of the linear schedule"},
      {"logging_steps", ArgType::integer, kTraining, int64_t{10}, "Log loss, grad_norm, learning_rate every N steps"},
      {"eval_steps", ArgType::integer, kTraining, std::monostate{}, "Evaluate every N steps (0: never)", "--save-steps"},
      {"save_steps", ArgType::integer, kTraining, int64_t{20}, "Save a checkpoint every N steps"},
      {"save_total_limit", ArgType::integer, kTraining, std::monostate{}, "Keep at most N checkpoints (the best is kept too), as ckpt rotate --keep"},
      {"metric_for_best_model", ArgType::text, kTraining, std::string("eval_loss"), "Metric that decides the best checkpoint"},
      {"greater_is_better", ArgType::boolean, kTraining, std::monostate{}, "Whether a greater metric is better", "false for losses, else true"},
      {"load_best_model_at_end", ArgType::boolean, kTraining, false, "Save the best checkpoint's weights as the final model"},
      {"save_safetensors", ArgType::boolean, kTraining, true, "Write model.safetensors rather than pytorch_model.bin"},
      {"max_shard_size", ArgType::text, kTraining, std::string("5GB"), "Shard weights larger than this (B, KB, MB, GB, KiB, MiB, GiB)"},
      {"seed", ArgType::integer, kTraining, int64_t{42}, "Seeds Python's random, numpy's and torch's generators, and the dataset"},
      {"fp16", ArgType::boolean, kTraining, false, "Dynamic loss scaling with fp16 gradients (GradScaler semantics); writes scaler.pt"},
      {"async_save", ArgType::boolean, kTraining, false, "Write checkpoints from a background thread while training goes on (one process only)"},
      {"shard_optimizer", ArgType::boolean, kTraining, false,
       "With several processes: each keeps and saves (optimizer_<rank>.pt) the optimizer state of its share of the parameters, ZeRO stage 1"},
      {"train_examples", ArgType::integer, kTraining, int64_t{2048}, "Examples in the synthetic training split"},
      {"eval_examples", ArgType::integer, kTraining, int64_t{512}, "Examples in the synthetic evaluation split"},
      {"input_noise", ArgType::number, kTraining, 0.1, "Standard deviation of the Gaussian noise added to each training batch"},
      {"threads", ArgType::integer, kTraining, std::monostate{}, "Torch intra-op threads",
       "the cores, shared among the processes on this machine"},
  };
  return specs;
}

const ArgSpec* find_spec(const std::string& key) {
  for (const auto& spec : argument_specs()) {
    if (key == spec.key) return &spec;
  }
  return nullptr;
}

std::string flag_name(const std::string& key) {
  std::string flag = key;
  for (char& c : flag) {
    if (c == '_') c = '-';
  }
  return flag;
}

namespace {

bool has_type(const ArgValue& value, ArgType type) {
  switch (type) {
    case ArgType::boolean: return std::holds_alternative<bool>(value);
    case ArgType::integer: return std::holds_alternative<std::int64_t>(value);
    case ArgType::number: return std::holds_alternative<double>(value);
    case ArgType::text: return std::holds_alternative<std::string>(value);
  }
  return false;
}

const ArgValue& lookup(const Arguments& args, const std::string& key) {
  auto it = args.find(key);
  if (it == args.end()) throw Error(ErrorKind::invalid_argument, "", key, "missing argument");
  return it->second;
}

[[noreturn]] void wrong_type(const std::string& key) { throw Error(ErrorKind::invalid_argument, "", key, "argument of the wrong type"); }

}  // namespace

Arguments resolve_arguments(const Arguments& given, const Arguments& base) {
  Arguments resolved;
  for (const auto& spec : argument_specs()) resolved[spec.key] = spec.default_value;
  for (const Arguments* layer : {&base, &given}) {
    for (const auto& [key, value] : *layer) {
      const ArgSpec* spec = find_spec(key);
      if (!spec) throw Error(ErrorKind::invalid_argument, "", key, "unknown training argument");
      ArgValue v = value;
      // An integer where a number belongs is a number (Python writes 3 for 3.0 too).
      if (spec->type == ArgType::number && std::holds_alternative<std::int64_t>(v)) v = static_cast<double>(std::get<std::int64_t>(v));
      if (!std::holds_alternative<std::monostate>(v) && !has_type(v, spec->type)) wrong_type(key);
      resolved[key] = std::move(v);
    }
  }
  return resolved;
}

std::int64_t get_int(const Arguments& args, const std::string& key) {
  const auto* v = std::get_if<std::int64_t>(&lookup(args, key));
  if (!v) wrong_type(key);
  return *v;
}

std::optional<std::int64_t> get_optional_int(const Arguments& args, const std::string& key) {
  const ArgValue& v = lookup(args, key);
  if (std::holds_alternative<std::monostate>(v)) return std::nullopt;
  return get_int(args, key);
}

double get_number(const Arguments& args, const std::string& key) {
  const auto* v = std::get_if<double>(&lookup(args, key));
  if (!v) wrong_type(key);
  return *v;
}

bool get_bool(const Arguments& args, const std::string& key) {
  const auto* v = std::get_if<bool>(&lookup(args, key));
  if (!v) wrong_type(key);
  return *v;
}

std::string get_text(const Arguments& args, const std::string& key) {
  const auto* v = std::get_if<std::string>(&lookup(args, key));
  if (!v) wrong_type(key);
  return *v;
}

std::optional<std::string> get_optional_text(const Arguments& args, const std::string& key) {
  const ArgValue& v = lookup(args, key);
  if (std::holds_alternative<std::monostate>(v)) return std::nullopt;
  return get_text(args, key);
}

}  // namespace ckpt::train
