#include "cli/cli.hpp"

#include <algorithm>
#include <cstdio>
#include <iostream>
#include <memory>

#include "checkpoint/run_dir.hpp"
#include "cli/text.hpp"
#include "util/error.hpp"
#include "util/mapped_file.hpp"

#ifndef CKPT_VERSION
#error "CKPT_VERSION must be defined by the build"
#endif

namespace ckpt::cli {
namespace {

constexpr Subcommand kSubcommands[] = {
    {"save", "Train the embedded model, saving complete checkpoints in the Hugging Face Trainer layout", attach_save},
    {"resume", "Continue a run from its newest (or a given) checkpoint, bit-for-bit as if never stopped", attach_resume},
    {"list", "List the checkpoints of a run directory: step, metrics, best, newest, complete, size, age", attach_list},
    {"best", "Print the best checkpoint of a run directory; link or export it", attach_best},
    {"latest", "Print the newest complete checkpoint of a run directory, for job scripts; verify it, restore an archive", attach_latest},
    {"rotate", "Delete old checkpoints safely (or archive them first), keeping the best, the newest and the last N", attach_rotate},
    {"inspect", "Show what a checkpoint file, checkpoint directory or run directory holds", attach_inspect},
    {"convert", "Convert weights and checkpoint files between pickle and safetensors, shard, cast; archive checkpoints compressed and restore them", attach_convert},
};

std::size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

// "did you mean ...?" for a misspelled subcommand or option: the closest known name within two edits.
std::string suggestion(const CLI::App& app, const std::vector<std::string>& args) {
  const CLI::App* scope = &app;
  for (const auto& arg : args) {
    for (const CLI::App* sub : app.get_subcommands({})) {
      if (sub->get_name() == arg) scope = sub;
    }
  }
  std::vector<std::string> known;
  for (const CLI::App* sub : scope->get_subcommands({})) known.push_back(sub->get_name());
  for (const CLI::Option* option : scope->get_options()) {
    for (const auto& name : option->get_lnames()) known.push_back("--" + name);
  }
  std::string best;
  std::size_t best_distance = 3;
  for (const auto& arg : args) {
    if (std::find(known.begin(), known.end(), arg) != known.end()) continue;
    const std::string word = arg.substr(0, arg.find('='));
    for (const auto& name : known) {
      const std::size_t d = edit_distance(word, name);
      if (d < best_distance) {
        best_distance = d;
        best = name;
      }
    }
  }
  return best;
}

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

namespace {
std::vector<std::string> g_command_line;
}  // namespace

void require_run_directory(const std::string& run_dir) {
  if (checkpoint::check_run_directory(run_dir)) std::cerr << "ckpt: note: " << run_dir << " holds no checkpoints yet\n";
}

const std::vector<std::string>& command_line() { return g_command_line; }

int run(int argc, char** argv) {
  g_command_line.assign(argv, argv + argc);
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
    print_error(e.what());
    const std::string hint = suggestion(app, std::vector<std::string>(argv + 1, argv + argc));
    if (!hint.empty()) std::cerr << "Did you mean '" << hint << "'?\n";
    std::cerr << "Run 'ckpt --help' or 'ckpt SUBCOMMAND --help' for usage.\n";
    return exit_usage;
  }

  // A file that shrank under its map was read as zeros: that, not what the zeros led to, is the error.
  const auto report_shrunk_file = [] {
    try {
      ensure_no_mapped_file_shrank();
      return false;
    } catch (const Error& e) {
      std::cout.flush();
      print_error(e.what());
      return true;
    }
  };
  try {
    for (auto& [sub, action] : actions) {
      if (!sub->parsed()) continue;
      const int code = action();
      return report_shrunk_file() ? exit_failure : code;
    }
    return exit_usage;
  } catch (const Error& e) {
    if (report_shrunk_file()) return exit_failure;
    std::cout.flush();
    print_error(e.what());
    return exit_code_for(e.kind());
  } catch (const std::bad_alloc&) {
    if (!report_shrunk_file()) print_error("out of memory");
    return exit_failure;
  } catch (const std::exception& e) {
    if (!report_shrunk_file()) print_error(e.what());
    return exit_failure;
  }
}

}  // namespace ckpt::cli
