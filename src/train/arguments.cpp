#include "train/arguments.hpp"

#include <fmt/format.h>

#include <type_traits>

#include "util/error.hpp"

namespace ckpt::train {

namespace {

template <typename T>
struct Unwrapped {
  using type = T;
};
template <typename T>
struct Unwrapped<std::optional<T>> {
  using type = T;
};
// The value type of a field: std::optional<std::int64_t> -> std::int64_t.
template <typename T>
using ValueType = typename Unwrapped<T>::type;

template <typename T>
constexpr ArgType arg_type() {
  using V = ValueType<T>;
  if constexpr (std::is_same_v<V, bool>)
    return ArgType::boolean;
  else if constexpr (std::is_same_v<V, std::int64_t>)
    return ArgType::integer;
  else if constexpr (std::is_same_v<V, double>)
    return ArgType::number;
  else {
    static_assert(std::is_same_v<V, std::string>,
                  "an argument is a bool, an int64_t, a double or a string, or an optional one");
    return ArgType::text;
  }
}

template <typename T>
ArgValue to_value(const T& field) {
  return field;
}
template <typename T>
ArgValue to_value(const std::optional<T>& field) {
  return field ? ArgValue(*field) : ArgValue();
}

[[noreturn]] void wrong_type(const char* key) {
  throw Error(ErrorKind::invalid_argument, "", key, "argument of the wrong type");
}

template <typename T>
void assign(T& field, const ArgValue& value, const char* key) {
  if (const auto* v = std::get_if<T>(&value)) {
    field = *v;
    return;
  }
  if constexpr (std::is_same_v<T, double>) {
    if (const auto* i = std::get_if<std::int64_t>(&value)) {
      field = static_cast<double>(*i);
      return;
    }
  }
  wrong_type(key);
}
template <typename T>
void assign(std::optional<T>& field, const ArgValue& value, const char* key) {
  if (std::holds_alternative<std::monostate>(value)) {
    field.reset();
    return;
  }
  T v{};
  assign(v, value, key);
  field = std::move(v);
}

template <typename T>
std::string bound_text(T value) {
  return fmt::format("{}", value);
}

// The message of a value outside `bounds`.
template <typename T>
std::string out_of_bounds(const Bounds<T>& bounds) {
  if (bounds.words) return std::string("must be ") + bounds.words;
  if (bounds.min && bounds.max) return "must be between " + bound_text(*bounds.min) + " and " + bound_text(*bounds.max);
  if (bounds.min && *bounds.min == T{0}) return "must not be negative";
  if (bounds.min && *bounds.min == T{1}) return "must be positive";
  if (bounds.min) return "must be at least " + bound_text(*bounds.min);
  return "must be at most " + bound_text(*bounds.max);
}

template <typename T>
void check_bound(const T& value, const Bounds<T>& bounds, const char* key) {
  if constexpr (std::is_arithmetic_v<T>) {
    // Written so that NaN fails every comparison.
    const bool above_min = !bounds.min || value >= *bounds.min;
    const bool below_max = !bounds.max || (bounds.max_excluded ? value < *bounds.max : value <= *bounds.max);
    if (!(above_min && below_max))
      throw Error(ErrorKind::invalid_argument, "", "--" + flag_name(key), out_of_bounds(bounds));
  }
}
template <typename T>
void check_bound(const std::optional<T>& value, const Bounds<T>& bounds, const char* key) {
  if (value) check_bound(*value, bounds, key);
}

}  // namespace

const std::vector<ArgSpec>& argument_specs() {
#define CKPT_ARGUMENT_SPEC(scope, name, type, default_value, help, default_text, ...) \
  ArgSpec{#name,                                                                      \
          arg_type<type>(),                                                           \
          ArgScope::scope,                                                            \
          to_value(scope##_defaults.name),                                            \
          help,                                                                       \
          default_text,                                                               \
          [](const Arguments& args) { return to_value(args.scope.name); },            \
          [](Arguments& args, const ArgValue& value) { assign(args.scope.name, value, #name); }},
#define CKPT_MODEL_SPEC(...) CKPT_ARGUMENT_SPEC(model, __VA_ARGS__)
#define CKPT_TRAINING_SPEC(...) CKPT_ARGUMENT_SPEC(training, __VA_ARGS__)
  static const ModelArguments model_defaults;
  static const TrainingArguments training_defaults;
  static const std::vector<ArgSpec> specs = {CKPT_MODEL_ARGUMENTS(CKPT_MODEL_SPEC)
                                                 CKPT_TRAINING_ARGUMENTS(CKPT_TRAINING_SPEC)};
#undef CKPT_TRAINING_SPEC
#undef CKPT_MODEL_SPEC
#undef CKPT_ARGUMENT_SPEC
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

void apply(Arguments& args, const ArgumentValues& values) {
  for (const auto& [key, value] : values) {
    const ArgSpec* spec = find_spec(key);
    if (!spec) throw Error(ErrorKind::invalid_argument, "", key, "unknown training argument");
    spec->set(args, value);
  }
}

}  // namespace

Arguments resolve_arguments(const ArgumentValues& values) {
  Arguments args;
  apply(args, values);
  return args;
}

Arguments resume_arguments(const ArgumentValues& given, const ArgumentValues& saved, const ModelArguments& model) {
  Arguments args;
  try {
    apply(args, saved);
  } catch (const Error& e) {
    throw Error(ErrorKind::corrupt, e.path(), e.where(), e.detail());
  }
  args.model = model;
  const Arguments flags = resolve_arguments(given);
  for (const auto& spec : argument_specs()) {
    if (spec.scope == ArgScope::model && given.contains(spec.key) && spec.get(flags) != spec.get(args)) {
      throw Error(ErrorKind::invalid_argument, "", spec.key,
                  std::string("the checkpoint's model has another ") + spec.key + "; a resumed run keeps its model");
    }
  }
  apply(args, given);
  return args;
}

// `fields`: the struct of the scope whose table it expands in.
#define CKPT_CHECK_BOUND(name, type, default_value, help, default_text, ...) \
  check_bound(                                                               \
      fields.name, Bounds<ValueType<type>> {} __VA_ARGS__, #name);

void check_bounds(const ModelArguments& fields) { CKPT_MODEL_ARGUMENTS(CKPT_CHECK_BOUND) }

void check_bounds(const Arguments& args) {
  check_bounds(args.model);
  const TrainingArguments& fields = args.training;
  CKPT_TRAINING_ARGUMENTS(CKPT_CHECK_BOUND)
}

#undef CKPT_CHECK_BOUND

}  // namespace ckpt::train
