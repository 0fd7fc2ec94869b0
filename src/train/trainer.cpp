// The library's entry point (train/api.hpp), the run's setup and the training loop; resuming is in
// trainer_resume.cpp, saving in trainer_save.cpp.
//
// Order of random draws, which resume reproduces exactly:
//   set_seed(seed): Python random, numpy and torch seeded as random.seed / np.random.seed / torch.manual_seed;
//   the dataset from its own RandomState(seed) (train/data.hpp); the model's initialisation from torch's
//   generator; at the start of each epoch random.shuffle of the example indices; for each batch its input noise
//   from numpy and its dropout masks from torch. Nothing else draws.
// Resuming from step S of an epoch of P steps: the model is built (its initialisation draws are overwritten),
// the shuffles of every epoch up to the current one are replayed from the seed, without computing anything,
// to recover the current epoch's order; then rng_state.pth restores all three generators to where the
// uninterrupted run had them after step S.
//
// With N processes (a torch.distributed Gloo group, train/distributed.hpp), as DDP under the Hugging Face Trainer:
// every rank seeds and shuffles alike; DistributedSampler gives rank r the examples at positions r, r+N, ... of
// the epoch's order (padded to a multiple of N by repeating its start); each rank draws the input noise of the
// whole global batch and keeps its rows; gradients, the loss and the stop flag (Ctrl-C) are summed across ranks
// in one all-reduce before clipping, and the gradients divided by N. So N processes with per-device batch B
// take the steps of one process with batch N*B, up to float summation order (dropout masks aside: each rank
// draws them for its own rows). Rank 0 alone evaluates and writes the checkpoint; every rank writes its
// rng_state_<rank>.pth (and with --shard-optimizer its optimizer_<rank>.pt) into rank 0's staging directory;
// the ranks agree that every part is durable before rank 0 renames it into place.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numeric>

#include "checkpoint/best.hpp"
#include "checkpoint/convert.hpp"
#include "checkpoint/rotation.hpp"
#include "checkpoint/run_dir.hpp"
#include "checkpoint/weights_layout.hpp"
#include "train/rng_state.hpp"
#include "train/trainer.hpp"
#include "util/fs.hpp"
#include "util/mapped_file.hpp"

