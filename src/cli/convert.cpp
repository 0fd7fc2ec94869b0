// `ckpt convert SRC --to safetensors|pytorch -o DST [--max-shard-size SIZE] [--dtype bf16|fp16|fp32]
//  [--include-state] [--dry-run] [--force] [--json] [-q]`
// `ckpt convert CHECKPOINT_DIR --to archive -o FILE [--level N] [--threads N]`, `ckpt convert FILE --to dir -o DIR`
// `ckpt convert CHECKPOINT_DIR --consolidate -o DIR [--to safetensors|pytorch]` (optimizer shards, DeepSpeed ZeRO)
#include <fmt/format.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <iostream>

#include "checkpoint/archive.hpp"
#include "checkpoint/convert.hpp"
#include "cli/cli.hpp"
#include "cli/text.hpp"
#include "format/json.hpp"

namespace ckpt::cli {
namespace {

struct ConvertOptions {
  std::string source;
  std::string to;
  std::string output;
  std::string max_shard_size;
  std::string dtype;
  bool include_state = false;
  bool consolidate = false;
  bool dry_run = false;
  bool force = false;
  bool json = false;
  bool quiet = false;
  bool max_shard_size_given = false;
  int level = checkpoint::kDefaultArchiveLevel;
  unsigned threads = 0;
};

std::atomic<bool> g_interrupted{false};

extern "C" void on_interrupt(int) { g_interrupted.store(true); }

// While it lives, SIGINT and SIGTERM set a flag the conversion checks between chunks, so that it stops through its
// ordinary failure path, which removes its temporaries, and exits 130. A second signal ends the process at once
// (SA_RESETHAND); what that leaves is cleared by the next convert to the same destination.
class InterruptFlag {
 public:
  InterruptFlag() {
    g_interrupted.store(false);
    struct sigaction action {};
    action.sa_handler = on_interrupt;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESETHAND | SA_RESTART;
    sigaction(SIGINT, &action, &previous_int_);
    sigaction(SIGTERM, &action, &previous_term_);
  }
  ~InterruptFlag() {
    sigaction(SIGINT, &previous_int_, nullptr);
    sigaction(SIGTERM, &previous_term_, nullptr);
  }
  InterruptFlag(const InterruptFlag&) = delete;
  InterruptFlag& operator=(const InterruptFlag&) = delete;
  const std::atomic<bool>* flag() const { return &g_interrupted; }

