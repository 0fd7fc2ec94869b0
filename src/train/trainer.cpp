// The training loop, checkpoint saving and resuming, and the library's entry point (train/api.hpp).
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
#include <chrono>
#include <cmath>
#include <cstring>
#include <exception>
#include <future>
#include <filesystem>
#include <numeric>
#include <optional>
#include <thread>

#include "checkpoint/archive.hpp"
#include "checkpoint/lock.hpp"
#include "checkpoint/rotation.hpp"
#include "checkpoint/run_dir.hpp"
#include "checkpoint/shards.hpp"
#include "checkpoint/source.hpp"
#include "checkpoint/weights_layout.hpp"
#include "checkpoint/convert.hpp"
#include "format/json.hpp"
#include "format/safetensors.hpp"
#include "train/api.hpp"
#include "train/data.hpp"
#include "train/distributed.hpp"
#include "train/model.hpp"
#include "train/optim.hpp"
#include "train/rng_state.hpp"
#include "train/tensors.hpp"
#include "util/atomic_file.hpp"
#include "util/error.hpp"
#include "util/fs.hpp"
#include "util/mapped_file.hpp"

namespace ckpt::train {
namespace {
namespace fs = std::filesystem;
using checkpoint::RunLock;
using pickle::Kind;
using pickle::NodeId;
using Clock = std::chrono::steady_clock;
using Parameters = std::vector<std::pair<std::string, at::Tensor>>;

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

// Python's round(x, digits) for the figures the Trainer rounds (loss to 4 digits, rates to 3).
double round_to(double x, int digits) {
  if (!std::isfinite(x)) return x;
  char text[64];
  std::snprintf(text, sizeof text, "%.*f", digits, x);
  return std::strtod(text, nullptr);
}

json::Json number_or_null(std::optional<double> x) { return x ? json::Json(*x) : json::Json(); }

// ---- trainer_state.json ----

struct TrainerState {
  std::int64_t global_step = 0;
  double epoch = 0;
  std::int64_t max_steps = 0;
  std::int64_t num_train_epochs = 0;
  std::int64_t logging_steps = 0;
  std::int64_t eval_steps = 0;
  std::int64_t save_steps = 0;
  std::int64_t train_batch_size = 0;
  double total_flos = 0;
  json::Json log_history = json::Json::array();
  std::optional<double> best_metric;
  std::optional<std::string> best_model_checkpoint;

  std::string to_text() const {
    json::Json j = json::Json::object();
    j["best_metric"] = number_or_null(best_metric);
    j["best_model_checkpoint"] = best_model_checkpoint ? json::Json(*best_model_checkpoint) : json::Json();
    j["epoch"] = epoch;
    j["eval_steps"] = eval_steps;
    j["global_step"] = global_step;
    j["is_hyper_param_search"] = false;
    j["is_local_process_zero"] = true;
    j["is_world_process_zero"] = true;
    j["log_history"] = log_history;
    j["logging_steps"] = logging_steps;
    j["max_steps"] = max_steps;
    j["num_input_tokens_seen"] = 0;
    j["num_train_epochs"] = num_train_epochs;
    j["save_steps"] = save_steps;
    j["total_flos"] = total_flos;
    j["train_batch_size"] = train_batch_size;
    j["trial_name"] = nullptr;
    j["trial_params"] = nullptr;
    return json::dump_python_sorted(j, 2) + "\n";
  }

