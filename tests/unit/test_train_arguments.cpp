#include <doctest/doctest.h>

#include <cmath>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "train/arguments.hpp"
#include "util/error.hpp"

using namespace ckpt;
using namespace ckpt::train;

namespace {

// The message of the invalid_argument that check_bounds throws, or "" when `args` are within bounds.
std::string bounds_failure(const Arguments& args) {
  try {
    check_bounds(args);
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::invalid_argument);
    return e.what();
  }
  return "";
}

template <typename Change>
std::string bounds_failure_after(Change change) {
  Arguments args;
  change(args);
  return bounds_failure(args);
}

std::optional<Error> failure(const std::function<void()>& work) {
  try {
    work();
  } catch (const Error& e) {
    return e;
  }
  return std::nullopt;
}

}  // namespace

TEST_CASE("arguments: the structs' defaults are the table's") {
  const Arguments defaults;
  CHECK(defaults.model.input_size == 32);
  CHECK(defaults.model.dropout == 0.0);
  CHECK_FALSE(defaults.training.output_dir);
  CHECK(defaults.training.max_steps == -1);
  CHECK(defaults.training.learning_rate == 1e-3);
  CHECK_FALSE(defaults.training.save_total_limit);
  CHECK(defaults.training.metric_for_best_model == "eval_loss");
  CHECK_FALSE(defaults.training.greater_is_better);
  CHECK(defaults.training.save_safetensors);
  CHECK(defaults.training.seed == 42);
  for (const auto& spec : argument_specs()) {
    CAPTURE(spec.key);
    CHECK(spec.get(defaults) == spec.default_value);
    CHECK(find_spec(spec.key) == &spec);
  }
  CHECK(find_spec("no_such_flag") == nullptr);
  CHECK(flag_name("per_device_train_batch_size") == "per-device-train-batch-size");
  // training_args.bin's keys, in the order it holds them (the Python interop tests read it).
  std::vector<std::string> training_keys;
  for (const auto& spec : argument_specs()) {
    if (spec.scope == ArgScope::training) training_keys.push_back(spec.key);
  }
  CHECK(training_keys == std::vector<std::string>{"output_dir",
                                                  "max_steps",
                                                  "num_train_epochs",
                                                  "per_device_train_batch_size",
                                                  "per_device_eval_batch_size",
                                                  "learning_rate",
                                                  "weight_decay",
                                                  "adam_beta1",
                                                  "adam_beta2",
                                                  "adam_epsilon",
                                                  "max_grad_norm",
                                                  "warmup_steps",
                                                  "logging_steps",
                                                  "eval_steps",
                                                  "save_steps",
                                                  "save_total_limit",
                                                  "metric_for_best_model",
                                                  "greater_is_better",
                                                  "load_best_model_at_end",
                                                  "save_safetensors",
                                                  "max_shard_size",
                                                  "seed",
                                                  "fp16",
                                                  "async_save",
                                                  "shard_optimizer",
                                                  "train_examples",
                                                  "eval_examples",
                                                  "input_noise",
                                                  "threads"});
  CHECK(argument_specs().front().key == std::string("input_size"));
  CHECK(argument_specs().size() == training_keys.size() + 5);
  CHECK(find_spec("eval_steps")->type == ArgType::integer);
  CHECK(find_spec("greater_is_better")->type == ArgType::boolean);
  CHECK(find_spec("dropout")->scope == ArgScope::model);
  CHECK(find_spec("threads")->default_text == std::string("the cores, shared among the processes on this machine"));
}

