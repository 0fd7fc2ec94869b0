#include "cli/cli.hpp"

#include <cstdio>
#include <iostream>
#include <memory>

#include "util/error.hpp"

#ifndef CKPT_VERSION
#error "CKPT_VERSION must be defined by the build"
#endif

namespace ckpt::cli {
namespace {

constexpr Subcommand kSubcommands[] = {
    {"list", "List the checkpoints of a run directory: step, metrics, best, newest, complete, size, age", attach_list},
    {"best", "Print the best checkpoint of a run directory; link or export it", attach_best},
    {"rotate", "Delete old checkpoints safely, keeping the best, the newest and the last N", attach_rotate},
    {"inspect", "Show what a checkpoint file, checkpoint directory or run directory holds", attach_inspect},
    {"convert", "Convert weights and checkpoint files between pickle and safetensors, shard, cast", attach_convert},
};

int exit_code_for(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::corrupt:
    case ErrorKind::unsupported: return exit_bad_input;
    case ErrorKind::invalid_argument: return exit_usage;
    case ErrorKind::interrupted: return exit_interrupted;
    case ErrorKind::locked: return exit_locked;
    case ErrorKind::not_found:
    case ErrorKind::io: return exit_failure;
  }
  return exit_failure;
}

}  // namespace

int run(int argc, char** argv) {
  CLI::App app{"ckpt: manage PyTorch and Hugging Face Trainer checkpoints", "ckpt"};
  app.set_version_flag("--version", "ckpt " CKPT_VERSION);
  app.require_subcommand(1);
  app.fallthrough(false);

  std::vector<std::pair<CLI::App*, Action>> actions;
  for (const auto& s : kSubcommands) {
    CLI::App* sub = app.add_subcommand(s.name, s.summary);
    actions.emplace_back(sub, s.attach(*sub));
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "ckpt: error: " << e.what() << "\n";
    std::cerr << "Run 'ckpt --help' or 'ckpt SUBCOMMAND --help' for usage.\n";
    return exit_usage;
  }

  try {
    for (auto& [sub, action] : actions) {
      if (sub->parsed()) return action();
    }
    return exit_usage;
  } catch (const Error& e) {
    std::cout.flush();
    std::cerr << "ckpt: error: " << e.what() << "\n";
    return exit_code_for(e.kind());
  } catch (const std::bad_alloc&) {
    std::cerr << "ckpt: error: out of memory\n";
    return exit_failure;
  } catch (const std::exception& e) {
    std::cerr << "ckpt: error: " << e.what() << "\n";
    return exit_failure;
  }
}

}  // namespace ckpt::cli