  void load(const std::string& path) {
    const json::Json j = json::parse_file(path);
    auto bad = [&](const char* key) { throw Error(ErrorKind::corrupt, path, key, "missing or of the wrong type"); };
    if (!j.is_object()) bad("trainer_state");
    if (!j.contains("global_step") || !j["global_step"].is_number_integer()) bad("global_step");
    global_step = j["global_step"].get<std::int64_t>();
    if (global_step < 0) bad("global_step");
    if (j.contains("total_flos") && j["total_flos"].is_number()) total_flos = j["total_flos"].get<double>();
    if (j.contains("log_history") && j["log_history"].is_array()) log_history = j["log_history"];
    if (j.contains("best_metric") && j["best_metric"].is_number()) best_metric = j["best_metric"].get<double>();
    if (j.contains("best_model_checkpoint") && j["best_model_checkpoint"].is_string()) {
      best_model_checkpoint = j["best_model_checkpoint"].get<std::string>();
    }
  }
};

// ---- what one checkpoint holds, ready to be written ----

struct CheckpointFiles {
  std::int64_t step = 0;
  bool main = true;  // the main process's files: all but the other ranks' rng states and optimizer shards
  bool has_optimizer = true;
  std::string optimizer_name = "optimizer.pt";
  std::string rng_name = "rng_state.pth";
  // With --async-save: (live tensor, snapshot buffer) pairs still to be copied before writing.
  std::vector<std::pair<at::Tensor, at::Tensor>> pending_copies;
  Parameters weights;  // contiguous tensors (copies when the save is asynchronous)
  GraphMaker optimizer, scheduler, scaler, rng, arguments;
  NodeId optimizer_root = 0, scheduler_root = 0, scaler_root = 0, rng_root = 0, arguments_root = 0;
  bool has_scaler = false;
  std::string trainer_state;
  std::string config;
};

struct WeightsOptions {
  bool safetensors = true;
  std::optional<std::uint64_t> max_shard_size;
};

// `durable` false: `dir` is a staging directory whose files the caller fsyncs before renaming it.
// Returns the names of the files written.
std::vector<std::string> write_weights(const std::string& dir, const Parameters& weights, const WeightsOptions& options, bool durable) {
  const WriteOptions write_options{.direct = true, .durable = durable};
  const auto format = options.safetensors ? checkpoint::WeightsFormat::safetensors : checkpoint::WeightsFormat::pytorch;
  std::vector<std::uint64_t> sizes;
  std::uint64_t total = 0;
  for (const auto& [name, t] : weights) {
    sizes.push_back(t.nbytes());
    total += t.nbytes();
  }
  const auto shards = checkpoint::greedy_shards(sizes, options.max_shard_size);
  std::vector<std::pair<std::string, std::string>> index;
  for (std::size_t k = 0; k < shards.size(); ++k) {
    const std::string name = shards.size() == 1 ? checkpoint::single_weights_name(format) : checkpoint::shard_name(format, k, shards.size());
    const std::string path = (fs::path(dir) / name).string();
    if (options.safetensors) {
      std::vector<safetensors::OutputTensor> layout;
      std::map<std::string, const at::Tensor*> by_name;
      for (std::size_t i : shards[k]) {
        const auto& [tensor_name, t] = weights[i];
        layout.push_back({tensor_name, to_dtype(t.scalar_type()), t.sizes().vec()});
        by_name[tensor_name] = &t;
      }
      safetensors::write_file(path, std::move(layout), {{"format", "pt"}},
                              [&](const safetensors::OutputTensor& t, AtomicFile& out) { out.write(bytes_of(*by_name.at(t.name))); },
                              write_options);
    } else {
      // A plain dict per file, as transformers' shard_checkpoint hands torch.save.
      GraphMaker out;
      std::vector<NodeId> items;
      for (std::size_t i : shards[k]) {
        items.push_back(out.text(weights[i].first));
        items.push_back(out.tensor(weights[i].second));
      }
      out.write(path, out.dict(std::move(items)), durable);
    }
    for (std::size_t i : shards[k]) index.emplace_back(weights[i].first, name);
  }
  std::vector<std::string> written;
  for (const auto& [tensor, file] : index) {
    if (written.empty() || written.back() != file) written.push_back(file);
  }
  if (shards.size() > 1) {
    AtomicFile out((fs::path(dir) / checkpoint::index_name(format)).string(), write_options);
    out.write(checkpoint::index_json(total, std::move(index)));
    out.commit();
    written.push_back(checkpoint::index_name(format));
  }
  return written;
}

void write_text(const std::string& path, const std::string& text, bool durable) {
  AtomicFile out(path, {.durable = durable});
  out.write(text);
  out.commit();
}

// Writes this process's files of a checkpoint into the staging directory `dir` and makes each durable (the
// directory itself is the committer's). The weights and trainer_state.json come last but one and last: a
// checkpoint counts as complete once they are there.
void write_checkpoint_files(const std::string& dir, CheckpointFiles& files, const WeightsOptions& options) {
  const fs::path d(dir);
  std::vector<std::string> paths;
  auto path = [&](const std::string& name) { return paths.emplace_back((d / name).string()); };
  if (files.main) {
    for (const auto& name : write_weights(dir, files.weights, options, false)) paths.push_back((d / name).string());
  }
  if (files.has_optimizer) files.optimizer.write(path(files.optimizer_name), files.optimizer_root, false);
  files.rng.write(path(files.rng_name), files.rng_root, false);
  if (files.main) {
    files.scheduler.write(path("scheduler.pt"), files.scheduler_root, false);
    if (files.has_scaler) files.scaler.write(path("scaler.pt"), files.scaler_root, false);
    files.arguments.write(path("training_args.bin"), files.arguments_root, false);
    write_text(path("config.json"), files.config, false);
    write_text(path("trainer_state.json"), files.trainer_state, false);
  }
  fs_util::fsync_files(paths);
}

// ---- the trainer ----

class Trainer {
 public:
  Trainer(const TrainRequest& request, TrainResult& result) : request_(request), result_(result) {}
  ~Trainer() {
    // A restored copy left by a failure; if even that fails, the next run clears it as a leftover staging directory.
    try {
      if (restored_dir_) fs_util::remove_tree(*restored_dir_);
    } catch (const Error&) {
    }
  }
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;
  void run();

 private:
  void emit(TrainEvent::Kind kind, std::string text = {}) const {
    if (!request_.on_event) return;
    TrainEvent e;
    e.kind = kind;
    e.step = state_.global_step;
    e.max_steps = max_steps_;
    e.start_step = start_step_;
    e.elapsed_seconds = seconds_since(started_);
    e.loss = last_loss_;
    e.text = std::move(text);
    request_.on_event(e);
  }
  void warn(const std::string& message) {
    result_.warnings.push_back(message);
    emit(TrainEvent::Kind::warning, message);
  }
  bool interrupted() const { return request_.interrupted && request_.interrupted->load(); }
  bool main_process() const { return rank_ == 0; }

  // Runs `work` on this rank, then, in a group, has every rank agree that it succeeded: when another rank
  // failed, this one throws an error naming it, so every rank stops at the same point.
  template <typename Work>
  void together(const std::string& what, Work&& work);
  // The run itself, once the group (if any) is formed.
  void run_in_group();
  // Resume: the checkpoint directory (rank 0 finds it, restoring an archive if need be; the others are told).
  std::string find_checkpoint();
  void prepare_arguments(const std::string& checkpoint_dir);
  void agree_on_arguments();
  void validate_arguments() const;
  void open_run_directory();
  bool take_over_run_directory();
  void build();
  void restore(const std::string& checkpoint_dir);
  void draw_epoch_order();
  void train();
  void train_step(const at::Tensor& inputs, const at::Tensor& labels);
  void all_reduce_gradients(at::Tensor& loss_value);
  void broadcast_parameter_shares();
  std::map<std::string, double> evaluate();
  void log(json::Json record);
  void save_checkpoint(const std::map<std::string, double>& metrics);
  CheckpointFiles collect(bool copy);
  void commit(CheckpointFiles files);
  void remove_staging_after_failure(const std::string& staging);
  void wait_for_pending_save();
  // Before anything modifies parameters or optimizer state: the asynchronous save's copy of them is done.
  void wait_for_snapshot();
  void finish();
  void load_weights(const std::string& dir);

  const TrainRequest& request_;
  TrainResult& result_;
  Clock::time_point started_ = Clock::now();
  int rank_ = 0;
  int world_size_ = 1;
  std::unique_ptr<ProcessGroup> group_;  // with more than one process
  std::vector<int> owner_;               // --shard-optimizer: per parameter, the rank that steps it
  bool stop_requested_ = false;          // in a group: some rank was interrupted (agreed at the last step)

  Arguments args_;
  std::string run_dir_;
  std::optional<std::string> resume_dir_;
  // Resuming from an archive: the staging directory it was restored into, removed once loaded, and the archive.
  std::optional<std::string> restored_dir_;
  std::string restored_from_;
  std::unique_ptr<RunLock> train_lock_;
  WeightsOptions weights_options_;

  std::unique_ptr<MLP> model_;
  std::unique_ptr<AdamW> optimizer_;
  std::unique_ptr<LinearSchedule> schedule_;
  std::optional<GradScaler> scaler_;
  PythonRandom python_;
  NumpyRandom numpy_;
  SyntheticData data_;
  TrainerState state_;