 private:
  struct sigaction previous_int_ {};
  struct sigaction previous_term_ {};
};

// --to archive and --to dir: one archive file <-> one checkpoint directory.
int run_archive(const ConvertOptions& o) {
  for (const auto& [given, flag] : {std::pair{o.max_shard_size_given, "--max-shard-size"},
                                    {!o.dtype.empty(), "--dtype"},
                                    {o.include_state, "--include-state"},
                                    {o.dry_run, "--dry-run"}}) {
    if (given) throw UsageError(std::string(flag) + " does not apply to --to " + o.to);
  }
  checkpoint::ArchiveOptions options;
  options.level = o.level;
  options.threads = o.threads;
  options.force = o.force;
  const InterruptFlag interrupt;
  options.interrupted = interrupt.flag();
  const bool archiving = o.to == "archive";
  const auto s = with_progress(!o.quiet && !o.json, "converting", [&](ProgressLine& progress) {
    options.progress = [&progress](std::uint64_t done, std::uint64_t total) { progress.update(done, total); };
    return archiving ? checkpoint::archive_checkpoint(o.source, o.output, options)
                     : checkpoint::restore_archive(o.source, o.output, options);
  });
  if (o.json) {
    std::cout << json::dump({{"source", o.source},
                             {"destination", o.output},
                             {"to", o.to},
                             {"checkpoint", s.checkpoint},
                             {"step", s.step ? json::Json(*s.step) : json::Json(nullptr)},
                             {"files", s.files},
                             {"tensors", s.tensors},
                             {"original_bytes", s.original_bytes},
                             {"archive_bytes", s.archive_bytes},
                             {"ratio", s.ratio()}},
                            2)
              << "\n";
  } else if (!o.quiet) {
    print_text(fmt::format("{} {} -> {}: {} files, {} tensors, {} {} {} ({:.3f}x)\n",
                           archiving ? "archived" : "restored", printable(o.source), printable(o.output), s.files,
                           s.tensors, human_bytes(s.original_bytes), archiving ? "into" : "from",
                           human_bytes(s.archive_bytes), s.ratio()));
  }
  return exit_ok;
}

int run_convert(const ConvertOptions& o) {
  if (o.to.empty() && !o.consolidate) throw UsageError("--to is required (unless --consolidate)");
  if (o.consolidate && (o.to == "archive" || o.to == "dir")) {
    throw UsageError("--consolidate does not apply to --to " + o.to + ": consolidate first, then archive");
  }
  if (o.to == "archive" || o.to == "dir") return run_archive(o);
  checkpoint::ConvertOptions options;
  // A DeepSpeed or FSDP checkpoint has no weights to copy: consolidating writes them, as safetensors unless --to says.
  const bool partitioned = o.consolidate && checkpoint::holds_partitioned_weights(o.source);
  options.to = o.to == "safetensors" || (o.to.empty() && partitioned) ? checkpoint::ConvertTarget::safetensors
                                                                      : checkpoint::ConvertTarget::pytorch;
  options.consolidate = o.consolidate;
  options.copy_weights = o.to.empty() && !partitioned;
  if (options.copy_weights && (o.max_shard_size_given || !o.dtype.empty())) {
    throw UsageError(std::string(o.dtype.empty() ? "--max-shard-size" : "--dtype") +
                     " applies to converted weights: with --consolidate alone they are copied; add --to");
  }
  if (o.consolidate && o.include_state && o.to == "safetensors" && !partitioned) {
    throw UsageError("--consolidate writes optimizer.pt: convert its output with --include-state afterwards");
  }
  if (o.max_shard_size_given) options.max_shard_size = checkpoint::parse_size(o.max_shard_size);  // checked when parsed
  if (o.dtype == "bf16")
    options.dtype = DType::bfloat16;
  else if (o.dtype == "fp16")
    options.dtype = DType::float16;
  else if (o.dtype == "fp32")
    options.dtype = DType::float32;
  options.include_state = o.include_state;
  options.dry_run = o.dry_run;
  options.force = o.force;
  const InterruptFlag interrupt;
  options.interrupted = interrupt.flag();
  const auto result = with_progress(!o.quiet && !o.json, "converting", [&](ProgressLine& progress) {
    options.progress = [&progress](const std::string& file, std::uint64_t done, std::uint64_t total) {
      progress.set_label("converting " + printable(file));
      progress.update(done, total);
    };
    return checkpoint::convert(o.source, o.output, options);
  });
  if (o.json) {
    json::Json files = json::Json::array();
    for (const auto& f : result.files) {
      files.push_back({{"source", f.source.empty() ? json::Json(nullptr) : json::Json(f.source)},
                       {"destination", f.destination},
                       {"action", f.action},
                       {"size_bytes", f.bytes}});
    }
    std::cout << json::dump({{"source", o.source},
                             {"destination", result.destination},
                             {"to", o.to.empty() ? json::Json(nullptr) : json::Json(o.to)},
                             {"dry_run", o.dry_run},
                             {"files", std::move(files)},
                             {"notes", result.notes}},
                            2)
              << "\n";
  } else if (!o.quiet) {
    Table table({"destination", "action", "size", "source"});
    for (const auto& f : result.files) {
      table.add({f.destination, o.dry_run ? "would be " + f.action : f.action, o.dry_run ? "-" : human_bytes(f.bytes),
                 f.source});
    }
    std::string text = table.render();
    for (const auto& note : result.notes) text += "note: " + printable(note) + "\n";
    print_text(text);
  }
  return exit_ok;
}

}  // namespace

Action attach_convert(CLI::App& sub) {
  auto o = std::make_shared<ConvertOptions>();
  sub.add_option("SRC", o->source,
                 "A weights file, a sharded checkpoint's index json, another checkpoint file, a checkpoint directory, "
                 "or an archive (--to dir)")
      ->required();
  sub.add_option("--to", o->to,
                 "Target format: safetensors, pytorch, archive (a compressed .ckpt file of a checkpoint directory), "
                 "dir (restore one); required unless --consolidate")
      ->check(one_of({"safetensors", "pytorch", "archive", "dir"}));
  sub.add_option("-o,--output", o->output,
                 "Destination file, or directory (for a directory SRC, with --max-shard-size, or --to dir)")
      ->required();
  sub.add_option("--max-shard-size", o->max_shard_size,
                 "Split weights into shards of at most this size, with an index json (e.g. 5GB, 500MiB)")
      ->check(CLI::Validator(
          [](std::string& text) {
            return checkpoint::parse_size(text) ? std::string() : "'" + text + "' is not a size (e.g. 5GB, 500MiB)";
          },
          "SIZE"))
      ->each([o](const std::string&) { o->max_shard_size_given = true; });
  sub.add_option("--dtype", o->dtype,
                 "Cast floating weights (round to nearest even, as torch does); a directory's config.json gets the new "
                 "torch_dtype")
      ->check(one_of({"bf16", "fp16", "fp32"}));
  sub.add_flag("--include-state", o->include_state,
               "For a directory: also convert optimizer, scheduler, scaler and rng_state files (and training_args.bin "
               "one way, to JSON)");
  sub.add_flag("--consolidate", o->consolidate,
               "For a directory with a sharded optimizer (optimizer_<rank>.pt, from --shard-optimizer): merge the "
               "shards into one optimizer.pt that torch.optim loads; without --to the weights are copied as they "
               "are. For a DeepSpeed ZeRO checkpoint: write its fp32 weights as one model (safetensors unless --to "
               "says), with --include-state also optimizer.pt and scheduler.pt for one process; for an FSDP "
               "checkpoint its model");
  sub.add_option("--level", o->level, "zstd level for --to archive [default: 3]")->transform(integer_between(1, 19));
  sub.add_option("--threads", o->threads, "Threads for --to archive and --to dir [default: every core]")
      ->transform(integer_between(1, 256));
  sub.add_flag("--dry-run", o->dry_run, "Show what would be written; write nothing");
  sub.add_flag(
      "--force", o->force,
      "Replace an existing destination (a directory only when it holds an earlier output of ckpt and nothing else)");
  sub.add_flag("--json", o->json, "Print a JSON summary");
  sub.add_flag("-q,--quiet", o->quiet, "Print nothing unless there is an error");
  return [o] { return run_convert(*o); };
}

}  // namespace ckpt::cli
