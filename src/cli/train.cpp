// `ckpt save --output-dir DIR [training flags]` and `ckpt resume RUN_DIR [--from CHECKPOINT] [training flags]`.
// The two share every flag (train/arguments.hpp's table) and their rendering, so they live in one file; the
// training itself runs in the trainer library (checkpoint/trainer_library.hpp).
#include <fmt/format.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <filesystem>
#include <iostream>
#include <list>
#include <optional>
#include <string>

#include "checkpoint/archive.hpp"
#include "checkpoint/named.hpp"
#include "checkpoint/run_dir.hpp"
#include "checkpoint/trainer_library.hpp"
#include "cli/cli.hpp"
#include "cli/text.hpp"
#include "format/json.hpp"
#include "train/api.hpp"
#include "train/launcher.hpp"
#include "util/error.hpp"

namespace ckpt::cli {
namespace {
namespace fs = std::filesystem;

std::atomic<bool> g_interrupted{false};

extern "C" void on_sigint(int) { g_interrupted.store(true); }

struct TrainFlags {
  train::TrainMode mode = train::TrainMode::save;
  std::string run_dir;
  std::string from;
  std::optional<std::string> save_name;
  CLI::Option* output_dir = nullptr;  // save
  bool overwrite_output_dir = false;
  bool resume_if_exists = false;
  bool json = false;
  bool quiet = false;
  bool verbose = false;
  train::LaunchOptions launch;
  // Where CLI11 stores each flag's value, and the options whose count says whether it was given.
  std::list<std::int64_t> integers;
  std::list<double> numbers;
  std::list<std::string> texts;
  std::vector<std::pair<const train::ArgSpec*, CLI::Option*>> given;
  std::vector<std::pair<const train::ArgSpec*, std::pair<CLI::Option*, CLI::Option*>>> switches;  // --x / --no-x
};

// "20s": the time the steps left take at the pace of the steps this process trained (a resumed run's earlier steps
// took none of its time); "-" before it trained any.
std::string eta_text(const train::TrainEvent& e) {
  const std::int64_t trained = e.step - e.start_step;
  if (trained <= 0 || e.max_steps <= e.step) return "-";
  return fmt::format("{:.0f}s",
                     e.elapsed_seconds / static_cast<double>(trained) * static_cast<double>(e.max_steps - e.step));
}

// A training log record (a log event holding a loss) as one plain line for a log file:
// `step 40/300  loss 1.2345  lr 0.000866667  grad_norm 0.53  eta 20s`; nullopt for other records (evaluations).
std::optional<std::string> step_line(const train::TrainEvent& e) {
  const json::Json record = json::parse(e.text);
  if (!record.is_object()) return std::nullopt;
  const auto number = [&](const char* key) -> std::optional<double> {
    const auto it = record.find(key);
    if (it == record.end() || !it->is_number()) return std::nullopt;
    return it->get<double>();
  };
  if (!number("loss")) return std::nullopt;
  return fmt::format("step {}/{}  loss {}  lr {}  grad_norm {}  eta {}", e.step, e.max_steps,
                     number_text(number("loss")), number_text(number("learning_rate")),
                     number_text(number("grad_norm")), eta_text(e));
}

// The progress line: step, loss and ETA on stderr, only on a terminal.
class ProgressLine {
 public:
  explicit ProgressLine(bool enabled) : enabled_(enabled && ::isatty(STDERR_FILENO)) {}
  ~ProgressLine() { clear(); }
  void clear() {
    if (shown_) std::cerr << "\r\033[K" << std::flush;
    shown_ = false;
  }
  void update(const train::TrainEvent& e) {
    if (!enabled_) return;
    const auto now = std::chrono::steady_clock::now();
    if (shown_ && now - last_ < std::chrono::milliseconds(100) && e.step < e.max_steps) return;
    last_ = now;
    shown_ = true;
    std::cerr << fmt::format("\rstep {}/{}  loss {}  elapsed {:.0f}s  eta {}\033[K", e.step, e.max_steps,
                             number_text(e.loss), e.elapsed_seconds, eta_text(e))
              << std::flush;
  }

