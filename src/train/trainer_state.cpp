#include "train/trainer_state.hpp"

#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "util/error.hpp"

namespace ckpt::train {

double round_to(double x, int digits) {
  if (!std::isfinite(x)) return x;
  char text[64];
  std::snprintf(text, sizeof text, "%.*f", digits, x);
  return std::strtod(text, nullptr);
}

json::Json number_or_null(std::optional<double> x) { return x ? json::Json(*x) : json::Json(); }

std::string TrainerState::to_text() const {
  json::Json j = json::Json::object();
  j["best_metric"] = number_or_null(best_metric);
  j["best_model_checkpoint"] = best_model_checkpoint ? json::Json(*best_model_checkpoint) : json::Json();
  j["epoch"] = epoch;
  j["eval_steps"] = eval_steps;
  j["global_step"] = global_step;
  j["is_hyper_param_search"] = false;
  j["is_local_process_zero"] = true;
  j["is_world_process_zero"] = true;
  j["log_history"] = log_history;
  j["logging_steps"] = logging_steps;
  j["max_steps"] = max_steps;
  j["num_input_tokens_seen"] = 0;
  j["num_train_epochs"] = num_train_epochs;
  j["save_steps"] = save_steps;
  j["total_flos"] = total_flos;
  j["train_batch_size"] = train_batch_size;
  j["trial_name"] = nullptr;
  j["trial_params"] = nullptr;
  return json::dump_python_sorted(j, 2) + "\n";
}

void TrainerState::load(const std::string& path) {
  const json::Json doc = json::parse_file(path);
  // global_step is what a resume continues from; the rest is carried over when it has its type, as before.
  const json::Fields j(doc, path, "", json::WrongType::absent);
  global_step = j.int64("global_step", 0);
  if (auto flos = j.optional_number("total_flos")) total_flos = *flos;
  if (auto history = j.optional_array("log_history")) log_history = history->json();
  if (auto metric = j.optional_number("best_metric")) best_metric = metric;
  if (auto best = j.optional_string("best_model_checkpoint")) best_model_checkpoint = std::move(best);
}

}  // namespace ckpt::train
