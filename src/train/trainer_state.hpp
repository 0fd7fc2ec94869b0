// trainer_state.json of a checkpoint, as the embedded trainer keeps, writes and resumes it. Torch-free (built into
// the core, unit tested): the fields the Hugging Face Trainer writes, with the figures it rounds.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "format/json.hpp"

namespace ckpt::train {

struct TrainerState {
  std::int64_t global_step = 0;
  double epoch = 0;
  std::int64_t max_steps = 0;
  std::int64_t num_train_epochs = 0;
  std::int64_t logging_steps = 0;
  std::int64_t eval_steps = 0;
  std::int64_t save_steps = 0;
  std::int64_t train_batch_size = 0;
  double total_flos = 0;
  json::Json log_history = json::Json::array();
  std::optional<double> best_metric;
  std::optional<std::string> best_model_checkpoint;

  // trainer_state.json as the Hugging Face Trainer writes it (keys sorted, indent 2).
  std::string to_text() const;
  // Reads what resume needs back; a missing or mistyped global_step is corrupt, other fields are optional.
  void load(const std::string& path);
};

// Python's round(x, digits) for the figures the Trainer rounds (loss to 4 digits, rates to 3).
double round_to(double x, int digits);
json::Json number_or_null(std::optional<double> x);

}  // namespace ckpt::train
