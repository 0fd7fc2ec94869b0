// Loading the trainer library (libckpt_train.so) on demand: only `save` and `resume` pay for LibTorch.
// Searched in order: $CKPT_TRAIN_LIBRARY, beside the running binary (the build tree), and the install prefix's
// lib directories relative to the binary (../lib, ../lib/x86_64-linux-gnu style multiarch, ../lib64).
#pragma once

#include "train/api.hpp"

namespace ckpt::checkpoint {

// Runs the request in the library. Throws Error: not_found when no library is found (naming where it looked),
// unsupported when it cannot be loaded or is from another build, and the library's own error, rethrown.
train::TrainResult run_trainer(const train::TrainRequest& request);

}  // namespace ckpt::checkpoint
