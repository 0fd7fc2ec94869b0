// The command line: one table of subcommands, one place that turns errors into messages and exit codes.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "format/json.hpp"
#include "util/error.hpp"

namespace ckpt::cli {

// Exit statuses, documented in man/ckpt.1.
enum ExitCode : int {
  exit_ok = 0,
  exit_failure = 1,
  exit_usage = 2,
  exit_bad_input = 3,  // corrupt or unsupported input, or a failed --verify
  exit_locked = 75,    // --no-wait and the run directory's lock is held (EX_TEMPFAIL)
  exit_interrupted = 130,
};

// A subcommand registers its options on `app` and returns the action that runs it after parsing; the action
// returns the exit status (0 unless the command has something to report, like a failed verification).
using Action = std::function<int()>;
struct Subcommand {
  const char* name;
  const char* summary;
  Action (*attach)(CLI::App& sub);
};

Action attach_inspect(CLI::App& sub);
Action attach_list(CLI::App& sub);
Action attach_best(CLI::App& sub);
Action attach_latest(CLI::App& sub);
Action attach_rotate(CLI::App& sub);
Action attach_tag(CLI::App& sub);
Action attach_convert(CLI::App& sub);
Action attach_diff(CLI::App& sub);
Action attach_save(CLI::App& sub);
Action attach_resume(CLI::App& sub);

// A command-line mistake the action finds after parsing (options that do not go together): reported as CLI11's
// are, one line, exit status 2, kind "usage" with --json. The message begins with the option it is about.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Checks of option values whose failures read as one line naming the option, the value and what it must be:
// "--keep: must be at least 1, not 0", "--to: 'safetensor' is not one of safetensors, pytorch, archive, dir; did
// you mean 'safetensors'?". Their descriptions in --help are CLI11's own (INT, POSITIVE, INT in [1 - 19], {a,b}).
// The integer ones read decimal only and rewrite the value in plain decimal, so they are given to an option with
// ->transform(), never ->check(), on every integer option: CLI11 itself would read 010 as octal 8 (and 08 not at all).
CLI::Validator whole_number();
CLI::Validator positive_integer();
CLI::Validator integer_between(std::int64_t low, std::int64_t high);
CLI::Validator one_of(std::vector<std::string> values);
// A finite number >= 0 as strtod reads it ("0", "1e-5", ".5"): "--rtol: must be a finite number >= 0, not -1".
CLI::Validator non_negative_number();

// The RUN_DIR argument of list, best, latest and rotate: refused when it is no run directory (checkpoint::
// check_run_directory), with a note on stderr when it holds nothing yet.
void require_run_directory(const std::string& run_dir);

// A failure's exit status, and its object in --json output ({"kind", "path", "where", "message"}, the value of
// {"error": ...}): the one mapping, for a command's failure and for each failing run of several.
int exit_code_for(ErrorKind kind);
json::Json error_object(const Error& error);

int run(int argc, char** argv);

// The command line run() was given, argv[0] included (save/resume start their workers with it).
const std::vector<std::string>& command_line();

}  // namespace ckpt::cli
