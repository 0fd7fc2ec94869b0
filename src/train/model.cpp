#include "train/model.hpp"

#include <cmath>

#include "util/error.hpp"

#ifndef CKPT_VERSION
#error "CKPT_VERSION must be defined by the build"
#endif

namespace ckpt::train {

ModelConfig ModelConfig::from_arguments(const Arguments& args) {
  ModelConfig c;
  c.input_size = get_int(args, "input_size");
  c.hidden_size = get_int(args, "hidden_size");
  c.num_layers = get_int(args, "num_layers");
  c.num_labels = get_int(args, "num_labels");
  c.dropout = get_number(args, "dropout");
  auto check = [](bool ok, const char* key, const char* what) {
    if (!ok) throw Error(ErrorKind::invalid_argument, "", std::string("--") + flag_name(key), what);
  };
  constexpr std::int64_t kMaxWidth = 1 << 20;
  check(c.input_size > 0 && c.input_size <= kMaxWidth, "input_size", "must be between 1 and 1048576");
  check(c.hidden_size > 0 && c.hidden_size <= kMaxWidth, "hidden_size", "must be between 1 and 1048576");
  check(c.num_layers >= 0 && c.num_layers <= 1000, "num_layers", "must be between 0 and 1000");
  check(c.num_labels >= 2 && c.num_labels <= kMaxWidth, "num_labels", "must be between 2 and 1048576");
  check(c.dropout >= 0 && c.dropout < 1, "dropout", "must be in [0, 1)");
  std::int64_t parameters = 0;
  for (const auto& [name, shape] : c.parameter_shapes()) parameters += shape.size() == 2 ? shape[0] * shape[1] : shape[0];
  check(parameters <= (std::int64_t{1} << 34), "hidden_size", "more than 2^34 parameters");
  return c;
}

json::Json ModelConfig::to_json() const {
  json::Json j = json::Json::object();
  j["architectures"] = json::Json::array({"CkptMLPForClassification"});
  j["ckpt_version"] = CKPT_VERSION;
  j["dropout"] = dropout;
  j["hidden_size"] = hidden_size;
  j["input_size"] = input_size;
  j["model_type"] = kModelType;
  j["num_labels"] = num_labels;
  j["num_layers"] = num_layers;
  j["torch_dtype"] = "float32";
  return j;
}

ModelConfig ModelConfig::from_json(const json::Json& config, const std::string& path) {
  const std::optional<std::string> model_type =
      config.is_object() ? json::Fields(config, path, "", json::WrongType::absent).optional_string("model_type") : std::nullopt;
  if (model_type != kModelType) {
    throw Error(ErrorKind::unsupported, path, "model_type", std::string("not a ") + kModelType + " model (ckpt resume continues runs of its own trainer)");
  }
  const json::Fields fields(config, path, "");
  Arguments args;
  for (const char* key : {"input_size", "hidden_size", "num_layers", "num_labels"}) args[key] = fields.int64(key);
  args["dropout"] = fields.number("dropout");
  try {
    return from_arguments(resolve_arguments(args, {}));
  } catch (const Error& e) {
    throw Error(ErrorKind::corrupt, path, e.where(), e.detail());
  }
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

std::vector<std::pair<std::string, std::vector<std::int64_t>>> ModelConfig::parameter_shapes() const {
  std::vector<std::pair<std::string, std::vector<std::int64_t>>> shapes;
  std::int64_t width = input_size;
  for (std::int64_t i = 0; i < num_layers; ++i) {
    shapes.push_back({"hidden." + std::to_string(i) + ".weight", {hidden_size, width}});
    shapes.push_back({"hidden." + std::to_string(i) + ".bias", {hidden_size}});
    width = hidden_size;
  }
  shapes.push_back({"classifier.weight", {num_labels, width}});
  shapes.push_back({"classifier.bias", {num_labels}});
  return shapes;
}

MLP::MLP(const ModelConfig& config) : config_(config) {
  const auto shapes = config.parameter_shapes();
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
