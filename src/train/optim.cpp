#include "train/optim.hpp"

#include <cmath>
#include <numeric>

#include "checkpoint/shards.hpp"
#include "util/error.hpp"

namespace ckpt::train {
using pickle::Kind;
using pickle::NodeId;
using Parameters = std::vector<std::pair<std::string, at::Tensor>>;

namespace {
bool is_bias(const std::string& name) { return name.find("bias") != std::string::npos; }
}  // namespace

AdamW::AdamW(const Parameters& parameters, double lr, double beta1, double beta2, double eps, double weight_decay)
    : initial_lr_(lr), beta1_(beta1), beta2_(beta2), eps_(eps), state_(parameters.size()) {
  groups_.resize(2);
  groups_[0].weight_decay = weight_decay;
  groups_[1].weight_decay = 0.0;
  for (std::size_t i = 0; i < parameters.size(); ++i) groups_[is_bias(parameters[i].first) ? 1 : 0].params.push_back(i);
  lr_.assign(groups_.size(), lr);
}

void AdamW::step(const Parameters& parameters) {
  at::NoGradGuard no_grad;
  for (std::size_t g = 0; g < groups_.size(); ++g) {
    const double lr = lr_[g];
    const double weight_decay = groups_[g].weight_decay;
    for (std::size_t index : groups_[g].params) {
      const at::Tensor& param = parameters[index].second;
      const at::Tensor& grad = param.grad();
      if (!grad.defined() || (shard_ && !shard_->owned[index])) continue;
      auto& state = state_[index];
      if (!state) {
        state = ParamState{at::zeros({}, at::kFloat), at::zeros_like(param, at::MemoryFormat::Preserve),
                           at::zeros_like(param, at::MemoryFormat::Preserve)};
        state_order_.push_back(index);
      }
      state->step.add_(1);
      param.mul_(1 - lr * weight_decay);
      state->exp_avg.mul_(beta1_).add_(grad, 1 - beta1_);
      state->exp_avg_sq.mul_(beta2_).addcmul_(grad, grad, 1 - beta2_);
      const double step = state->step.item<float>();
      const double bias_correction1 = 1 - std::pow(beta1_, step);
      const double bias_correction2 = 1 - std::pow(beta2_, step);
      const double step_size = lr / bias_correction1;
      const double bias_correction2_sqrt = std::sqrt(bias_correction2);
      const at::Tensor denom = (state->exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps_);
      param.addcdiv_(state->exp_avg, denom, -step_size);
    }
  }
}

std::vector<std::size_t> AdamW::packed_order() const {
  std::vector<std::size_t> order;
  for (const auto& g : groups_) order.insert(order.end(), g.params.begin(), g.params.end());
  return order;
}

void AdamW::shard(int rank, int world_size, std::vector<bool> owned) {
  for (std::size_t i = 0; i < state_.size(); ++i) {
    if (!owned[i]) state_[i].reset();
  }
  std::erase_if(state_order_, [&](std::size_t i) { return !owned[i]; });
  shard_ = Shard{rank, world_size, std::move(owned)};
}

NodeId AdamW::state_dict(GraphMaker& out) const {
  const auto order = packed_order();
  std::vector<std::size_t> packed_index(state_.size());
  for (std::size_t k = 0; k < order.size(); ++k) packed_index[order[k]] = k;
  std::vector<NodeId> state_items;
  for (std::size_t index : state_order_) {
    const ParamState& s = *state_[index];
    state_items.push_back(out.integer(static_cast<std::int64_t>(packed_index[index])));
    state_items.push_back(out.dict({out.text("step"), out.tensor(s.step), out.text("exp_avg"), out.tensor(s.exp_avg),
                                    out.text("exp_avg_sq"), out.tensor(s.exp_avg_sq)}));
  }
  std::vector<NodeId> groups;
  std::size_t next = 0;
  for (std::size_t g = 0; g < groups_.size(); ++g) {
    std::vector<NodeId> params;
    for (std::size_t k = 0; k < groups_[g].params.size(); ++k)
      params.push_back(out.integer(static_cast<std::int64_t>(next++)));
    groups.push_back(out.dict({out.text("weight_decay"), out.number(groups_[g].weight_decay),
                               out.text("lr"),           out.number(lr_[g]),
                               out.text("betas"),        out.tuple({out.number(beta1_), out.number(beta2_)}),
                               out.text("eps"),          out.number(eps_),
                               out.text("amsgrad"),      out.boolean(false),
                               out.text("foreach"),      out.none(),
                               out.text("maximize"),     out.boolean(false),
                               out.text("capturable"),   out.boolean(false),
                               out.text("initial_lr"),   out.number(initial_lr_),
                               out.text("params"),       out.list(std::move(params))}));
  }
  std::vector<NodeId> root{out.text("state"), out.dict(std::move(state_items)), out.text("param_groups"),
                           out.list(std::move(groups))};
  if (shard_) {
    std::vector<NodeId> owned;
    for (std::size_t k = 0; k < order.size(); ++k) {
      if (shard_->owned[order[k]]) owned.push_back(out.integer(static_cast<std::int64_t>(k)));
    }
    root.push_back(out.text(checkpoint::kShardKey));
    root.push_back(out.dict({out.text("rank"), out.integer(shard_->rank), out.text("world_size"),
                             out.integer(shard_->world_size), out.text("params"), out.list(std::move(owned))}));
  }
  return out.dict(std::move(root));
}

void AdamW::load_state_dict(const std::vector<const checkpoint::Source*>& sources, const Parameters& parameters) {
  if (sources.empty()) throw Error(ErrorKind::invalid_argument, "", "optimizer", "no optimizer state to load");
  const auto order = packed_order();
  state_.assign(parameters.size(), std::nullopt);
  state_order_.clear();
  std::vector<bool> seen(parameters.size(), false);
  for (std::size_t file = 0; file < sources.size(); ++file) {
    const checkpoint::Source& source = *sources[file];
    const GraphReader in{source.graph(), source.path};
    const NodeId root = source.graph().root();
    const auto groups = in.items(in.get(root, "param_groups"), Kind::list, "param_groups");
    if (groups.size() != groups_.size()) in.bad("param_groups");
    std::size_t next = 0;
    for (std::size_t g = 0; g < groups.size(); ++g) {
      const auto params =
          in.items(in.get(groups[g], "params"), Kind::list, "param_groups." + std::to_string(g) + ".params");
      if (params.size() != groups_[g].params.size()) in.bad("param_groups." + std::to_string(g) + ".params");
      for (NodeId p : params) {
        if (in.integer(p, "param_groups.params") != static_cast<std::int64_t>(next++))
          in.bad("param_groups." + std::to_string(g) + ".params");
      }
      if (file > 0) continue;
      lr_[g] = in.number(in.get(groups[g], "lr"), "lr");
      groups_[g].weight_decay = in.number(in.get(groups[g], "weight_decay"), "weight_decay");
      if (g == 0) {
        initial_lr_ = in.number(in.get(groups[g], "initial_lr"), "initial_lr");
        const auto betas = in.items(in.get(groups[g], "betas"), Kind::tuple, "betas");
        if (betas.size() != 2) in.bad("betas");
        beta1_ = in.number(betas[0], "betas");
        beta2_ = in.number(betas[1], "betas");
        eps_ = in.number(in.get(groups[g], "eps"), "eps");
      }
    }
    const auto items = in.items(in.get(root, "state"), Kind::dict, "state");
    DirectReader reader(source.file().file());
    for (std::size_t i = 0; i + 1 < items.size(); i += 2) {
      const std::int64_t k = in.integer(items[i], "state");
      const std::string where = "state." + std::to_string(k);
      if (k < 0 || static_cast<std::size_t>(k) >= order.size() || seen[order[static_cast<std::size_t>(k)]])
        in.bad(where);
      const std::size_t index = order[static_cast<std::size_t>(k)];
      seen[index] = true;
      if (shard_ && !shard_->owned[index]) continue;
      const auto& param = parameters[index].second;
      auto tensor = [&](const char* key, at::IntArrayRef shape) {
        const NodeId node = in.get(items[i + 1], key);
        in.expect(node, Kind::tensor, where + "." + key);
        return read_tensor_as(source, reader, node, shape, at::kFloat,
                              where + "." + key + " (parameter '" + parameters[index].first + "')");
      };
      ParamState s;
      s.step = tensor("step", {});
      s.exp_avg = tensor("exp_avg", param.sizes());
      s.exp_avg_sq = tensor("exp_avg_sq", param.sizes());
      state_[index] = std::move(s);
      state_order_.push_back(index);
    }
  }
}

AdamW AdamW::snapshot(const std::function<at::Tensor(const at::Tensor&)>& copy) const {
  AdamW result = *this;
  for (auto& s : result.state_) {
    if (s) *s = ParamState{copy(s->step), copy(s->exp_avg), copy(s->exp_avg_sq)};
  }
  return result;
}

LinearSchedule::LinearSchedule(double base_lr, std::int64_t warmup_steps, std::int64_t total_steps, std::size_t groups)
    : base_lr_(base_lr), warmup_(warmup_steps), total_(total_steps), groups_(groups) {
  step();  // LambdaLR's constructor steps once, to epoch 0
}

double LinearSchedule::factor(std::int64_t step) const {
  if (step < warmup_) return static_cast<double>(step) / static_cast<double>(std::max<std::int64_t>(1, warmup_));
  return std::max(
      0.0, static_cast<double>(total_ - step) / static_cast<double>(std::max<std::int64_t>(1, total_ - warmup_)));
}

double LinearSchedule::step() {
  ++last_epoch_;
  last_lr_ = base_lr_ * factor(last_epoch_);
  return last_lr_;
}

NodeId LinearSchedule::state_dict(GraphMaker& out) const {
  std::vector<NodeId> base;
  std::vector<NodeId> last;
  std::vector<NodeId> lambdas;
  for (std::size_t g = 0; g < groups_; ++g) {
    base.push_back(out.number(base_lr_));
    last.push_back(out.number(last_lr_));
    lambdas.push_back(out.dict({}));  // a functools.partial's __dict__, as LambdaLR saves it
  }
  return out.dict({out.text("base_lrs"), out.list(std::move(base)), out.text("last_epoch"), out.integer(last_epoch_),
                   out.text("verbose"), out.boolean(false), out.text("_step_count"), out.integer(last_epoch_ + 1),
                   out.text("_get_lr_called_within_step"), out.boolean(false), out.text("_last_lr"),
                   out.list(std::move(last)), out.text("lr_lambdas"), out.list(std::move(lambdas))});
}

void LinearSchedule::load_state_dict(const GraphReader& in, NodeId root) {
  const auto base = in.items(in.get(root, "base_lrs"), Kind::list, "base_lrs");
  const auto last = in.items(in.get(root, "_last_lr"), Kind::list, "_last_lr");
  if (base.size() != groups_ || last.size() != groups_) in.bad("base_lrs");
  base_lr_ = in.number(base[0], "base_lrs");
  last_lr_ = in.number(last[0], "_last_lr");
  last_epoch_ = in.integer(in.get(root, "last_epoch"), "last_epoch");
  if (last_epoch_ < 0) in.bad("last_epoch");
}

bool GradScaler::unscale(const Parameters& parameters) const {
  at::NoGradGuard no_grad;
  const float inv_scale = static_cast<float>(1.0 / static_cast<double>(scale_));
  bool found_inf = false;
  for (const auto& [name, p] : parameters) {
    const at::Tensor& grad = p.grad();
    if (!grad.defined()) continue;
    grad.mul_(inv_scale);
    if (!at::isfinite(grad).all().item<bool>()) found_inf = true;
  }
  return found_inf;
}

void GradScaler::update(bool found_inf) {
  if (found_inf) {
    scale_ = scale_ * static_cast<float>(backoff_factor_);
    growth_tracker_ = 0;
    return;
  }
  if (++growth_tracker_ == growth_interval_) {
    scale_ = scale_ * static_cast<float>(growth_factor_);
    growth_tracker_ = 0;
  }
}

NodeId GradScaler::state_dict(GraphMaker& out) const {
  return out.dict({out.text("scale"), out.number(scale_), out.text("growth_factor"), out.number(growth_factor_),
                   out.text("backoff_factor"), out.number(backoff_factor_), out.text("growth_interval"),
                   out.integer(growth_interval_), out.text("_growth_tracker"), out.integer(growth_tracker_)});
}

void GradScaler::load_state_dict(const GraphReader& in, NodeId root) {
  const double scale = in.number(in.get(root, "scale"), "scale");
  if (!(scale > 0) || !std::isfinite(scale)) in.bad("scale");
  scale_ = static_cast<float>(scale);
  growth_factor_ = in.number(in.get(root, "growth_factor"), "growth_factor");
  backoff_factor_ = in.number(in.get(root, "backoff_factor"), "backoff_factor");
  growth_interval_ = in.integer(in.get(root, "growth_interval"), "growth_interval");
  growth_tracker_ = in.integer(in.get(root, "_growth_tracker"), "_growth_tracker");
  if (growth_interval_ <= 0 || growth_tracker_ < 0) in.bad("growth_interval");
}

at::Tensor grad_norm(const Parameters& parameters) {
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> norms;
  for (const auto& [name, p] : parameters) {
    if (!p.grad().defined()) continue;
    std::vector<std::int64_t> dims(static_cast<std::size_t>(p.dim()));
    std::iota(dims.begin(), dims.end(), 0);
    norms.push_back(at::norm(p.grad(), 2.0, dims));
  }
  if (norms.empty()) return at::zeros({});
  return at::norm(at::stack(norms), 2.0, {0});
}

at::Tensor clip_grad_norm(const Parameters& parameters, double max_norm) {
  at::NoGradGuard no_grad;
  const at::Tensor total = grad_norm(parameters);
  // Python's `max_norm / (total_norm + 1e-6)` is reciprocal() * max_norm.
  const at::Tensor coefficient = at::clamp((total + 1e-6).reciprocal() * max_norm, c10::nullopt, 1.0);
  for (const auto& [name, p] : parameters) {
    if (p.grad().defined()) p.grad().mul_(coefficient);
  }
  return total;
}

}  // namespace ckpt::train
