// The embedded model: an MLP classifier, `torch.nn`-equivalent to
//
//   class MLP(nn.Module):
//       def __init__(self, c):
//           super().__init__()
//           self.hidden = nn.ModuleList(nn.Linear(c.input_size if i == 0 else c.hidden_size, c.hidden_size)
//                                       for i in range(c.num_layers))
//           self.classifier = nn.Linear(c.hidden_size if c.num_layers else c.input_size, c.num_labels)
//       def forward(self, x):
//           for layer in self.hidden:
//               x = F.dropout(F.relu(layer(x)), self.dropout, self.training)
//           return self.classifier(x)
//
// with the same parameter names, the same initialisation (nn.Linear's reset_parameters, drawing from torch's
// default CPU generator in the same order) and the same kernels.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "format/json.hpp"
#include "train/arguments.hpp"

namespace ckpt::train {

inline constexpr const char* kModelType = "ckpt-mlp";

struct ModelConfig {
  std::int64_t input_size = 0;
  std::int64_t hidden_size = 0;
  std::int64_t num_layers = 0;
  std::int64_t num_labels = 0;
  double dropout = 0;

  static ModelConfig from_arguments(const Arguments& args);  // validates the sizes
  // config.json: model_type, architectures, the sizes, torch_dtype, ckpt_version.
  json::Json to_json() const;
  // Throws corrupt naming `path` when config.json is not a ckpt-mlp config.
  static ModelConfig from_json(const json::Json& config, const std::string& path);
  bool operator==(const ModelConfig&) const = default;
  // The parameters' names and shapes in state-dict order (see MLP::parameters).
  std::vector<std::pair<std::string, std::vector<std::int64_t>>> parameter_shapes() const;
};

class MLP {
 public:
  explicit MLP(const ModelConfig& config);

  // Parameters in state-dict order: hidden.0.weight, hidden.0.bias, ..., classifier.weight, classifier.bias.
  std::vector<std::pair<std::string, at::Tensor>>& parameters() { return parameters_; }
  at::Tensor forward(const at::Tensor& inputs, bool training) const;
  std::int64_t num_parameters() const;
  const ModelConfig& config() const { return config_; }

 private:
  ModelConfig config_;
  std::vector<std::pair<std::string, at::Tensor>> parameters_;
};

}  // namespace ckpt::train