TEST_CASE("arguments: values by key over the defaults") {
  const Arguments resolved = resolve_arguments({{"max_steps", std::int64_t{7}}, {"seed", std::int64_t{5}}});
  CHECK(resolved.training.max_steps == 7);
  CHECK(resolved.training.seed == 5);
  CHECK(resolved.training.save_steps == 20);
  CHECK_FALSE(resolved.training.save_total_limit);
  // Python writes 3 for a float that happens to be whole.
  CHECK(resolve_arguments({{"learning_rate", std::int64_t{3}}}).training.learning_rate == 3.0);
  CHECK(resolve_arguments({{"eval_steps", std::int64_t{0}}}).training.eval_steps == 0);
  CHECK_FALSE(resolve_arguments({{"save_total_limit", std::monostate{}}}).training.save_total_limit);
  CHECK_THROWS_AS(resolve_arguments({{"no_such_flag", true}}), Error);
  CHECK_THROWS_AS(resolve_arguments({{"seed", std::string("x")}}), Error);
  // A number is no integer, and None is no value of a field that has no None.
  CHECK_THROWS_AS(resolve_arguments({{"seed", 5.0}}), Error);
  CHECK_THROWS_AS(resolve_arguments({{"max_steps", std::monostate{}}}), Error);
  const auto wrong = failure([] { resolve_arguments({{"fp16", std::int64_t{1}}}); });
  REQUIRE(wrong);
  CHECK(wrong->kind() == ErrorKind::invalid_argument);
  CHECK(std::string(wrong->what()) == "fp16: argument of the wrong type");
}

TEST_CASE("arguments: every field round trips through its value by key") {
  Arguments args = resolve_arguments({{"output_dir", std::string("/runs/a")}});
  args.model.hidden_size = 128;
  args.model.dropout = 0.25;
  args.training.learning_rate = 0.5;
  args.training.eval_steps = 0;
  args.training.save_total_limit = 3;
  args.training.greater_is_better = false;
  args.training.metric_for_best_model = "accuracy";
  args.training.fp16 = true;
  args.training.threads = 4;
  ArgumentValues values;
  for (const auto& spec : argument_specs()) values[spec.key] = spec.get(args);
  CHECK(values.size() == argument_specs().size());
  CHECK(values.at("save_total_limit") == ArgValue(std::int64_t{3}));
  CHECK(values.at("greater_is_better") == ArgValue(false));
  CHECK(values.at("output_dir") == ArgValue(std::string("/runs/a")));
  CHECK(resolve_arguments(values) == args);
  // None back to None.
  values["threads"] = std::monostate{};
  CHECK_FALSE(resolve_arguments(values).training.threads);
}

TEST_CASE("arguments: bounds, checked in one place with each flag's message") {
  CHECK(bounds_failure(Arguments{}) == "");
  CHECK(bounds_failure_after([](Arguments& a) { a.training.seed = -1; }) ==
        "--seed: must be between 0 and 2**32 - 1 (numpy's range)");
  CHECK(bounds_failure_after([](Arguments& a) { a.training.seed = 0xffffffff; }) == "");
  CHECK(bounds_failure_after([](Arguments& a) { a.training.seed = 0x100000000; }) ==
        "--seed: must be between 0 and 2**32 - 1 (numpy's range)");
  CHECK(bounds_failure_after([](Arguments& a) { a.training.per_device_train_batch_size = 0; }) ==
        "--per-device-train-batch-size: must be positive");
  CHECK(bounds_failure_after([](Arguments& a) { a.training.warmup_steps = -1; }) ==
        "--warmup-steps: must not be negative");
  CHECK(bounds_failure_after([](Arguments& a) { a.training.warmup_steps = 0; }) == "");
  CHECK(bounds_failure_after([](Arguments& a) { a.training.eval_steps = 0; }) == "");
  CHECK(bounds_failure_after([](Arguments& a) { a.training.eval_steps = -3; }) == "--eval-steps: must not be negative");
  CHECK(bounds_failure_after([](Arguments& a) { a.training.save_total_limit = 0; }) ==
        "--save-total-limit: must be positive");
  CHECK(bounds_failure_after([](Arguments& a) { a.training.threads = 1025; }) ==
        "--threads: must be between 1 and 1024");
  CHECK(bounds_failure_after([](Arguments& a) { a.training.threads = 0; }) == "--threads: must be between 1 and 1024");
  CHECK(bounds_failure_after([](Arguments& a) { a.training.learning_rate = -0.5; }) ==
        "--learning-rate: must not be negative");
  CHECK(bounds_failure_after([](Arguments& a) { a.training.learning_rate = std::nan(""); }) ==
        "--learning-rate: must not be negative");
  CHECK(bounds_failure_after([](Arguments& a) { a.training.learning_rate = 0; }) == "");
  CHECK(bounds_failure_after([](Arguments& a) { a.model.input_size = 0; }) ==
        "--input-size: must be between 1 and 1048576");
  CHECK(bounds_failure_after([](Arguments& a) { a.model.hidden_size = kMaxModelWidth + 1; }) ==
        "--hidden-size: must be between 1 and 1048576");
  CHECK(bounds_failure_after([](Arguments& a) { a.model.num_layers = 1001; }) ==
        "--num-layers: must be between 0 and 1000");
  CHECK(bounds_failure_after([](Arguments& a) { a.model.num_labels = 1; }) ==
        "--num-labels: must be between 2 and 1048576");
  CHECK(bounds_failure_after([](Arguments& a) { a.model.dropout = 1.0; }) == "--dropout: must be in [0, 1)");
  CHECK(bounds_failure_after([](Arguments& a) { a.model.dropout = std::nan(""); }) == "--dropout: must be in [0, 1)");
  CHECK(bounds_failure_after([](Arguments& a) { a.model.dropout = 0.999; }) == "");
  // Unbounded fields take anything.
  CHECK(bounds_failure_after([](Arguments& a) { a.training.max_steps = -5, a.training.weight_decay = -1; }) == "");
  // Table order: the model's fields first.
  CHECK(bounds_failure_after([](Arguments& a) { a.training.seed = -1, a.model.input_size = 0; }) ==
        "--input-size: must be between 1 and 1048576");
}