namespace ckpt::train {
namespace fs = std::filesystem;
using checkpoint::RunLock;

void Trainer::validate_arguments() const {
  const TrainingArguments& training = args_.training;
  check_bounds(args_);
  check_model_size(args_.model);
  // Bounds that keep a hostile training_args.bin from exhausting memory.
  if (training.train_examples + training.eval_examples > (std::int64_t{1} << 31) / args_.model.input_size) {
    throw Error(ErrorKind::invalid_argument, "", "--train-examples", "the synthetic data would exceed 2^31 values");
  }
  if (training.max_steps <= 0 && !(training.num_train_epochs > 0)) {
    throw Error(ErrorKind::invalid_argument, "", "--max-steps",
                "neither --max-steps nor --num-train-epochs is positive");
  }
  if (!checkpoint::parse_size(training.max_shard_size)) {
    throw Error(ErrorKind::invalid_argument, "", "--max-shard-size", "expected a size such as 5GB or 512MiB");
  }
  if (world_size_ > 1 && training.async_save) {
    throw Error(ErrorKind::invalid_argument, "", "--async-save",
                "works in a single process only (the ranks agree on every save in step)");
  }
  const auto eval_steps = training.eval_steps.value_or(training.save_steps);
  if (training.load_best_model_at_end && (eval_steps == 0 || training.save_steps % eval_steps != 0)) {
    throw Error(ErrorKind::invalid_argument, "", "--load-best-model-at-end",
                "needs an evaluation at every save: --save-steps a multiple of --eval-steps");
  }
}

void Trainer::open_run_directory() {
  std::error_code ec;
  fs::create_directories(run_dir_, ec);
  if (ec) throw Error(ErrorKind::io, run_dir_, "", "cannot create the run directory: " + ec.message());
  train_lock_ = std::make_unique<RunLock>(run_dir_, false, checkpoint::kTrainLockName);
  // Holding the trainer lock, any staging directory is a leftover of a killed run.
  for (const auto& entry : fs::directory_iterator(run_dir_)) {
    if (entry.path().filename().string().rfind(checkpoint::kStagingPrefix, 0) == 0 && entry.is_directory(ec)) {
      RunLock lock(run_dir_, true);
      fs_util::remove_tree(entry.path().string());
    }
  }
}

// `ckpt save` into a run directory holding an earlier run's checkpoints: refused, or deleted, or resumed, as
// request_.earlier_run says. Rank 0 only, holding the trainer lock (open_run_directory). Returns whether to resume.
bool Trainer::take_over_run_directory() {
  const auto earlier = checkpoint::earlier_checkpoints(run_dir_);
  if (earlier.empty()) return false;
  switch (request_.earlier_run) {
    case EarlierRun::refuse:
      throw checkpoint::earlier_run_error(run_dir_, earlier);
    case EarlierRun::resume:
      return true;
    case EarlierRun::overwrite:
      for (const auto& d : checkpoint::clear_earlier_run(run_dir_).plan.decisions) {
        if (!d.remove || d.kind == checkpoint::EntryKind::trash) continue;
        result_.overwritten.push_back(d.path);
        emit(TrainEvent::Kind::overwritten, d.path);
      }
      return false;
  }
  return false;
}

void Trainer::build() {
  TrainingArguments& training = args_.training;
  if (training.threads) {
    at::set_num_threads(static_cast<int>(*training.threads));
  } else if (world_size_ > 1) {
    // The processes on this host share its cores, as torchrun's OMP_NUM_THREADS does.
    const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    at::set_num_threads(std::max(1, cores / std::max(1, request_.distributed.local_world_size)));
    training.threads = at::get_num_threads();
  } else {
    training.threads = at::get_num_threads();
  }
  python_.seed(static_cast<std::uint64_t>(training.seed));
  numpy_.seed(static_cast<std::uint32_t>(training.seed));
  torch_manual_seed(static_cast<std::uint64_t>(training.seed));

  const ModelArguments& config = args_.model;
  data_ = make_data(static_cast<std::uint32_t>(training.seed), config.input_size, config.num_labels,
                    training.train_examples, training.eval_examples);
  model_ = std::make_unique<MLP>(config);

  batch_size_ = training.per_device_train_batch_size;
  // DistributedSampler: each rank's share of an epoch, the epoch padded to a multiple of the world size.
  const std::int64_t n = (training.train_examples + world_size_ - 1) / world_size_;
  steps_per_epoch_ = (n + batch_size_ - 1) / batch_size_;
  if (training.max_steps > 0) {
    max_steps_ = training.max_steps;
    state_.num_train_epochs = max_steps_ / steps_per_epoch_ + (max_steps_ % steps_per_epoch_ > 0 ? 1 : 0);
  } else {
    max_steps_ =
        static_cast<std::int64_t>(std::ceil(training.num_train_epochs * static_cast<double>(steps_per_epoch_)));
    state_.num_train_epochs = static_cast<std::int64_t>(std::ceil(training.num_train_epochs));
  }
  state_.max_steps = max_steps_;
  state_.logging_steps = training.logging_steps;
  state_.save_steps = training.save_steps;
  state_.eval_steps = training.eval_steps.value_or(state_.save_steps);
  state_.train_batch_size = batch_size_;

  const double lr = training.learning_rate;
  optimizer_ = std::make_unique<AdamW>(model_->parameters(), lr, training.adam_beta1, training.adam_beta2,
                                       training.adam_epsilon, training.weight_decay);
  schedule_ = std::make_unique<LinearSchedule>(lr, training.warmup_steps, max_steps_, optimizer_->groups().size());
  optimizer_->learning_rates().assign(optimizer_->groups().size(), schedule_->last_lr());
  if (training.fp16) scaler_.emplace();
  if (training.shard_optimizer && world_size_ > 1) {
    // Contiguous runs of torch's parameter order (group by group), about equal in elements, one per rank.
    const auto& params = model_->parameters();
    std::vector<std::size_t> order;
    for (const auto& g : optimizer_->groups()) order.insert(order.end(), g.params.begin(), g.params.end());
    const double total = static_cast<double>(model_->num_parameters());
    owner_.assign(params.size(), 0);
    double before = 0;
    for (std::size_t index : order) {
      const double numel = static_cast<double>(params[index].second.numel());
      owner_[index] = std::min(world_size_ - 1, static_cast<int>((before + numel / 2) * world_size_ / total));
      before += numel;
    }
    std::vector<bool> owned(params.size());
    for (std::size_t i = 0; i < params.size(); ++i) owned[i] = owner_[i] == rank_;
    optimizer_->shard(rank_, world_size_, std::move(owned));
  } else if (training.shard_optimizer) {
    warn("--shard-optimizer has no effect in a single process: optimizer.pt holds the whole state");
  }

  weights_options_.safetensors = training.save_safetensors;
  weights_options_.max_shard_size = checkpoint::parse_size(training.max_shard_size);
}

void Trainer::train_step(const at::Tensor& inputs, const at::Tensor& labels) {
  auto& params = model_->parameters();
  const at::Tensor loss = at::cross_entropy_loss(model_->forward(inputs, true), labels);
  at::Tensor loss_value = loss.detach();
  bool found_inf = false;
  if (scaler_) {
    (loss * at::scalar_tensor(scaler_->scale(), at::kFloat)).backward();
    all_reduce_gradients(loss_value);
    // Half-precision gradient buffers: the scaled gradients are rounded to fp16, where they overflow.
    at::NoGradGuard no_grad;
    for (auto& [name, p] : params) {
      if (p.grad().defined()) p.mutable_grad().copy_(p.grad().to(at::kHalf));
    }
    found_inf = scaler_->unscale(params);
  } else {
    loss.backward();
    all_reduce_gradients(loss_value);
  }
  const double max_norm = args_.training.max_grad_norm;
  last_grad_norm_.reset();
  if (max_norm > 0) last_grad_norm_ = clip_grad_norm(params, max_norm).item<double>();
  wait_for_snapshot();
  if (!found_inf) {
    optimizer_->step(params);
    if (!owner_.empty()) broadcast_parameter_shares();
    optimizer_->learning_rates().assign(optimizer_->groups().size(), schedule_->step());
  }
  if (scaler_) scaler_->update(found_inf);
  for (auto& [name, p] : params) p.mutable_grad().reset();
  loss_since_log_ += loss_value;
  loss_total_ += loss_value.item<double>();
}

// ZeRO stage 1: each rank's share of the parameters, just stepped there, in one broadcast from it (a
// broadcast per parameter costs a collective's latency each, which dominated a step of a small model).
void Trainer::broadcast_parameter_shares() {
  auto& params = model_->parameters();
  at::NoGradGuard no_grad;
  for (std::size_t begin = 0, end = 0; begin < params.size(); begin = end) {
    std::vector<at::Tensor> share;
    for (end = begin; end < params.size() && owner_[end] == owner_[begin]; ++end)
      share.push_back(params[end].second.detach().view({-1}));
    at::Tensor flat = at::cat(share);  // elsewhere than on the owner, overwritten by the broadcast
    group_->broadcast(flat, owner_[begin]);
    if (owner_[begin] == rank_) continue;
    std::int64_t offset = 0;
    for (auto& tensor : share) {
      tensor.copy_(flat.narrow(0, offset, tensor.numel()));  // a view: writes the parameter
      offset += tensor.numel();
    }
  }
}

// In a group: one all-reduce of every gradient, the loss, the stop flag and which parameters have a gradient
// anywhere; gradients and loss become the global batch's means, and stop_requested_ whether any rank was
// interrupted. A parameter no rank has a gradient for keeps none (as one process would leave it).
void Trainer::all_reduce_gradients(at::Tensor& loss_value) {
  if (!group_) return;
  auto& params = model_->parameters();
  const auto count = static_cast<std::int64_t>(params.size());
  std::vector<at::Tensor> parts;
  at::Tensor has_grad = at::zeros({count}, at::kFloat);
  for (std::int64_t i = 0; i < count; ++i) {
    const at::Tensor& p = params[static_cast<std::size_t>(i)].second;
    parts.push_back(p.grad().defined() ? p.grad().reshape(-1) : at::zeros({p.numel()}, at::kFloat));
    if (p.grad().defined()) has_grad[i] = 1.0;
  }
  parts.push_back(loss_value.reshape({1}).to(at::kFloat));
  parts.push_back(at::full({1}, interrupted() ? 1.0 : 0.0, at::kFloat));
  parts.push_back(has_grad);
  at::Tensor flat = at::cat(parts);
  group_->allreduce_sum(flat);
  const std::int64_t total = flat.numel() - 2 - count;  // gradient elements
  const float* sums = flat.data_ptr<float>();
  stop_requested_ = sums[total + 1] > 0;
  const std::vector<float> graded(sums + total + 2, sums + total + 2 + count);
  flat = flat.slice(0, 0, total + 1).div_(static_cast<double>(world_size_));
  std::int64_t offset = 0;
  at::NoGradGuard no_grad;
  for (std::int64_t i = 0; i < count; ++i) {
    at::Tensor& p = params[static_cast<std::size_t>(i)].second;
    at::Tensor mean = flat.slice(0, offset, offset + p.numel()).view(p.sizes());
    offset += p.numel();
    if (graded[static_cast<std::size_t>(i)] == 0) continue;
    if (p.grad().defined())
      p.mutable_grad().copy_(mean);
    else
      p.mutable_grad() = mean.clone();
  }
  loss_value = flat[total].clone();
}

std::map<std::string, double> Trainer::evaluate() {
  const auto start = Clock::now();
  at::NoGradGuard no_grad;
  const std::int64_t n = data_.eval.labels.size(0);
  const std::int64_t bs = args_.training.per_device_eval_batch_size;
  double loss_sum = 0;
  std::int64_t correct = 0;
  std::int64_t batches = 0;
  for (std::int64_t begin = 0; begin < n; begin += bs, ++batches) {
    const std::int64_t end = std::min(n, begin + bs);
    const at::Tensor x = data_.eval.inputs.slice(0, begin, end);
    const at::Tensor y = data_.eval.labels.slice(0, begin, end);
    const at::Tensor logits = model_->forward(x, false);
    loss_sum += at::cross_entropy_loss(logits, y, {}, at::Reduction::None).sum(at::kDouble).item<double>();
    correct += logits.argmax(1).eq(y).sum().item<std::int64_t>();
  }
  const double runtime = seconds_since(start);
  std::map<std::string, double> metrics{{"eval_loss", loss_sum / static_cast<double>(n)},
                                        {"eval_accuracy", static_cast<double>(correct) / static_cast<double>(n)},
                                        {"eval_runtime", round_to(runtime, 4)},
                                        {"eval_samples_per_second", round_to(static_cast<double>(n) / runtime, 3)},
                                        {"eval_steps_per_second", round_to(static_cast<double>(batches) / runtime, 3)}};
  json::Json record = json::Json::object();
  record["epoch"] = state_.epoch;
  for (const auto& [k, v] : metrics) record[k] = v;
  record["step"] = state_.global_step;
  log(std::move(record));
  last_eval_ = metrics;
  return metrics;
}

void Trainer::log(json::Json record) {
  emit(TrainEvent::Kind::log, json::dump(record));
  state_.log_history.push_back(std::move(record));
}

void Trainer::draw_epoch_order() {
  const std::int64_t n = args_.training.train_examples;
  order_.resize(static_cast<std::size_t>(n));
  std::iota(order_.begin(), order_.end(), 0);
  python_.shuffle(order_);
  if (world_size_ == 1) {
    rank_order_ = order_;
    return;
  }
  const std::int64_t per_rank = (n + world_size_ - 1) / world_size_;
  rank_order_.clear();
  for (std::int64_t i = 0; i < per_rank; ++i)
    rank_order_.push_back(order_[static_cast<std::size_t>((i * world_size_ + rank_) % n)]);
}

void Trainer::train() {
  const double input_noise = args_.training.input_noise;
  const std::int64_t params = model_->num_parameters();
  const std::int64_t epochs_done = state_.global_step / steps_per_epoch_;
  const std::int64_t skip = state_.global_step % steps_per_epoch_;
  bool stop = state_.global_step >= max_steps_;
  for (std::int64_t epoch = epochs_done; !stop && epoch < state_.num_train_epochs; ++epoch) {
    if (!(order_drawn_ && epoch == epochs_done)) draw_epoch_order();
    const std::int64_t n = static_cast<std::int64_t>(rank_order_.size());
    for (std::int64_t s = epoch == epochs_done ? skip : 0; s < steps_per_epoch_; ++s) {
      const std::int64_t begin = s * batch_size_;
      const std::vector<std::int64_t> indices(rank_order_.begin() + begin,
                                              rank_order_.begin() + std::min(n, begin + batch_size_));
      const at::Tensor inputs = noisy_batch(data_.train, indices, input_noise, numpy_, rank_, world_size_);
      const at::Tensor labels =
          data_.train.labels.index_select(0, at::from_blob(const_cast<std::int64_t*>(indices.data()),
                                                           {static_cast<std::int64_t>(indices.size())}, at::kLong));
      train_step(inputs, labels);
      ++state_.global_step;
      ++steps_this_process_;
      state_.total_flos += 6.0 * static_cast<double>(params) * static_cast<double>(indices.size() * world_size_);
      state_.epoch = static_cast<double>(epoch) + static_cast<double>(s + 1) / static_cast<double>(steps_per_epoch_);

      const std::int64_t step = state_.global_step;
      if (step % state_.logging_steps == 0) {
        json::Json record = json::Json::object();
        const double mean = loss_since_log_.item<double>() / static_cast<double>(step - last_logged_step_);
        last_loss_ = round_to(mean, 4);
        record["epoch"] = state_.epoch;
        record["grad_norm"] = number_or_null(last_grad_norm_);
        record["learning_rate"] = schedule_->last_lr();
        record["loss"] = *last_loss_;
        record["step"] = step;
        loss_since_log_.zero_();
        last_logged_step_ = step;
        log(std::move(record));
      }
      std::map<std::string, double> metrics;
      if (state_.eval_steps > 0 && step % state_.eval_steps == 0 && main_process()) metrics = evaluate();
      if (step % state_.save_steps == 0 || (request_.checkpoint_at_end && step >= max_steps_)) save_checkpoint(metrics);
      emit(TrainEvent::Kind::progress);
      if (step < max_steps_ && (group_ ? stop_requested_ : interrupted())) stopped_early_ = true;
      if (step >= max_steps_ || stopped_early_) {
        stop = true;
        break;
      }
    }
  }
  wait_for_pending_save();
  if (args_.training.async_save) {
    for (const auto& path : result_.checkpoints_saved) emit(TrainEvent::Kind::checkpoint, path);
  }
}

void Trainer::run() {
  rank_ = request_.distributed.rank;
  world_size_ = request_.distributed.world_size;
  if (world_size_ < 1 || rank_ < 0 || rank_ >= world_size_) {
    throw Error(ErrorKind::invalid_argument, "", "RANK",
                "rank " + std::to_string(rank_) + " is not in a world of " + std::to_string(world_size_));
  }
  if (world_size_ > 1) group_ = std::make_unique<ProcessGroup>(request_.distributed);
  try {
    run_in_group();
  } catch (const std::exception& e) {
    if (group_) group_->report_failure(e.what());
    throw;
  }
}

void Trainer::run_in_group() {
  bool resuming = request_.mode == TrainMode::resume;
  if (resuming) {
    run_dir_ = request_.run_dir;
  } else {
    // With --resume-if-exists the arguments are checked once it is known whether they are a new run's or the
    // flags overriding a checkpoint's (which may allow what a new run's defaults would not).
    const bool check_now = request_.earlier_run != EarlierRun::resume;
    together("to check the arguments", [&] {
      prepare_arguments({});
      if (check_now) validate_arguments();
    });
    if (check_now) agree_on_arguments();  // before anything is touched
    // What an earlier run left is judged once, by rank 0, and the group follows (a per-rank look could differ:
    // rank 0 may have deleted it already).
    together("to open the run directory", [&] {
      if (!main_process()) return;
      open_run_directory();
      resuming = take_over_run_directory();
    });
    if (group_) resuming = group_->share(resuming ? "resume" : "", 0) == "resume";
    if (!resuming && !check_now) {
      together("to check the arguments", [&] { validate_arguments(); });
      agree_on_arguments();
    }
  }
  if (resuming) {
    // The run directory is locked first, so an archive can be restored into it (find_checkpoint).
    std::string dir;
    together("to find the checkpoint", [&] {
      if (!main_process()) return;
      if (request_.mode == TrainMode::resume) {
        fs_util::require_directory(request_.run_dir);
        open_run_directory();
      }
      dir = find_checkpoint();
    });
    if (group_) dir = group_->share(dir, 0);
    together("to read the checkpoint's arguments", [&] {
      try {
        prepare_arguments(dir);
        validate_arguments();
      } catch (const Error& e) {
        // A file of the restored copy is named by its temporary path: say which archive it came from.
        if (restored_from_.empty() || e.path().rfind(*restored_dir_, 0) != 0) throw;
        throw Error(e.kind(), e.path(), e.where(), e.detail() + " (restored from " + restored_from_ + ")");
      }
    });
    agree_on_arguments();
  }
  build();
  if (resume_dir_) {
    const auto start = Clock::now();
    together("to load the checkpoint", [&] { restore(*resume_dir_); });
    result_.load_seconds = seconds_since(start);
    start_step_ = state_.global_step;
    result_.last_checkpoint = result_.resumed_from;
    result_.last_checkpoint_step = start_step_;
    if (main_process()) emit(TrainEvent::Kind::resumed, result_.resumed_from.value_or(*resume_dir_));
  }
  if (restored_dir_) {
    fs_util::remove_tree(*restored_dir_);
    restored_dir_.reset();
  }
  result_.output_dir = run_dir_;
  result_.max_steps = max_steps_;
  try {
    train();
  } catch (...) {
    if (pending_save_.joinable()) pending_save_.join();
    throw;
  }
  result_.interrupted = stopped_early_;
  if (!result_.interrupted && main_process()) finish();
  result_.start_step = start_step_;
  result_.global_step = state_.global_step;
  result_.epoch = state_.epoch;
  result_.best_metric = state_.best_metric;
  result_.best_model_checkpoint = state_.best_model_checkpoint;
  result_.best_metric_name = checkpoint::normalize_metric(args_.training.metric_for_best_model);
  if (main_process() && result_.last_checkpoint) {
    // Whether resume's default, the newest complete checkpoint, is this run's last: not when the run resumed from
    // an older checkpoint than the run directory holds and saved none past it.
    try {
      const auto scan = checkpoint::scan_run(run_dir_);
      const auto newest = checkpoint::newest_complete(scan);
      std::error_code ec;
      result_.resume_takes_last_checkpoint =
          newest && fs::equivalent(scan.entries[*newest].path, *result_.last_checkpoint, ec);
    } catch (const Error&) {
      // Unknown: the message names the checkpoint with --from, which is right either way.
    }
  }
}

}  // namespace ckpt::train