 private:
  bool enabled_;
  bool shown_ = false;
  std::chrono::steady_clock::time_point last_;
};

// What an interrupted run leaves: "steps 151-154 are not saved; `ckpt resume RUN` continues from checkpoint-150".
std::string interruption_text(const train::TrainResult& r) {
  const std::int64_t saved = r.last_checkpoint_step.value_or(0);
  std::string text = r.global_step <= saved       ? std::string("every step is saved")
                     : r.global_step == saved + 1 ? fmt::format("step {} is not saved", r.global_step)
                                                  : fmt::format("steps {}-{} are not saved", saved + 1, r.global_step);
  if (!r.last_checkpoint) return text + "; no checkpoint holds this run";
  const fs::path last(*r.last_checkpoint);
  if (r.resume_takes_last_checkpoint) {
    return text + "; `" + checkpoint::resume_command(r.output_dir) + "` continues from " + last.filename().string();
  }
  // Not resume's default: named by --from, as a name when it is a checkpoint directory of the run directory.
  std::error_code ec;
  const bool in_run = fs::is_directory(last, ec) && fs::equivalent(last.parent_path(), r.output_dir, ec);
  return text + "; `" + checkpoint::resume_command(r.output_dir, in_run ? last.filename().string() : last.string()) +
         "` continues from it";
}

std::string default_text(const train::ArgValue& value) {
  if (const auto* b = std::get_if<bool>(&value)) return *b ? "on" : "off";
  if (const auto* i = std::get_if<std::int64_t>(&value)) return std::to_string(*i);
  if (const auto* d = std::get_if<double>(&value)) return number_text(*d);
  if (const auto* s = std::get_if<std::string>(&value)) return *s;
  return "";
}

// --save-name: the run's last checkpoint (the trainer saved its last step; a resumed run with nothing left to train
// has the one it resumed from), named as list names it, for tag_checkpoint.
std::string last_checkpoint_name(const train::TrainResult& r) {
  if (!r.last_checkpoint) throw Error(ErrorKind::not_found, r.output_dir, "", "no checkpoint holds this run");
  const fs::path last(*r.last_checkpoint);
  std::error_code ec;
  if (fs::equivalent(last.parent_path(), r.output_dir, ec)) return last.filename().string();
  if (fs::equivalent(last.parent_path(), fs::path(r.output_dir) / checkpoint::kArchiveDirName, ec)) {
    return std::string(checkpoint::kArchiveDirName) + "/" + last.filename().string();
  }
  throw Error(ErrorKind::invalid_argument, *r.last_checkpoint, "",
              "is outside the run directory " + r.output_dir + "; a named checkpoint is made of the run's own");
}

json::Json result_json(const train::TrainResult& r, const std::optional<checkpoint::TagResult>& named) {
  json::ObjectBuilder metrics;
  for (const auto& [k, v] : r.final_metrics) metrics.set(k, v);
  return {
      {"output_dir", r.output_dir},
      {"resumed_from", r.resumed_from ? json::Json(*r.resumed_from) : json::Json(nullptr)},
      {"start_step", r.start_step},
      {"global_step", r.global_step},
      {"max_steps", r.max_steps},
      {"epoch", r.epoch},
      {"interrupted", r.interrupted},
      {"checkpoints_saved", r.checkpoints_saved},
      {"checkpoints_removed", r.checkpoints_removed},
      {"overwritten", r.overwritten},
      {"best_model_checkpoint", r.best_model_checkpoint ? json::Json(*r.best_model_checkpoint) : json::Json(nullptr)},
      {"best_metric", r.best_metric ? json::Json(*r.best_metric) : json::Json(nullptr)},
      {"best_metric_name", r.best_metric ? json::Json(r.best_metric_name) : json::Json(nullptr)},
      {"metrics", metrics.take()},
      {"save_stall_seconds", r.save_stall_seconds},
      {"save_write_seconds", r.save_write_seconds},
      {"load_seconds", r.load_seconds ? json::Json(*r.load_seconds) : json::Json(nullptr)},
      {"warnings", r.warnings},
      {"last_checkpoint", r.last_checkpoint ? json::Json(*r.last_checkpoint) : json::Json(nullptr)},
      {"last_checkpoint_step", r.last_checkpoint_step ? json::Json(*r.last_checkpoint_step) : json::Json(nullptr)},
      {"resume_takes_last_checkpoint", r.resume_takes_last_checkpoint},
      {"named_checkpoint", named ? json::Json(named->path) : json::Json(nullptr)}};
}

// An integer from the environment, or `fallback` when unset.
int environment_int(const char* name, int fallback) {
  const char* text = std::getenv(name);
  if (!text) return fallback;
  char* end = nullptr;
  errno = 0;
  const long value = std::strtol(text, &end, 10);
  if (*text == '\0' || *end != '\0' || errno != 0 || value < 0 || value > (1 << 24)) {
    throw Error(ErrorKind::invalid_argument, "", name, std::string("'") + text + "' is not a non-negative integer");
  }
  return static_cast<int>(value);
}

// A worker of a torch.distributed group when a launcher (ckpt's own, torchrun, a scheduler) set RANK and
// WORLD_SIZE; the launcher's flags are then ignored.
std::optional<train::DistributedSettings> worker_settings() {
  if (!std::getenv("RANK") || !std::getenv("WORLD_SIZE")) return std::nullopt;
  train::DistributedSettings d;
  d.rank = environment_int("RANK", 0);
  d.world_size = environment_int("WORLD_SIZE", 1);
  d.local_world_size = environment_int("LOCAL_WORLD_SIZE", d.world_size);
  if (const char* addr = std::getenv("MASTER_ADDR"); addr && *addr) d.master_addr = addr;
  if (d.world_size > 1 && !std::getenv("MASTER_PORT"))
    throw Error(ErrorKind::invalid_argument, "", "MASTER_PORT", "not set, but WORLD_SIZE is");
  d.master_port = environment_int("MASTER_PORT", 29500);
  if (const char* launcher = std::getenv(train::kLauncherPidVariable)) {
    // Started by ckpt's launcher: die with it, so that no worker trains on with nobody watching.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (std::to_string(::getppid()) != launcher) throw Error(ErrorKind::interrupted, "", "", "the launcher is gone");
  }
  return d;
}

int train_here(const TrainFlags& f, train::TrainRequest& request, bool main_process);

int run_train(const TrainFlags& f) {
  train::TrainRequest request;
  const auto worker = worker_settings();
  if (f.save_name) {
    // Refused before anything trains (made at the end, the name is checked again).
    try {
      checkpoint::check_new_checkpoint_name(
          f.mode == train::TrainMode::save ? f.output_dir->as<std::string>() : f.run_dir, *f.save_name);
    } catch (const Error& e) {
      throw e.with_context("", "--save-name");
    }
  }
  if (!worker && f.mode == train::TrainMode::save && !f.overwrite_output_dir && !f.resume_if_exists) {
    // Refused before the trainer library loads and before any worker starts: one error line, not one per rank.
    // (The trainer's rank 0 looks again, holding its lock, and decides for the group.)
    const std::string dir = f.output_dir->as<std::string>();
    if (const auto earlier = checkpoint::earlier_checkpoints(dir); !earlier.empty())
      throw checkpoint::earlier_run_error(dir, earlier);
  }
  if (worker) {
    request.distributed = *worker;
  } else if (f.launch.nproc_per_node * f.launch.nnodes > 1 || f.launch.nnodes > 1) {
    const train::LaunchResult launched = train::launch_workers(f.launch, command_line());
    if (launched.failure) print_error(*launched.failure);
    return launched.exit_code;
  }
  try {
    return train_here(f, request, request.distributed.rank == 0);
  } catch (const Error& e) {
    if (request.distributed.world_size <= 1) throw;
    // Every process of the group reports on the same terminal: say which one this is.
    throw Error(e.kind(), "", "", "rank " + std::to_string(request.distributed.rank) + ": " + e.what());
  }
}

// Trains in this process; only the main process of a group prints anything but errors.
int train_here(const TrainFlags& f, train::TrainRequest& request, bool main_process) {
  request.mode = f.mode;
  request.earlier_run = f.overwrite_output_dir ? train::EarlierRun::overwrite
                        : f.resume_if_exists   ? train::EarlierRun::resume
                                               : train::EarlierRun::refuse;
  request.run_dir = f.run_dir;
  if (!f.from.empty()) request.from = f.from;
  request.checkpoint_at_end = f.save_name.has_value();
  for (const auto& [spec, option] : f.given) {
    if (option->count() == 0) continue;
    switch (spec->type) {
      case train::ArgType::integer:
        request.given[spec->key] = option->as<std::int64_t>();
        break;
      case train::ArgType::number:
        request.given[spec->key] = option->as<double>();
        break;
      case train::ArgType::text:
        request.given[spec->key] = option->as<std::string>();
        break;
      case train::ArgType::boolean:
        break;
    }
  }
  for (const auto& [spec, pair] : f.switches) {
    if (pair.first->count() > 0) request.given[spec->key] = true;
    if (pair.second->count() > 0) request.given[spec->key] = false;
  }

  const bool quiet = f.quiet || !main_process;
  const bool json = f.json && main_process;
  // With -v stdout holds only the log records, a JSON document a line; the lines for people go to stderr.
  std::ostream& out = f.verbose ? std::cerr : std::cout;
  ProgressLine progress(!quiet && !json);
  // Output to a file or a pipe (a job's log): a plain line per logging step, so that the log shows progress
  // between the saved lines (the progress line, on a terminal's stderr, leaves nothing in it). -v's records
  // show the same.
  const bool step_lines = !quiet && !json && !f.verbose && !::isatty(STDOUT_FILENO);
  request.on_event = [&](const train::TrainEvent& e) {
    if (!main_process) return;
    using Kind = train::TrainEvent::Kind;
    switch (e.kind) {
      case Kind::progress:
        progress.update(e);
        break;
      case Kind::warning:
        progress.clear();
        print_warning(e.text);
        break;
      case Kind::log:
        if (f.verbose) {
          progress.clear();
          std::cout << e.text << "\n" << std::flush;
        } else if (step_lines) {
          if (const auto line = step_line(e)) std::cout << *line << "\n" << std::flush;
        }
        break;
      case Kind::checkpoint:
        if (!quiet && !json) {
          progress.clear();
          out << "saved " << printable(e.text) << "\n" << std::flush;
        }
        break;
      case Kind::overwritten:
        if (!quiet && !json) {
          progress.clear();
          out << "removed " << printable(e.text) << " (--overwrite-output-dir)\n" << std::flush;
        }
        break;
      case Kind::resumed:
        if (!quiet && !json) {
          progress.clear();
          out << "resuming from " << printable(e.text) << " at step " << e.step << " of " << e.max_steps << "\n"
              << std::flush;
        }
        break;
    }
  };
  g_interrupted.store(false);
  request.interrupted = &g_interrupted;
  struct sigaction action {};
  action.sa_handler = on_sigint;
  sigemptyset(&action.sa_mask);
  struct sigaction previous {};
  // SIGTERM (a scheduler's preemption, the launcher passing one on) stops as Ctrl-C does: after the step, and
  // after the checkpoint in progress.
  struct sigaction previous_term {};
  sigaction(SIGINT, &action, &previous);
  sigaction(SIGTERM, &action, &previous_term);
  train::TrainResult result;
  try {
    result = checkpoint::run_trainer(request);
  } catch (...) {
    sigaction(SIGINT, &previous, nullptr);
    sigaction(SIGTERM, &previous_term, nullptr);
    progress.clear();
    throw;
  }
  sigaction(SIGINT, &previous, nullptr);
  sigaction(SIGTERM, &previous_term, nullptr);
  progress.clear();

  // The run's work is done and saved whatever happens here: a failure to name it is reported after the summary.
  std::optional<checkpoint::TagResult> named;
  std::optional<Error> naming_failure;
  if (main_process && !result.interrupted && f.save_name) {
    std::string source;
    try {
      source = last_checkpoint_name(result);
      named = checkpoint::tag_checkpoint(result.output_dir, source, *f.save_name);
    } catch (const Error& e) {
      const std::string way_out = source.empty() ? ""
                                                 : "; `ckpt tag " + checkpoint::shell_word(result.output_dir) + " " +
                                                       checkpoint::shell_word(source) + " NAME` names it";
      naming_failure =
          Error(ErrorKind::io, e.path(), "--save-name",
                e.detail() + "; training finished and its last checkpoint is saved, but not named" + way_out);
    }
  }

  if (json) {
    std::cout << json::dump(result_json(result, named), 2) << "\n";
  } else if (!quiet) {
    if (result.interrupted) {
      out << fmt::format("interrupted at step {}/{} (epoch {:.2f}); {}\n", result.global_step, result.max_steps,
                         result.epoch, printable(interruption_text(result)));
    } else {
      out << fmt::format("trained {} at step {}/{} (epoch {:.2f})\n", printable(result.output_dir), result.global_step,
                         result.max_steps, result.epoch);
    }
    if (result.best_model_checkpoint) {
      // A resumed run's best comes from its trainer_state.json, named in this run directory.
      out << "best: " << printable(*result.best_model_checkpoint) << " (" << printable(result.best_metric_name) << " "
          << number_text(result.best_metric) << ")\n";
    }
    for (const char* key : {"eval_loss", "eval_accuracy", "train_loss", "train_runtime"}) {
      if (auto it = result.final_metrics.find(key); it != result.final_metrics.end()) {
        out << key << ": " << number_text(it->second) << (std::string_view(key) == "train_runtime" ? " s" : "") << "\n";
      }
    }
    if (!result.checkpoints_removed.empty())
      out << "removed by --save-total-limit: " << result.checkpoints_removed.size() << "\n";
    if (named) out << "tagged " << printable(named->source) << " as " << printable(named->path) << "\n";
  }
  if (naming_failure) throw *naming_failure;
  return result.interrupted ? exit_interrupted : exit_ok;
}

Action attach(CLI::App& sub, train::TrainMode mode) {
  auto f = std::make_shared<TrainFlags>();
  f->mode = mode;
  if (mode == train::TrainMode::resume) {
    sub.add_option("RUN_DIR", f->run_dir, "The run directory to continue (new checkpoints go there too)")->required();
    sub.add_option("--from", f->from,
                   "A name in RUN_DIR, looked up there first: checkpoint-N (or its archive in RUN_DIR/archive or "
                   "RUN_DIR) or a named checkpoint; else the path of a checkpoint directory or a .ckpt archive (an "
                   "archive is restored to a staging directory first) [default: the newest complete checkpoint]");
  }
  for (const auto& spec : train::argument_specs()) {
    if (mode == train::TrainMode::resume && std::string(spec.key) == "output_dir") continue;
    const std::string flag = "--" + train::flag_name(spec.key);
    const char* group = spec.scope == train::ArgScope::model ? "Model (config.json)" : "Training (training_args.bin)";
    std::string help = spec.help;
    if (mode == train::TrainMode::resume) {
      help += spec.scope == train::ArgScope::model ? " (must match the checkpoint)" : " [default: the checkpoint's]";
    } else if (const std::string value = spec.default_text ? spec.default_text : default_text(spec.default_value);
               !value.empty()) {
      help += " [default: " + value + "]";
    }
    CLI::Option* option = nullptr;
    switch (spec.type) {
      case train::ArgType::integer:
        option = sub.add_option(flag, f->integers.emplace_back(), help)->transform(whole_number());
        break;
      case train::ArgType::number:
        option = sub.add_option(flag, f->numbers.emplace_back(), help);
        break;
      case train::ArgType::text:
        option = sub.add_option(flag, f->texts.emplace_back(), help);
        break;
      case train::ArgType::boolean: {
        // CLI11 takes a const string as the description (a mutable one would be the flag's result variable).
        const std::string on_help = help;
        const std::string off_help = "Turn " + flag + " off (wins over it)";
        CLI::Option* on = sub.add_flag(flag, on_help)->group(group);
        CLI::Option* off = sub.add_flag("--no-" + train::flag_name(spec.key), off_help)->group(group);
        f->switches.push_back({&spec, {on, off}});
        continue;
      }
    }
    option->group(group);
    if (mode == train::TrainMode::save && std::string(spec.key) == "output_dir") f->output_dir = option->required();
    f->given.push_back({&spec, option});
  }
  if (mode == train::TrainMode::save) {
    CLI::Option* overwrite = sub.add_flag(
        "--overwrite-output-dir", f->overwrite_output_dir,
        "When --output-dir holds an earlier run's checkpoints and archives, delete them (as rotate deletes) and "
        "start a new run; other files there stay (without this or --resume-if-exists such a directory is refused)");
    sub.add_flag("--resume-if-exists", f->resume_if_exists,
                 "When --output-dir holds an earlier run's checkpoints, continue it as ckpt resume does (training "
                 "flags override "
                 "its arguments, the model must match); else start a new run")
        ->excludes(overwrite);
  }
  const char* dist = "Distributed (torch.distributed, Gloo)";
  sub.add_option("--nproc-per-node", f->launch.nproc_per_node,
                 "Start N worker processes on this machine, one torch.distributed group (as torchrun); ignored in a "
                 "worker (RANK set) [default: 1]")
      ->transform(integer_between(1, 1024))
      ->group(dist);
  sub.add_option("--nnodes", f->launch.nnodes,
                 "Machines in the group, each running this command with its --node-rank [default: 1]")
      ->transform(integer_between(1, 65536))
      ->group(dist);
  sub.add_option("--node-rank", f->launch.node_rank, "This machine's index among --nnodes [default: 0]")
      ->transform(integer_between(0, 65535))
      ->group(dist);
  sub.add_option(
         "--master-addr", f->launch.master_addr,
         "Address of node 0, where rank 0 serves the rendezvous [default: 127.0.0.1; required with --nnodes above 1]")
      ->group(dist);
  sub.add_option("--master-port", f->launch.master_port,
                 "Rendezvous port on --master-addr [default: a free port on one machine, 29500 across machines]")
      ->transform(integer_between(1, 65535))
      ->group(dist);
  sub.add_option("--save-name", f->save_name,
                 "When training finishes, also keep its last checkpoint as RUN_DIR/NAME, a named checkpoint that "
                 "rotate never deletes (as ckpt tag "
                 "makes it; the last step is saved even off --save-steps). NAME is checked before training starts; an "
                 "interrupted run names nothing");
  CLI::Option* json = sub.add_flag("--json", f->json, "Print a JSON summary at the end (nothing else on stdout)");
  sub.add_flag("-q,--quiet", f->quiet, "Print nothing unless there is an error");
  sub.add_flag("-v,--verbose", f->verbose,
               "Print every log record (loss, grad_norm, learning_rate, eval metrics) as a JSON line on stdout, and "
               "the other lines on stderr")
      ->excludes(json);
  return [f] { return run_train(*f); };
}

}  // namespace

Action attach_save(CLI::App& sub) { return attach(sub, train::TrainMode::save); }
Action attach_resume(CLI::App& sub) { return attach(sub, train::TrainMode::resume); }

}  // namespace ckpt::cli
