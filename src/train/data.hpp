// The synthetic classification task, generated from the seed by numpy's legacy generator so that Python
// rebuilds it exactly:
//
//   rs = np.random.RandomState(seed)
//   centers = rs.standard_normal((num_labels, input_size))
//   def split(n):                                   # the train split first, then the eval split
//       y = np.arange(n) % num_labels
//       x = (0.3 * centers[y] + rs.standard_normal((n, input_size))).astype(np.float32)
//       return x, y
//
// Each training batch adds input noise from the global numpy generator (the one rng_state.pth saves):
//   x_batch = x[indices] + (np.random.standard_normal((len(indices), input_size)) * input_noise).astype(np.float32)
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "train/rng.hpp"

namespace ckpt::train {

struct Split {
  at::Tensor inputs;  // float32 [n, input_size]
  at::Tensor labels;  // int64 [n]
};

struct SyntheticData {
  Split train;
  Split eval;
};

SyntheticData make_data(std::uint32_t seed, std::int64_t input_size, std::int64_t num_labels,
                        std::int64_t train_examples, std::int64_t eval_examples);

// The rows `indices` of `split.inputs` plus the batch's input noise, drawn from `noise`. In a group of
// `world_size` processes the noise of the whole global batch is drawn, as one process would draw it, and each
// rank keeps its rows (DistributedSampler puts a rank's i-th example at global position i * world_size + rank),
// so every rank's generator stays where a single process's would be.
at::Tensor noisy_batch(const Split& split, const std::vector<std::int64_t>& indices, double input_noise,
                       NumpyRandom& noise, int rank = 0, int world_size = 1);

}  // namespace ckpt::train
