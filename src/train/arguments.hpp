// The trainer's arguments: one table, from which the CLI registers `ckpt save` / `ckpt resume` flags, the
// trainer fills defaults, training_args.bin is written (a plain dict of these keys, in this order) and
// config.json describes the model. Keys are TrainingArguments' names; flags are the keys in kebab-case.
// Torch-free: the CLI includes it.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace ckpt::train {

// None is a value of its own (save_total_limit unset), distinct from "not given".
using ArgValue = std::variant<std::monostate, bool, std::int64_t, double, std::string>;
using Arguments = std::map<std::string, ArgValue>;

enum class ArgType { boolean, integer, number, text };
enum class ArgScope {
  model,     // config.json: fixed for the life of a run; resume refuses a different value
  training,  // training_args.bin: resume restores it unless the command line overrides it
};

struct ArgSpec {
  const char* key;
  ArgType type;
  ArgScope scope;
  ArgValue default_value;  // std::monostate: None
  const char* help;
  // --help's words for a default that depends on other values (None resolved by the trainer), or nullptr.
  const char* default_text = nullptr;
};

const std::vector<ArgSpec>& argument_specs();
const ArgSpec* find_spec(const std::string& key);

// "per_device_train_batch_size" -> "per-device-train-batch-size"
std::string flag_name(const std::string& key);

// `given` over `base` over the table's defaults. Throws invalid_argument for a key the table does not know
// or a value of the wrong type (a training_args.bin from elsewhere).
Arguments resolve_arguments(const Arguments& given, const Arguments& base);

// Typed access to a resolved set; throws invalid_argument naming the key when absent or of another type.
std::int64_t get_int(const Arguments& args, const std::string& key);
std::optional<std::int64_t> get_optional_int(const Arguments& args, const std::string& key);
double get_number(const Arguments& args, const std::string& key);
bool get_bool(const Arguments& args, const std::string& key);
std::string get_text(const Arguments& args, const std::string& key);
std::optional<std::string> get_optional_text(const Arguments& args, const std::string& key);

}  // namespace ckpt::train