extern "C" __attribute__((visibility("default"))) void ckpt_train_run(const ckpt::train::TrainRequest& request,
                                                                      ckpt::train::TrainResult& result) {
  using ckpt::train::TrainError;
  try {
    if (request.api_version != ckpt::train::kApiVersion || request.request_size != sizeof(ckpt::train::TrainRequest) ||
        request.result_size != sizeof(ckpt::train::TrainResult) || request.build != std::string_view(CKPT_VERSION)) {
      throw ckpt::Error(ckpt::ErrorKind::unsupported, ckpt::train::kLibraryName, "",
                        "the trainer library is from another build of ckpt");
    }
    ckpt::train::Trainer(request, result).run();
  } catch (const ckpt::Error& e) {
    result.error = TrainError{static_cast<int>(e.kind()), e.path(), e.where(), e.detail()};
  } catch (const std::exception& e) {
    // LibTorch's own errors (c10::Error) and allocation failures.
    result.error =
        TrainError{static_cast<int>(ckpt::ErrorKind::io), "", "", std::string("training failed: ") + e.what()};
  }
  // This library has its own copy of the map table (it links ckpt_core statically): a checkpoint that shrank
  // while it was read, not what its zeros led to, is the error.
  try {
    ckpt::ensure_no_mapped_file_shrank();
  } catch (const ckpt::Error& e) {
    result.error = TrainError{static_cast<int>(e.kind()), e.path(), e.where(), e.detail()};
  }
}
