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

// Beyond the table's bounds of each size: invalid_argument when the model would hold more than 2^34 parameters.
void check_model_size(const ModelArguments& model);
// config.json: model_type, architectures, the model arguments, torch_dtype, ckpt_version.
json::Json config_json(const ModelArguments& model);
// Throws corrupt naming `path` when config.json is not a ckpt-mlp config or its model is out of bounds.
ModelArguments read_config_json(const json::Json& config, const std::string& path);
// The parameters' names and shapes in state-dict order (see MLP::parameters).
std::vector<std::pair<std::string, std::vector<std::int64_t>>> parameter_shapes(const ModelArguments& model);

class MLP {
 public:
  explicit MLP(const ModelArguments& config);

  // Parameters in state-dict order: hidden.0.weight, hidden.0.bias, ..., classifier.weight, classifier.bias.
  std::vector<std::pair<std::string, at::Tensor>>& parameters() { return parameters_; }
  at::Tensor forward(const at::Tensor& inputs, bool training) const;
  std::int64_t num_parameters() const;
  const ModelArguments& config() const { return config_; }

 private:
  ModelArguments config_;
  std::vector<std::pair<std::string, at::Tensor>> parameters_;
};

}  // namespace ckpt::train
