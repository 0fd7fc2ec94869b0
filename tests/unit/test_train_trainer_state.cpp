#include <doctest/doctest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "train/trainer_state.hpp"
#include "util/error.hpp"

using namespace ckpt;
namespace fs = std::filesystem;

namespace {

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace

TEST_CASE("trainer_state.json is written byte for byte as the Hugging Face Trainer wrote it") {
  const std::string path =
      std::string(CKPT_TEST_DATA) + "/hf-trainer-4.40.2/run_safetensors/checkpoint-20/trainer_state.json";
  train::TrainerState state;
  state.load(path);
  CHECK(state.global_step == 20);
  CHECK(state.best_metric == doctest::Approx(4.043115139007568));
  CHECK(state.best_model_checkpoint == "run_safetensors/checkpoint-20");
  // What load leaves to the run's arguments, as that run had them.
  state.epoch = 5.0;
  state.eval_steps = 10;
  state.logging_steps = 5;
  state.max_steps = 40;
  state.num_train_epochs = 10;
  state.save_steps = 10;
  state.train_batch_size = 4;
  // Everything else comes from the file itself, as resume reads it: the whole text must agree.
  CHECK(state.to_text() == read_text(path));
}

TEST_CASE("a trainer_state.json without a valid global_step is corrupt, naming the key") {
  const fs::path dir = fs::temp_directory_path() / ("ckpt-state-test-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string path = (dir / "trainer_state.json").string();
  for (const char* text :
       {R"({})", R"({"global_step": "5"})", R"({"global_step": -1})", R"([])", R"({"global_step": 1.5})"}) {
    CAPTURE(text);
    std::ofstream(path, std::ios::trunc) << text;
    train::TrainerState state;
    try {
      state.load(path);
      FAIL("loaded");
    } catch (const Error& e) {
      CHECK(e.kind() == ErrorKind::corrupt);
      CHECK(e.path() == path);
    }
  }
  std::ofstream(path, std::ios::trunc) << R"({"global_step": 7, "log_history": "x", "best_metric": "y"})";
  train::TrainerState state;
  state.load(path);
  CHECK(state.global_step == 7);
  CHECK(state.log_history.empty());
  CHECK(!state.best_metric);
  fs::remove_all(dir);
}

TEST_CASE("figures are rounded as Python's round") {
  CHECK(train::round_to(0.123456, 4) == 0.1235);
  CHECK(train::round_to(2.5e-5, 3) == 0.0);
  CHECK(train::round_to(1234.5678, 3) == 1234.568);
}