TEST_CASE("arguments: resume takes the flags over the checkpoint's arguments, and its model") {
  ModelArguments model;
  model.hidden_size = 128;
  model.dropout = 0.5;
  const ArgumentValues saved{{"max_steps", std::int64_t{3}},
                             {"seed", std::int64_t{5}},
                             {"learning_rate", 0.5},
                             {"save_total_limit", std::int64_t{2}},
                             {"hidden_size", std::int64_t{999}}};  // config.json decides the model
  Arguments resumed =
      resume_arguments({{"max_steps", std::int64_t{7}}, {"save_total_limit", std::monostate{}}}, saved, model);
  CHECK(resumed.training.max_steps == 7);
  CHECK(resumed.training.seed == 5);
  CHECK(resumed.training.learning_rate == 0.5);
  CHECK_FALSE(resumed.training.save_total_limit);
  CHECK(resumed.training.save_steps == 20);
  CHECK(resumed.model == model);
  // A model flag equal to the checkpoint's is allowed (an integer where dropout's number belongs too).
  CHECK(resume_arguments({{"hidden_size", std::int64_t{128}}, {"dropout", 0.5}}, saved, model).model == model);
  model.dropout = 0;
  CHECK(resume_arguments({{"dropout", std::int64_t{0}}}, saved, model).model == model);
  const auto changed = failure([&] { resume_arguments({{"hidden_size", std::int64_t{64}}}, saved, model); });
  REQUIRE(changed);
  CHECK(changed->kind() == ErrorKind::invalid_argument);
  CHECK(changed->where() == "hidden_size");
  CHECK(changed->detail() == "the checkpoint's model has another hidden_size; a resumed run keeps its model");
  // A training_args.bin from elsewhere: an unknown key or a value of the wrong type is the file's fault.
  const auto unknown = failure([&] { resume_arguments({}, {{"report_to", std::string("wandb")}}, model); });
  REQUIRE(unknown);
  CHECK(unknown->kind() == ErrorKind::corrupt);
  CHECK(std::string(unknown->what()) == "report_to: unknown training argument");
  const auto wrong = failure([&] { resume_arguments({}, {{"seed", std::string("x")}}, model); });
  REQUIRE(wrong);
  CHECK(wrong->kind() == ErrorKind::corrupt);
  CHECK(wrong->where() == "seed");
}
