#include "train/data.hpp"

namespace ckpt::train {

namespace {

Split make_split(NumpyRandom& rs, const std::vector<double>& centers, std::int64_t input_size, std::int64_t num_labels,
                 std::int64_t n) {
  Split split{at::empty({n, input_size}, at::kFloat), at::empty({n}, at::kLong)};
  float* x = split.inputs.data_ptr<float>();
  std::int64_t* y = split.labels.data_ptr<std::int64_t>();
  for (std::int64_t i = 0; i < n; ++i) {
    y[i] = i % num_labels;
    const double* center = centers.data() + y[i] * input_size;
    for (std::int64_t j = 0; j < input_size; ++j) {
      const double scaled = 0.3 * center[j];
      x[i * input_size + j] = static_cast<float>(scaled + rs.standard_normal());
    }
  }
  return split;
}

}  // namespace

SyntheticData make_data(std::uint32_t seed, std::int64_t input_size, std::int64_t num_labels,
                        std::int64_t train_examples, std::int64_t eval_examples) {
  NumpyRandom rs;
  rs.seed(seed);
  std::vector<double> centers(static_cast<std::size_t>(num_labels * input_size));
  for (double& c : centers) c = rs.standard_normal();
  SyntheticData data;
  data.train = make_split(rs, centers, input_size, num_labels, train_examples);
  data.eval = make_split(rs, centers, input_size, num_labels, eval_examples);
  return data;
}

at::Tensor noisy_batch(const Split& split, const std::vector<std::int64_t>& indices, double input_noise,
                       NumpyRandom& noise, int rank, int world_size) {
  const std::int64_t width = split.inputs.size(1);
  at::Tensor batch = at::empty({static_cast<std::int64_t>(indices.size()), width}, at::kFloat);
  const float* x = split.inputs.data_ptr<float>();
  float* out = batch.data_ptr<float>();
  for (std::size_t i = 0; i < indices.size(); ++i) {
    for (int r = 0; r < world_size; ++r) {
      if (r != rank) {
        for (std::int64_t j = 0; j < width; ++j) noise.standard_normal();  // another rank's row
        continue;
      }
      const float* row = x + indices[i] * width;
      for (std::int64_t j = 0; j < width; ++j) {
        out[static_cast<std::int64_t>(i) * width + j] =
            row[j] + static_cast<float>(noise.standard_normal() * input_noise);
      }
    }
  }
  return batch;
}

}  // namespace ckpt::train
