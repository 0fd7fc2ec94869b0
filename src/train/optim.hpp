// Optimisation as torch.optim and transformers do it, with state dicts that Python loads into the real
// classes: AdamW (torch 1.13's single-tensor algorithm; Trainer's two parameter groups, weights with decay and
// biases without), the linear schedule with warmup (a LambdaLR), GradScaler's dynamic loss scaling, and
// clip_grad_norm_.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "train/tensors.hpp"

namespace ckpt::train {

class AdamW {
 public:
  struct Group {
    std::vector<std::size_t> params;  // indices into the model's parameter list
    double weight_decay = 0;
  };
  // Parameter names decide the groups as the Trainer does: biases get no weight decay.
  AdamW(const std::vector<std::pair<std::string, at::Tensor>>& parameters, double lr, double beta1, double beta2,
        double eps, double weight_decay);

  // One step over every parameter that has a gradient (and that this rank owns, when sharded), with each
  // group's current learning rate.
  void step(const std::vector<std::pair<std::string, at::Tensor>>& parameters);

  // ZeRO stage 1: this rank keeps and steps the state of the parameters `owned` marks (by parameter index) and
  // drops the rest; state_dict() then writes the shard (checkpoint/shards.hpp).
  void shard(int rank, int world_size, std::vector<bool> owned);

  std::vector<Group>& groups() { return groups_; }
  std::vector<double>& learning_rates() { return lr_; }

  // optimizer.state_dict(): {"state": {i: {"step", "exp_avg", "exp_avg_sq"}}, "param_groups": [...]} with the
  // indices torch assigns (group by group).
  pickle::NodeId state_dict(GraphMaker& out) const;
  // From optimizer.pt, or from every optimizer_<rank>.pt of a sharded one (merged; hyperparameters from the
  // first). When this optimizer is sharded, only the state of the parameters it owns is read. Throws corrupt
  // when the files are not state dicts of this optimizer for these parameters.
  void load_state_dict(const std::vector<const checkpoint::Source*>& sources,
                       const std::vector<std::pair<std::string, at::Tensor>>& parameters);
  // A copy whose state tensors are `copy(tensor)` of this one's (an asynchronous save's snapshot).
  AdamW snapshot(const std::function<at::Tensor(const at::Tensor&)>& copy) const;

 private:
  struct ParamState {
    at::Tensor step;  // float32 0-d, as torch 1.13 keeps it
    at::Tensor exp_avg;
    at::Tensor exp_avg_sq;
  };
  std::vector<std::size_t> packed_order() const;  // parameter index per torch state index

  std::vector<Group> groups_;
  std::vector<double> lr_;  // per group, set by the schedule
  double initial_lr_ = 0;
  double beta1_ = 0.9;
  double beta2_ = 0.999;
  double eps_ = 1e-8;
  std::vector<std::optional<ParamState>> state_;  // per parameter
  std::vector<std::size_t> state_order_;          // parameters in the order their state was created
  struct Shard {
    int rank = 0;
    int world_size = 1;
    std::vector<bool> owned;  // per parameter
  };
  std::optional<Shard> shard_;
};

// transformers.get_linear_schedule_with_warmup as a LambdaLR.
class LinearSchedule {
 public:
  LinearSchedule(double base_lr, std::int64_t warmup_steps, std::int64_t total_steps, std::size_t groups);
  double factor(std::int64_t step) const;
  // LambdaLR.step(): advances last_epoch and returns the new learning rate.
  double step();
  double last_lr() const { return last_lr_; }

  pickle::NodeId state_dict(GraphMaker& out) const;
  void load_state_dict(const GraphReader& in, pickle::NodeId root);

 private:
  double base_lr_;
  std::int64_t warmup_;
  std::int64_t total_;
  std::size_t groups_;
  std::int64_t last_epoch_ = -1;
  double last_lr_ = 0;
};

// torch.cuda.amp.GradScaler's dynamic loss scale, on CPU.
class GradScaler {
 public:
  float scale() const { return scale_; }
  // Unscales gradients in place (multiplying by 1/scale rounded to float) and says whether any is inf or NaN.
  bool unscale(const std::vector<std::pair<std::string, at::Tensor>>& parameters) const;
  void update(bool found_inf);

  pickle::NodeId state_dict(GraphMaker& out) const;
  void load_state_dict(const GraphReader& in, pickle::NodeId root);

 private:
  float scale_ = 65536.0f;
  double growth_factor_ = 2.0;
  double backoff_factor_ = 0.5;
  std::int64_t growth_interval_ = 2000;
  std::int64_t growth_tracker_ = 0;
};

// torch.nn.utils.clip_grad_norm_(parameters, max_norm): returns the total norm before clipping.
at::Tensor clip_grad_norm(const std::vector<std::pair<std::string, at::Tensor>>& parameters, double max_norm);
// The same norm without clipping.
at::Tensor grad_norm(const std::vector<std::pair<std::string, at::Tensor>>& parameters);

}  // namespace ckpt::train