  std::int64_t max_steps_ = 0;
  std::int64_t start_step_ = 0;  // the global step this process began training at
  std::int64_t steps_per_epoch_ = 0;
  std::int64_t batch_size_ = 0;
  std::vector<std::int64_t> order_;        // this epoch's example order
  std::vector<std::int64_t> rank_order_;   // this rank's examples of it (DistributedSampler's split)
  bool order_drawn_ = false;         // resumed mid-epoch: the replayed order is the current one

  at::Tensor loss_since_log_ = at::zeros({}, at::kFloat);
  double loss_total_ = 0;
  std::int64_t steps_this_process_ = 0;
  std::int64_t last_logged_step_ = 0;
  std::optional<double> last_loss_;
  std::optional<double> last_grad_norm_;
  std::map<std::string, double> last_eval_;

  // --async-save copies into these, kept from one checkpoint to the next so that only the first snapshot pays
  // for fresh memory. Safe to overwrite once the previous write has been waited for.
  std::vector<at::Tensor> snapshot_buffers_;
  // Set while the background thread copies parameters and optimizer state: the next optimizer step, the only
  // thing that modifies them, waits for it; the forward and backward passes run meanwhile.
  std::shared_future<void> snapshot_copied_;
  std::thread pending_save_;
  std::exception_ptr pending_error_;
  bool stopped_early_ = false;  // by Ctrl-C, before max_steps
};

// Before the model is built: the weights files hold every parameter config.json describes, with its shape and
// float32. So a hostile config.json cannot make resume allocate more than the weights files hold.
void check_weights_match(const std::string& dir, const ModelConfig& config) {
  const auto files = checkpoint::find_weights(dir);
  if (!files) throw Error(ErrorKind::corrupt, dir, "", "no weights file");
  std::map<std::string, std::pair<std::vector<std::int64_t>, DType>> stored;
  for (const auto& name : files->files) {
    const auto source = checkpoint::load_source((fs::path(dir) / name).string());
    const auto& g = source->graph();
    if (!g.is(g.root(), Kind::dict)) throw Error(ErrorKind::corrupt, source->path, "", "not a state dict");
    const auto& items = g.at(g.root()).items;
    for (std::size_t i = 0; i + 1 < items.size(); i += 2) {
      if (!g.is(items[i], Kind::string) || !g.is(items[i + 1], Kind::tensor)) continue;
      const auto& t = g.tensors[static_cast<std::size_t>(g.at(items[i + 1]).integer)];
      stored[g.at(items[i]).text] = {t.shape, t.dtype};
    }
  }
  for (const auto& [name, shape] : config.parameter_shapes()) {
    auto it = stored.find(name);
    if (it == stored.end() || it->second.first != shape || it->second.second != DType::float32) {
      throw Error(ErrorKind::invalid_argument, dir, name, "the weights do not match config.json's model");
    }
  }
}

std::string Trainer::find_checkpoint() {
  std::string dir;
  if (request_.from) {
    // checkpoint-N in the run directory, or its archive where list shows archives (RUN/archive/, RUN/); or a path.
    const fs::path in_run = fs::path(run_dir_) / *request_.from;
    dir = *request_.from;
    if (checkpoint::checkpoint_step(*request_.from)) {
      const std::string file = *request_.from + checkpoint::kArchiveExtension;
      for (const fs::path& candidate : {in_run, fs::path(run_dir_) / checkpoint::kArchiveDirName / file, fs::path(run_dir_) / file}) {
        if (fs::exists(candidate)) {
          dir = candidate.string();
          break;
        }
      }
    }
    if (checkpoint::is_archive(dir)) {
      // Restored into a staging directory of the run: the trainer lock makes it ours (open_run_directory ran), and
      // a kill leaves it for the next run to clear. A throwaway copy, so nothing is fsynced.
      const std::string staging = (fs::path(run_dir_) / (std::string(checkpoint::kStagingPrefix) + "restore-" + fs_util::unique_suffix())).string();
      if (!fs::create_directory(staging)) throw Error(ErrorKind::io, staging, "", "cannot create the directory");
      restored_dir_ = staging;
      result_.resumed_from = dir;
      restored_from_ = dir;
      checkpoint::extract_archive(dir, staging, {});
      dir = staging;
    } else if (!fs::is_directory(dir)) {
      throw Error(ErrorKind::not_found, dir, "", "no such checkpoint directory or archive");
    }
  } else {
    const auto scan = checkpoint::scan_run(run_dir_);
    const auto newest = checkpoint::newest_complete(scan);
    if (!newest) throw Error(ErrorKind::not_found, run_dir_, "", "no complete checkpoint to resume from");
    dir = scan.entries[*newest].path;
  }
  return dir;
}

// `dir` empty: a new run's arguments; else the checkpoint's to resume from.
void Trainer::prepare_arguments(const std::string& dir) {
  if (dir.empty()) {
    args_ = resolve_arguments(request_.given, {});
    const auto output = get_optional_text(args_, "output_dir");
    if (!output || output->empty()) throw Error(ErrorKind::invalid_argument, "", "--output-dir", "is required");
    run_dir_ = *output;
    return;
  }
  const auto completeness = checkpoint::assess_completeness(dir);
  if (!completeness.complete) {
    throw Error(ErrorKind::corrupt, dir, "", "incomplete checkpoint: " + (completeness.problems.empty() ? std::string("?") : completeness.problems.front()));
  }
  for (const char* required : {"training_args.bin", "optimizer.pt", "scheduler.pt", "config.json"}) {
    if (!fs::exists(fs::path(dir) / required) && !(required == std::string_view("optimizer.pt") && checkpoint::find_optimizer_shards(dir))) {
      throw Error(ErrorKind::corrupt, (fs::path(dir) / required).string(), "", "missing: the checkpoint cannot be resumed without it");
    }
  }
  // training_args.bin: a plain dict of the arguments table's keys.
  const std::string args_path = (fs::path(dir) / "training_args.bin").string();
  const auto source = checkpoint::load_source(args_path);
  const auto& g = source->graph();
  if (!g.is(g.root(), Kind::dict)) throw Error(ErrorKind::unsupported, args_path, "", "not a training_args.bin written by ckpt");
  Arguments saved;
  const auto& items = g.at(g.root()).items;
  for (std::size_t i = 0; i + 1 < items.size(); i += 2) {
    if (!g.is(items[i], Kind::string)) throw Error(ErrorKind::corrupt, args_path, "", "a key that is not a string");
    const auto& v = g.at(items[i + 1]);
    ArgValue value;
    switch (v.kind) {
      case Kind::none: break;
      case Kind::boolean: value = v.flag; break;
      case Kind::integer: value = v.integer; break;
      case Kind::floating: value = v.number; break;
      case Kind::string: value = v.text; break;
      default: throw Error(ErrorKind::corrupt, args_path, g.at(items[i]).text, "not a plain value");
    }
    saved[g.at(items[i]).text] = std::move(value);
  }
  // config.json decides the model; a model flag given now must agree with it.
  const std::string config_path = (fs::path(dir) / "config.json").string();
  const ModelConfig config = ModelConfig::from_json(json::parse_file(config_path), config_path);
  check_weights_match(dir, config);
  const Arguments model_args{{"input_size", config.input_size}, {"hidden_size", config.hidden_size}, {"num_layers", config.num_layers},
                             {"num_labels", config.num_labels}, {"dropout", config.dropout}};
  for (const auto& [key, value] : model_args) {
    auto it = request_.given.find(key);
    if (it != request_.given.end() && resolve_arguments({{key, it->second}}, {}).at(key) != value) {
      throw Error(ErrorKind::invalid_argument, config_path, key, "the checkpoint's model has another " + key + "; a resumed run keeps its model");
    }
    saved[key] = value;
  }
  try {
    args_ = resolve_arguments(request_.given, saved);
  } catch (const Error& e) {
    throw Error(ErrorKind::corrupt, args_path, e.where(), e.detail());
  }
  args_["output_dir"] = run_dir_;
  resume_dir_ = dir;
  if (!result_.resumed_from) result_.resumed_from = dir;
}

// Every rank resolved the same arguments (a launcher on each host passes its own command line).
void Trainer::agree_on_arguments() {
  if (!group_) return;
  std::string mine;
  for (const auto& [key, value] : args_) {
    char number[64] = "";
    if (const auto* d = std::get_if<double>(&value)) std::snprintf(number, sizeof number, "%.17g", *d);
    mine += key + "=" + std::to_string(value.index()) + ":" + number;
    if (const auto* b = std::get_if<bool>(&value)) mine += *b ? "1" : "0";
    if (const auto* i = std::get_if<std::int64_t>(&value)) mine += std::to_string(*i);
    if (const auto* t = std::get_if<std::string>(&value)) mine += *t;
    mine += '\n';
  }
  const std::string main = group_->share(mine, 0);
  together("to agree on the arguments", [&] {
    if (mine == main) return;
    std::size_t at = 0;
    while (at < mine.size() && at < main.size() && mine[at] == main[at]) ++at;
    const std::size_t line = mine.rfind('\n', at == 0 ? 0 : at - 1);
    const std::size_t begin = line == std::string::npos || at == 0 ? 0 : line + 1;
    const std::string key = mine.substr(begin, mine.find('=', begin) - begin);
    throw Error(ErrorKind::invalid_argument, "", "--" + flag_name(key), "differs from rank 0's (every process must be given the same arguments)");
  });
}

void Trainer::validate_arguments() const {
  auto positive = [&](const char* key, bool allow_zero = false) {
    const auto v = get_optional_int(args_, key);
    if (v && (*v < 0 || (*v == 0 && !allow_zero))) {
      throw Error(ErrorKind::invalid_argument, "", "--" + flag_name(key), allow_zero ? "must not be negative" : "must be positive");
    }
  };
  for (const char* key : {"per_device_train_batch_size", "per_device_eval_batch_size", "logging_steps", "save_steps", "train_examples",
                          "eval_examples", "save_total_limit", "threads"}) {
    positive(key);
  }
  positive("warmup_steps", true);
  positive("eval_steps", true);
  // Bounds that keep a hostile training_args.bin from exhausting memory or threads.
  const std::int64_t examples = get_int(args_, "train_examples") + get_int(args_, "eval_examples");
  if (examples > (std::int64_t{1} << 31) / get_int(args_, "input_size")) {
    throw Error(ErrorKind::invalid_argument, "", "--train-examples", "the synthetic data would exceed 2^31 values");
  }
  if (get_optional_int(args_, "threads").value_or(1) > 1024) throw Error(ErrorKind::invalid_argument, "", "--threads", "at most 1024");
  const std::int64_t seed = get_int(args_, "seed");
  if (seed < 0 || seed > 0xffffffffLL) throw Error(ErrorKind::invalid_argument, "", "--seed", "must be between 0 and 2**32 - 1 (numpy's range)");
  if (get_int(args_, "max_steps") <= 0 && !(get_number(args_, "num_train_epochs") > 0)) {
    throw Error(ErrorKind::invalid_argument, "", "--max-steps", "neither --max-steps nor --num-train-epochs is positive");
  }
  if (!(get_number(args_, "learning_rate") >= 0)) throw Error(ErrorKind::invalid_argument, "", "--learning-rate", "must not be negative");
  if (!checkpoint::parse_size(get_text(args_, "max_shard_size"))) {
    throw Error(ErrorKind::invalid_argument, "", "--max-shard-size", "expected a size such as 5GB or 512MiB");
  }
  if (world_size_ > 1 && get_bool(args_, "async_save")) {
    throw Error(ErrorKind::invalid_argument, "", "--async-save", "works in a single process only (the ranks agree on every save in step)");
  }
  const auto eval_steps = get_optional_int(args_, "eval_steps").value_or(get_int(args_, "save_steps"));
  if (get_bool(args_, "load_best_model_at_end") && (eval_steps == 0 || get_int(args_, "save_steps") % eval_steps != 0)) {
    throw Error(ErrorKind::invalid_argument, "", "--load-best-model-at-end", "needs an evaluation at every save: --save-steps a multiple of --eval-steps");
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
    case EarlierRun::refuse: throw checkpoint::earlier_run_error(run_dir_, earlier);
    case EarlierRun::resume: return true;
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
  if (const auto threads = get_optional_int(args_, "threads")) {
    at::set_num_threads(static_cast<int>(*threads));
  } else if (world_size_ > 1) {
    // The processes on this host share its cores, as torchrun's OMP_NUM_THREADS does.
    const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    at::set_num_threads(std::max(1, cores / std::max(1, request_.distributed.local_world_size)));
    args_["threads"] = static_cast<std::int64_t>(at::get_num_threads());
  } else {
    args_["threads"] = static_cast<std::int64_t>(at::get_num_threads());
  }
  const std::int64_t seed = get_int(args_, "seed");
  python_.seed(static_cast<std::uint64_t>(seed));
  numpy_.seed(static_cast<std::uint32_t>(seed));
  torch_manual_seed(static_cast<std::uint64_t>(seed));

  const ModelConfig config = ModelConfig::from_arguments(args_);
  data_ = make_data(static_cast<std::uint32_t>(seed), config.input_size, config.num_labels, get_int(args_, "train_examples"),
                    get_int(args_, "eval_examples"));
  model_ = std::make_unique<MLP>(config);

  batch_size_ = get_int(args_, "per_device_train_batch_size");
  // DistributedSampler: each rank's share of an epoch, the epoch padded to a multiple of the world size.
  const std::int64_t n = (get_int(args_, "train_examples") + world_size_ - 1) / world_size_;
  steps_per_epoch_ = (n + batch_size_ - 1) / batch_size_;
  const std::int64_t requested = get_int(args_, "max_steps");
  if (requested > 0) {
    max_steps_ = requested;
    state_.num_train_epochs = max_steps_ / steps_per_epoch_ + (max_steps_ % steps_per_epoch_ > 0 ? 1 : 0);
  } else {
    const double epochs = get_number(args_, "num_train_epochs");
    max_steps_ = static_cast<std::int64_t>(std::ceil(epochs * static_cast<double>(steps_per_epoch_)));
    state_.num_train_epochs = static_cast<std::int64_t>(std::ceil(epochs));
  }
  state_.max_steps = max_steps_;
  state_.logging_steps = get_int(args_, "logging_steps");
  state_.save_steps = get_int(args_, "save_steps");
  state_.eval_steps = get_optional_int(args_, "eval_steps").value_or(state_.save_steps);
  state_.train_batch_size = batch_size_;

  const double lr = get_number(args_, "learning_rate");
  optimizer_ = std::make_unique<AdamW>(model_->parameters(), lr, get_number(args_, "adam_beta1"), get_number(args_, "adam_beta2"),
                                       get_number(args_, "adam_epsilon"), get_number(args_, "weight_decay"));
  schedule_ = std::make_unique<LinearSchedule>(lr, get_int(args_, "warmup_steps"), max_steps_, optimizer_->groups().size());
  optimizer_->learning_rates().assign(optimizer_->groups().size(), schedule_->last_lr());
  if (get_bool(args_, "fp16")) scaler_.emplace();
  if (get_bool(args_, "shard_optimizer") && world_size_ > 1) {
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
  } else if (get_bool(args_, "shard_optimizer")) {
    warn("--shard-optimizer has no effect in a single process: optimizer.pt holds the whole state");
  }

  weights_options_.safetensors = get_bool(args_, "save_safetensors");
  weights_options_.max_shard_size = checkpoint::parse_size(get_text(args_, "max_shard_size"));
}

void Trainer::load_weights(const std::string& dir) {
  const auto files = checkpoint::find_weights(dir);
  if (!files) throw Error(ErrorKind::not_found, dir, "", "no weights file");
  std::map<std::string, at::Tensor*> wanted;
  for (auto& [name, param] : model_->parameters()) wanted[name] = &param;
  at::NoGradGuard no_grad;
  for (const auto& name : files->files) {
    const auto source = checkpoint::load_source((fs::path(dir) / name).string());
    const auto& g = source->graph();
    if (!g.is(g.root(), Kind::dict)) throw Error(ErrorKind::corrupt, source->path, "", "not a state dict");
    DirectReader reader(source->file().file());
    const auto& items = g.at(g.root()).items;
    for (std::size_t i = 0; i + 1 < items.size(); i += 2) {
      if (!g.is(items[i], Kind::string) || !g.is(items[i + 1], Kind::tensor)) continue;
      auto it = wanted.find(g.at(items[i]).text);
      if (it == wanted.end()) continue;
      read_tensor_into(*source, reader, items[i + 1], *it->second, it->first);  // straight into the parameter
      wanted.erase(it);
    }
  }
  if (!wanted.empty()) throw Error(ErrorKind::corrupt, dir, wanted.begin()->first, "missing from the checkpoint's weights");
}

void Trainer::restore(const std::string& dir) {
  const fs::path d(dir);
  load_weights(dir);
  {
    // optimizer.pt, or every rank's shard: a run of another world size or sharding takes what it keeps.
    std::vector<std::unique_ptr<checkpoint::Source>> loaded;
    std::vector<const checkpoint::Source*> sources;
    if (fs::exists(d / "optimizer.pt")) {
      sources.push_back(loaded.emplace_back(checkpoint::load_source((d / "optimizer.pt").string())).get());
    } else if (const auto shards = checkpoint::find_optimizer_shards(dir)) {
      for (const auto& name : shards->files) sources.push_back(loaded.emplace_back(checkpoint::load_source((d / name).string())).get());
      checkpoint::check_shard_set(sources);
    } else {
      throw Error(ErrorKind::corrupt, (d / "optimizer.pt").string(), "", "missing, and no optimizer shards either");
    }
    optimizer_->load_state_dict(sources, model_->parameters());
  }
  {
    const auto source = checkpoint::load_source((d / "scheduler.pt").string());
    schedule_->load_state_dict(GraphReader{source->graph(), source->path}, source->graph().root());
  }
  if (scaler_) {
    if (fs::exists(d / "scaler.pt")) {
      const auto source = checkpoint::load_source((d / "scaler.pt").string());
      scaler_->load_state_dict(GraphReader{source->graph(), source->path}, source->graph().root());
    } else {
      warn((d / "scaler.pt").string() + " is missing: the loss scale starts over");
    }
  }
  state_.load((d / "trainer_state.json").string());
  if (state_.best_model_checkpoint) {
    // The run may have been copied or moved since that file was written: its best is the checkpoint of that name
    // in this run directory, as `ckpt best` finds it.
    const std::string name = checkpoint::recorded_checkpoint_name(*state_.best_model_checkpoint);
    if (checkpoint::checkpoint_step(name)) state_.best_model_checkpoint = (fs::path(run_dir_) / name).string();
  }
  if (state_.global_step > max_steps_) {
    throw Error(ErrorKind::invalid_argument, dir, "", "the checkpoint is at step " + std::to_string(state_.global_step) +
                                                           ", beyond --max-steps " + std::to_string(max_steps_));
  }
  // Replay the data order up to the current epoch (nothing is computed), then restore the generators.
  const std::int64_t epochs_done = state_.global_step / steps_per_epoch_;
  const bool mid_epoch = state_.global_step % steps_per_epoch_ != 0;
  const std::int64_t n = get_int(args_, "train_examples");
  if (epochs_done > std::int64_t{100'000'000'000} / n) {
    throw Error(ErrorKind::corrupt, dir, "trainer_state.json", "global_step " + std::to_string(state_.global_step) + " is beyond any run of this size");
  }
  for (std::int64_t e = 0; e < epochs_done + (mid_epoch ? 1 : 0); ++e) {
    if (interrupted()) throw Error(ErrorKind::interrupted, dir, "", "interrupted while resuming");
    draw_epoch_order();
  }
  order_drawn_ = mid_epoch;
  // Each rank's generators from its own file; with another world size, rank 0's (or the one process's).
  const int saved_world_size = checkpoint::checkpoint_world_size(dir);
  fs::path rng = d / checkpoint::rng_state_name(rank_, saved_world_size);
  if (saved_world_size != world_size_) {
    warn(dir + " was saved by " + std::to_string(saved_world_size) + " process(es) and this run has " + std::to_string(world_size_) +
         ": the weights, optimizer and schedule resume, but the data order and random draws differ from the uninterrupted run's");
    if (!fs::exists(rng)) rng = d / checkpoint::rng_state_name(0, saved_world_size);
  }
  if (fs::exists(rng)) {
    const auto source = checkpoint::load_source(rng.string());
    RngStates states = load_rng_states(*source);
    python_ = states.python;
    numpy_ = states.numpy;
    set_torch_rng_state(states.cpu);
  } else {
    warn(rng.string() + " is missing: training continues, but its random draws differ from the uninterrupted run's");
  }
  state_.epoch = static_cast<double>(state_.global_step) / static_cast<double>(steps_per_epoch_);
  last_logged_step_ = state_.global_step;
  optimizer_->learning_rates().assign(optimizer_->groups().size(), schedule_->last_lr());
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
  const double max_norm = get_number(args_, "max_grad_norm");
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
    for (end = begin; end < params.size() && owner_[end] == owner_[begin]; ++end) share.push_back(params[end].second.detach().view({-1}));
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
    if (p.grad().defined()) p.mutable_grad().copy_(mean);
    else p.mutable_grad() = mean.clone();
  }
  loss_value = flat[total].clone();
}

std::map<std::string, double> Trainer::evaluate() {
  const auto start = Clock::now();
  at::NoGradGuard no_grad;
  const std::int64_t n = data_.eval.labels.size(0);
  const std::int64_t bs = get_int(args_, "per_device_eval_batch_size");
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

CheckpointFiles Trainer::collect(bool copy) {
  CheckpointFiles files;
  files.step = state_.global_step;
  files.main = main_process();
  files.rng_name = checkpoint::rng_state_name(rank_, world_size_);
  if (!owner_.empty()) files.optimizer_name = checkpoint::optimizer_shard_name(rank_);
  files.has_optimizer = files.main || !owner_.empty();
  files.rng_root = rng_state_dict(files.rng, RngStates{python_, numpy_, torch_rng_state()});
  if (!files.main) {
    // Its rng state and its optimizer shard; never asynchronous (validate_arguments).
    if (files.has_optimizer) files.optimizer_root = optimizer_->state_dict(files.optimizer);
    return files;
  }
  std::size_t slot = 0;
  auto snapshot = [&](const at::Tensor& t) {
    if (slot == snapshot_buffers_.size()) snapshot_buffers_.emplace_back();
    at::Tensor& buffer = snapshot_buffers_[slot++];
    if (!buffer.defined() || buffer.sizes() != t.sizes() || buffer.scalar_type() != t.scalar_type()) buffer = empty_large(t.sizes(), t.scalar_type());
    files.pending_copies.emplace_back(t, buffer);
    return buffer;
  };
  for (const auto& [name, p] : model_->parameters()) files.weights.emplace_back(name, copy ? snapshot(p.detach()) : p.detach());
  const AdamW optimizer = copy ? optimizer_->snapshot(snapshot) : *optimizer_;
  files.optimizer_root = optimizer.state_dict(files.optimizer);
  files.scheduler_root = schedule_->state_dict(files.scheduler);
  if (scaler_) {
    files.has_scaler = true;
    files.scaler_root = scaler_->state_dict(files.scaler);
  }
  std::vector<NodeId> items;
  for (const auto& spec : argument_specs()) {
    if (spec.scope != ArgScope::training) continue;
    items.push_back(files.arguments.text(spec.key));
    const ArgValue& v = args_.at(spec.key);
    if (const auto* b = std::get_if<bool>(&v)) items.push_back(files.arguments.boolean(*b));
    else if (const auto* i = std::get_if<std::int64_t>(&v)) items.push_back(files.arguments.integer(*i));
    else if (const auto* d = std::get_if<double>(&v)) items.push_back(files.arguments.number(*d));
    else if (const auto* s = std::get_if<std::string>(&v)) items.push_back(files.arguments.text(*s));
    else items.push_back(files.arguments.none());
  }
  files.arguments_root = files.arguments.dict(std::move(items));
  files.trainer_state = state_.to_text();
  files.config = json::dump_python_sorted(model_->config().to_json(), 2) + "\n";
  return files;
}

// Best effort, so that the error reported is the one that stopped the save; a leftover is cleared later.
void Trainer::remove_staging_after_failure(const std::string& staging) {
  try {
    if (main_process()) fs_util::remove_tree(staging);
  } catch (const Error&) {
  }
}

// Writes into a hidden staging directory, then renames it to checkpoint-<step> under the run lock (replacing a
// checkpoint of the same step, as a run resumed from an earlier one does), then rotates. In a group, rank 0 makes
// the staging directory and tells the others its name; each rank writes its files; only when every rank says
// its files are durable does rank 0 commit, and the others hear whether it did.
void Trainer::commit(CheckpointFiles files) {
  const std::string name = "checkpoint-" + std::to_string(files.step);
  const fs::path run(run_dir_);
  std::string staging;
  together("to create the staging directory of " + name, [&] {
    if (!main_process()) return;
    staging = (run / (std::string(checkpoint::kStagingPrefix) + name + "-" + fs_util::unique_suffix())).string();
    std::error_code ec;
    fs::create_directory(staging, ec);
    if (ec) throw Error(ErrorKind::io, staging, "", "cannot create the staging directory: " + ec.message());
  });
  if (group_) staging = group_->share(staging, 0);
  try {
    together("to write its part of " + name, [&] { write_checkpoint_files(staging, files, weights_options_); });
    together("to commit " + name, [&] {
      if (!main_process()) return;
      fs_util::fsync_directory(staging);
      RunLock lock(run_dir_, true);
      const std::string final_path = (run / name).string();
      if (fs::exists(fs::symlink_status(final_path))) {
        // A checkpoint of the same step (a run resumed from an earlier one): the two directories trade names in
        // one step, so at every instant checkpoint-N is one complete checkpoint or the other; the old one, now
        // under the staging name, is then removed (or cleared as a leftover by the next start).
        fs_util::exchange(staging, final_path);
      } else {
        fs_util::durable_rename(staging, final_path);
      }
    });
  } catch (const Error& e) {
    remove_staging_after_failure(staging);
    throw e.named_in(staging, (run / name).string());  // where the user will look for the file
  } catch (...) {
    remove_staging_after_failure(staging);
    throw;
  }
  if (!main_process()) return;
  try {
    fs_util::remove_tree(staging);
  } catch (const Error&) {
    // Only a leftover: the next start, or rotate, clears it.
  }
  result_.checkpoints_saved.push_back((run / name).string());
  result_.last_checkpoint = result_.checkpoints_saved.back();
  result_.last_checkpoint_step = files.step;
  if (const auto limit = get_optional_int(args_, "save_total_limit")) {
    checkpoint::RotateOptions options;
    options.keep = *limit;
    const auto rotation = checkpoint::rotate(run_dir_, options, false, true);
    for (const auto& d : rotation.plan.decisions) {
      if (d.remove) result_.checkpoints_removed.push_back(d.path);
    }
  }
}

void Trainer::wait_for_snapshot() {
  if (!snapshot_copied_.valid()) return;
  const auto start = Clock::now();
  snapshot_copied_.wait();
  snapshot_copied_ = {};
  result_.save_stall_seconds.back() += seconds_since(start);
}

void Trainer::wait_for_pending_save() {
  if (pending_save_.joinable()) pending_save_.join();
  snapshot_copied_ = {};
  if (pending_error_) std::rethrow_exception(std::exchange(pending_error_, nullptr));
}

void Trainer::save_checkpoint(const std::map<std::string, double>& metrics) {
  // Hugging Face's rule, in _save_checkpoint: a strict improvement of this step's metric makes it the best.
  const std::string metric = checkpoint::normalize_metric(get_text(args_, "metric_for_best_model"));
  if (auto it = metrics.find(metric); it != metrics.end()) {
    const auto* given = std::get_if<bool>(&args_.at("greater_is_better"));
    const bool greater_is_better = given ? *given : checkpoint::default_greater_is_better(metric);
    const double value = it->second;
    if (!state_.best_metric || !state_.best_model_checkpoint ||
        (greater_is_better ? value > *state_.best_metric : value < *state_.best_metric)) {
      state_.best_metric = value;
      state_.best_model_checkpoint = (fs::path(run_dir_) / ("checkpoint-" + std::to_string(state_.global_step))).string();
    }
  }
  const bool async = get_bool(args_, "async_save");
  const auto start = Clock::now();
  wait_for_snapshot();
  wait_for_pending_save();
  CheckpointFiles files = collect(async);
  if (!async) {
    commit(std::move(files));
    result_.save_stall_seconds.push_back(seconds_since(start));
    result_.save_write_seconds.push_back(seconds_since(start));
    if (main_process()) emit(TrainEvent::Kind::checkpoint, result_.checkpoints_saved.back());
    return;
  }
  result_.save_stall_seconds.push_back(seconds_since(start));
  std::promise<void> copied;
  snapshot_copied_ = copied.get_future().share();
  // The background thread alone touches result_'s checkpoint lists until it is joined.
  pending_save_ = std::thread([this, files = std::move(files), copied = std::move(copied)]() mutable {
    const auto write_start = Clock::now();
    for (const auto& [live, buffer] : files.pending_copies) std::memcpy(buffer.data_ptr(), live.data_ptr(), live.nbytes());
    files.pending_copies.clear();
    copied.set_value();
    try {
      commit(std::move(files));
      result_.save_write_seconds.push_back(seconds_since(write_start));
    } catch (...) {
      pending_error_ = std::current_exception();
    }
  });
}

void Trainer::draw_epoch_order() {
  const std::int64_t n = get_int(args_, "train_examples");
  order_.resize(static_cast<std::size_t>(n));
  std::iota(order_.begin(), order_.end(), 0);
  python_.shuffle(order_);
  if (world_size_ == 1) {
    rank_order_ = order_;
    return;
  }
  const std::int64_t per_rank = (n + world_size_ - 1) / world_size_;
  rank_order_.clear();
  for (std::int64_t i = 0; i < per_rank; ++i) rank_order_.push_back(order_[static_cast<std::size_t>((i * world_size_ + rank_) % n)]);
}

void Trainer::train() {
  const double input_noise = get_number(args_, "input_noise");
  const std::int64_t params = model_->num_parameters();
  const std::int64_t epochs_done = state_.global_step / steps_per_epoch_;
  const std::int64_t skip = state_.global_step % steps_per_epoch_;
  bool stop = state_.global_step >= max_steps_;
  for (std::int64_t epoch = epochs_done; !stop && epoch < state_.num_train_epochs; ++epoch) {
    if (!(order_drawn_ && epoch == epochs_done)) draw_epoch_order();
    const std::int64_t n = static_cast<std::int64_t>(rank_order_.size());
    for (std::int64_t s = epoch == epochs_done ? skip : 0; s < steps_per_epoch_; ++s) {
      const std::int64_t begin = s * batch_size_;
      const std::vector<std::int64_t> indices(rank_order_.begin() + begin, rank_order_.begin() + std::min(n, begin + batch_size_));
      const at::Tensor inputs = noisy_batch(data_.train, indices, input_noise, numpy_, rank_, world_size_);
      const at::Tensor labels = data_.train.labels.index_select(0, at::from_blob(const_cast<std::int64_t*>(indices.data()),
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
      if (step % state_.save_steps == 0) save_checkpoint(metrics);
      emit(TrainEvent::Kind::progress);
      if (step < max_steps_ && (group_ ? stop_requested_ : interrupted())) stopped_early_ = true;
      if (step >= max_steps_ || stopped_early_) {
        stop = true;
        break;
      }
    }
  }
  wait_for_pending_save();
  if (get_bool(args_, "async_save")) {
    for (const auto& path : result_.checkpoints_saved) emit(TrainEvent::Kind::checkpoint, path);
  }
}

// Hugging Face's end of train(): the best model loaded when asked, the training metrics logged, and then
// save_model() and save_state(): weights, config.json, training_args.bin and trainer_state.json in the run
// directory.
void Trainer::finish() {
  if (get_bool(args_, "load_best_model_at_end") && state_.best_model_checkpoint) {
    const fs::path best = fs::path(run_dir_) / fs::path(*state_.best_model_checkpoint).filename();
    if (fs::is_directory(best)) load_weights(best.string());
    else warn("the best checkpoint " + best.string() + " is gone; the final model is the last one");
  }
  const double runtime = seconds_since(started_);
  const double steps = static_cast<double>(steps_this_process_);
  json::Json record = json::Json::object();
  record["epoch"] = state_.epoch;
  record["step"] = state_.global_step;
  record["total_flos"] = state_.total_flos;
  record["train_loss"] = steps > 0 ? loss_total_ / steps : 0.0;
  record["train_runtime"] = round_to(runtime, 4);
  record["train_samples_per_second"] = round_to(steps * static_cast<double>(batch_size_ * world_size_) / runtime, 3);
  record["train_steps_per_second"] = round_to(steps / runtime, 3);
  for (const auto& [k, v] : record.items()) {
    if (v.is_number()) result_.final_metrics[k] = v.get<double>();
  }
  for (const auto& [k, v] : last_eval_) result_.final_metrics[k] = v;
  log(std::move(record));
  CheckpointFiles files = collect(false);
  const auto written = write_weights(run_dir_, files.weights, weights_options_, true);
  // Weights of another layout left by an earlier run (an index, shards, the other format) would shadow these.
  for (const auto& entry : fs::directory_iterator(run_dir_)) {
    const std::string name = entry.path().filename().string();
    const bool weights = name == "model.safetensors" || name == "pytorch_model.bin" || name.ends_with(".index.json") ||
                         ((name.starts_with("model-") || name.starts_with("pytorch_model-")) && name.find("-of-") != std::string::npos);
    if (weights && entry.is_regular_file() && std::find(written.begin(), written.end(), name) == written.end()) fs::remove(entry.path());
  }
  write_text((fs::path(run_dir_) / "config.json").string(), files.config, true);
  files.arguments.write((fs::path(run_dir_) / "training_args.bin").string(), files.arguments_root, true);
  write_text((fs::path(run_dir_) / "trainer_state.json").string(), files.trainer_state, true);
}

template <typename Work>
void Trainer::together(const std::string& what, Work&& work) {
  if (!group_) {
    work();
    return;
  }
  std::exception_ptr failure;
  std::optional<Error> error;
  try {
    work();
  } catch (const Error& e) {
    failure = std::current_exception();
    error = e;
  } catch (const std::exception& e) {
    failure = std::current_exception();
    error = Error(ErrorKind::io, "", "", e.what());
  }
  group_->agree(error ? &*error : nullptr, what);
  if (failure) std::rethrow_exception(failure);
}

void Trainer::run() {
  rank_ = request_.distributed.rank;
  world_size_ = request_.distributed.world_size;
  if (world_size_ < 1 || rank_ < 0 || rank_ >= world_size_) {
    throw Error(ErrorKind::invalid_argument, "", "RANK", "rank " + std::to_string(rank_) + " is not in a world of " + std::to_string(world_size_));
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
  result_.best_metric_name = checkpoint::normalize_metric(get_text(args_, "metric_for_best_model"));
  if (main_process() && result_.last_checkpoint) {
    // Whether resume's default, the newest complete checkpoint, is this run's last: not when the run resumed from
    // an older checkpoint than the run directory holds and saved none past it.
    try {
      const auto scan = checkpoint::scan_run(run_dir_);
      const auto newest = checkpoint::newest_complete(scan);
      std::error_code ec;
      result_.resume_takes_last_checkpoint = newest && fs::equivalent(scan.entries[*newest].path, *result_.last_checkpoint, ec);
    } catch (const Error&) {
      // Unknown: the message names the checkpoint with --from, which is right either way.
    }
  }
}

}  // namespace
}  // namespace ckpt::train

extern "C" __attribute__((visibility("default"))) void ckpt_train_run(const ckpt::train::TrainRequest& request,
                                                                     ckpt::train::TrainResult& result) {
  using ckpt::train::TrainError;
  try {
    if (request.api_version != ckpt::train::kApiVersion || request.request_size != sizeof(ckpt::train::TrainRequest) ||
        request.result_size != sizeof(ckpt::train::TrainResult) || request.build != std::string_view(CKPT_VERSION)) {
      throw ckpt::Error(ckpt::ErrorKind::unsupported, ckpt::train::kLibraryName, "", "the trainer library is from another build of ckpt");
    }
    ckpt::train::Trainer(request, result).run();
  } catch (const ckpt::Error& e) {
    result.error = TrainError{static_cast<int>(e.kind()), e.path(), e.where(), e.detail()};
  } catch (const std::exception& e) {
    // LibTorch's own errors (c10::Error) and allocation failures.
    result.error = TrainError{static_cast<int>(ckpt::ErrorKind::io), "", "", std::string("training failed: ") + e.what()};
  }
  // This library has its own copy of the map table (it links ckpt_core statically): a checkpoint that shrank
  // while it was read, not what its zeros led to, is the error.
  try {
    ckpt::ensure_no_mapped_file_shrank();
  } catch (const ckpt::Error& e) {
    result.error = TrainError{static_cast<int>(e.kind()), e.path(), e.where(), e.detail()};
  }
}
