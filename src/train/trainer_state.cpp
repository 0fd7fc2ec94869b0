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
  const json::Json j = json::parse_file(path);
  auto bad = [&](const char* key) { throw Error(ErrorKind::corrupt, path, key, "missing or of the wrong type"); };
  if (!j.is_object()) bad("trainer_state");
  if (!j.contains("global_step") || !j["global_step"].is_number_integer()) bad("global_step");
  global_step = j["global_step"].get<std::int64_t>();
  if (global_step < 0) bad("global_step");
  if (j.contains("total_flos") && j["total_flos"].is_number()) total_flos = j["total_flos"].get<double>();
  if (j.contains("log_history") && j["log_history"].is_array()) log_history = j["log_history"];
  if (j.contains("best_metric") && j["best_metric"].is_number()) best_metric = j["best_metric"].get<double>();
  if (j.contains("best_model_checkpoint") && j["best_model_checkpoint"].is_string()) {
    best_model_checkpoint = j["best_model_checkpoint"].get<std::string>();
  }
}

}  // namespace ckpt::train
