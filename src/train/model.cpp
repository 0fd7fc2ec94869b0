#include "train/model.hpp"

#include <cmath>
#include <type_traits>
#include <variant>

#include "util/error.hpp"

#ifndef CKPT_VERSION
#error "CKPT_VERSION must be defined by the build"
#endif

namespace ckpt::train {

void check_model_size(const ModelArguments& model) {
  std::int64_t parameters = 0;
  for (const auto& [name, shape] : parameter_shapes(model))
    parameters += shape.size() == 2 ? shape[0] * shape[1] : shape[0];
  if (parameters > (std::int64_t{1} << 34))
    throw Error(ErrorKind::invalid_argument, "", "--hidden-size", "more than 2^34 parameters");
}

json::Json config_json(const ModelArguments& model) {
  json::Json j = json::Json::object();
  j["architectures"] = json::Json::array({"CkptMLPForClassification"});
  j["ckpt_version"] = CKPT_VERSION;
  j["model_type"] = kModelType;
  j["torch_dtype"] = "float32";
  Arguments args;
  args.model = model;
  for (const auto& spec : argument_specs()) {
    if (spec.scope != ArgScope::model) continue;
    std::visit(
        [&](const auto& value) {
          if constexpr (!std::is_same_v<std::decay_t<decltype(value)>, std::monostate>) j[spec.key] = value;
        },
        spec.get(args));
  }
  return j;
}

ModelArguments read_config_json(const json::Json& config, const std::string& path) {
  const std::optional<std::string> model_type =
      config.is_object() ? json::Fields(config, path, "", json::WrongType::absent).optional_string("model_type")
                         : std::nullopt;
  if (model_type != kModelType) {
    throw Error(ErrorKind::unsupported, path, "model_type",
                std::string("not a ") + kModelType + " model (ckpt resume continues runs of its own trainer)");
  }
  const json::Fields fields(config, path, "");
  Arguments args;
  for (const auto& spec : argument_specs()) {
    if (spec.scope != ArgScope::model) continue;
    spec.set(args,
             spec.type == ArgType::integer ? ArgValue(fields.int64(spec.key)) : ArgValue(fields.number(spec.key)));
  }
  try {
    check_bounds(args.model);
    check_model_size(args.model);
  } catch (const Error& e) {
    throw Error(ErrorKind::corrupt, path, e.where(), e.detail());
  }
  return args.model;
}

namespace {

// nn.Linear.reset_parameters: kaiming_uniform_(weight, a=sqrt(5)), then bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
// with the bounds computed in double exactly as torch.nn.init does.
std::pair<at::Tensor, at::Tensor> make_linear(std::int64_t in, std::int64_t out) {
  at::Tensor weight = at::empty({out, in});
  at::Tensor bias = at::empty({out});
  const double a = std::sqrt(5.0);
  const double gain = std::sqrt(2.0 / (1 + std::pow(a, 2)));
  const double std_dev = gain / std::sqrt(static_cast<double>(in));
  const double bound = std::sqrt(3.0) * std_dev;
  weight.uniform_(-bound, bound);
  const double bias_bound = 1 / std::sqrt(static_cast<double>(in));
  bias.uniform_(-bias_bound, bias_bound);
  return {weight.requires_grad_(true), bias.requires_grad_(true)};
}

}  // namespace

std::vector<std::pair<std::string, std::vector<std::int64_t>>> parameter_shapes(const ModelArguments& model) {
  std::vector<std::pair<std::string, std::vector<std::int64_t>>> shapes;
  std::int64_t width = model.input_size;
  for (std::int64_t i = 0; i < model.num_layers; ++i) {
    shapes.push_back({"hidden." + std::to_string(i) + ".weight", {model.hidden_size, width}});
    shapes.push_back({"hidden." + std::to_string(i) + ".bias", {model.hidden_size}});
    width = model.hidden_size;
  }
  shapes.push_back({"classifier.weight", {model.num_labels, width}});
  shapes.push_back({"classifier.bias", {model.num_labels}});
  return shapes;
}

MLP::MLP(const ModelArguments& config) : config_(config) {
  const auto shapes = parameter_shapes(config);
  for (std::size_t i = 0; i < shapes.size(); i += 2) {
    auto [w, b] = make_linear(shapes[i].second[1], shapes[i].second[0]);
    parameters_.emplace_back(shapes[i].first, w);
    parameters_.emplace_back(shapes[i + 1].first, b);
  }
}

at::Tensor MLP::forward(const at::Tensor& inputs, bool training) const {
  at::Tensor x = inputs;
  for (std::int64_t i = 0; i < config_.num_layers; ++i) {
    x = at::relu(at::linear(x, parameters_[2 * i].second, parameters_[2 * i + 1].second));
    x = at::dropout(x, config_.dropout, training);
  }
  return at::linear(x, parameters_[2 * config_.num_layers].second, parameters_[2 * config_.num_layers + 1].second);
}

std::int64_t MLP::num_parameters() const {
  std::int64_t n = 0;
  for (const auto& [name, p] : parameters_) n += p.numel();
  return n;
}

}  // namespace ckpt::train
