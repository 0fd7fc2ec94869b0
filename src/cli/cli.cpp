#include "cli/cli.hpp"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <limits>
#include <memory>
#include <optional>
#include <sstream>

#include "checkpoint/run_dir.hpp"
#include "cli/text.hpp"
#include "format/json.hpp"
#include "util/error.hpp"
#include "util/mapped_file.hpp"

#ifndef CKPT_VERSION
#error "CKPT_VERSION must be defined by the build"
#endif

namespace ckpt::cli {
namespace {

constexpr Subcommand kSubcommands[] = {
    {"save", "Train the embedded model, saving complete checkpoints in the Hugging Face Trainer layout", attach_save},
    {"resume", "Continue a run from its newest (or a given) checkpoint, bit-for-bit as if never stopped",
     attach_resume},
    {"list", "List the checkpoints of a run directory: step, metrics, best, newest, complete, size, age", attach_list},
    {"best", "Print the best checkpoint of a run directory; link or export it", attach_best},
    {"latest",
     "Print the newest complete checkpoint of a run directory, for job scripts; verify it, restore an archive",
     attach_latest},
    {"rotate", "Delete old checkpoints safely (or archive them first), keeping the best, the newest and the last N",
     attach_rotate},
    {"tag", "Keep a checkpoint under a name (RUN_DIR/NAME) that rotate never deletes; delete such a named checkpoint",
     attach_tag},
    {"inspect", "Show what a checkpoint file, checkpoint directory or run directory holds", attach_inspect},
    {"diff", "Compare two weights files, checkpoints or archives tensor by tensor, and their training state",
     attach_diff},
    {"convert",
     "Convert weights and checkpoint files between pickle and safetensors, shard, cast; archive checkpoints compressed "
     "and restore them",
     attach_convert},
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

// "; did you mean 'NAME'?" for the known name within two edits of `word` (the closest), or "".
std::string did_you_mean(const std::string& word, const std::vector<std::string>& names) {
  std::string best;
  std::size_t best_distance = 3;
  for (const auto& name : names) {
    const std::size_t d = edit_distance(word, name);
    if (d < best_distance) {
      best_distance = d;
      best = name;
    }
  }
  return best.empty() ? "" : "; did you mean '" + best + "'?";
}

std::vector<std::string> subcommand_names() {
  std::vector<std::string> names;
  for (const auto& s : kSubcommands) names.emplace_back(s.name);
  return names;
}

std::vector<std::string> option_names(const CLI::App& scope) {
  std::vector<std::string> names;
  for (const CLI::Option* option : scope.get_options()) {
    for (const auto& name : option->get_lnames()) names.push_back("--" + name);
    for (const auto& name : option->get_snames()) names.push_back("-" + name);
  }
  return names;
}

std::string joined(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& item : items) out += (out.empty() ? "" : ", ") + item;
  return out;
}

// Why `text` is no integer of 64 bits, or nullopt after storing it in `value`. Decimal only: what a person types.
std::optional<std::string> integer_problem(const std::string& text, std::int64_t& value) {
  const char* first = text.data();
  const char* last = first + text.size();
  const auto [end, error] = std::from_chars(first, last, value);
  if (error == std::errc::result_out_of_range)
    return "'" + text + "' is too " + (text.front() == '-' ? "small" : "large");
  if (error != std::errc() || end != last) return "'" + text + "' is not a whole number";
  return std::nullopt;
}

bool is_number(const std::string& text) {
  char* end = nullptr;
  std::strtod(text.c_str(), &end);
  return !text.empty() && end == text.c_str() + text.size();
}

// One line for what CLI11 refused, naming the option or argument, in the words of the validators above.
std::string usage_message(const CLI::App& scope, const CLI::ParseError& e) {
  const std::string see =
      " (see " + (scope.get_parent() ? "ckpt help " + scope.get_name() : std::string("ckpt --help")) + ")";
  const std::string what = e.what();
  // CLI11 begins these messages with the option's name and a colon.
  const CLI::Option* named = scope.get_option_no_throw(what.substr(0, what.find(':')));
  // An unknown option is the mistake even when CLI11 first noticed what it left missing (`--kep 3`: --keep).
  const auto extras = scope.remaining();
  for (const auto& arg : extras) {
    if (arg.size() < 2 || arg.front() != '-') continue;
    const std::string name = arg.substr(0, arg.find('='));
    return "unknown option " + name + did_you_mean(name, option_names(scope)) + see;
  }
  if (dynamic_cast<const CLI::ExtrasError*>(&e) && !extras.empty()) {
    return "unexpected argument '" + extras.front() + "'" + see;
  } else if (dynamic_cast<const CLI::ConversionError*>(&e)) {
    // Options are converted after parsing, in the order they were defined: the first that does not convert failed.
    for (const CLI::Option* option : scope.get_options()) {
      const std::string type = option->get_type_name();
      for (const auto& result : option->results()) {
        std::int64_t value = 0;
        const auto problem = type.rfind("INT", 0) == 0 || type.rfind("UINT", 0) == 0 ? integer_problem(result, value)
                             : type.rfind("FLOAT", 0) == 0 && !is_number(result)
                                 ? std::optional<std::string>("'" + result + "' is not a number")
                                 : std::nullopt;
        if (problem) return option->get_name() + ": " + *problem;
      }
    }
    if (named && named->get_type_size_max() == 0) return named->get_name() + " takes no value";
  } else if (dynamic_cast<const CLI::ArgumentMismatch*>(&e) && named) {
    return named->get_name() + (named->results().empty() ? " needs a value" : " is given more than once") + see;
  }
  std::string message = what;
  // "A subcommand is required" reads on after "error: " in lower case; "RUN_DIR is required" stays as it is.
  if (message.size() > 1 && std::islower(static_cast<unsigned char>(message[1])))
    message.front() = static_cast<char>(std::tolower(message.front()));
  return dynamic_cast<const CLI::RequiredError*>(&e) ? message + see : message;
}

}  // namespace

int exit_code_for(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::corrupt:
    case ErrorKind::unsupported:
      return exit_bad_input;
    case ErrorKind::invalid_argument:
      return exit_usage;
    case ErrorKind::interrupted:
      return exit_interrupted;
    case ErrorKind::locked:
      return exit_locked;
    case ErrorKind::not_found:
    case ErrorKind::io:
      return exit_failure;
  }
  return exit_failure;
}

namespace {

// The spellings of error kinds in --json errors: a stable list (docs/inspect-json.md), beside "usage" (a wrong command
// line), "out_of_memory" and "internal" (an exception that is no ckpt::Error).
const char* json_kind(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::not_found:
      return "not_found";
    case ErrorKind::corrupt:
      return "corrupt";
    case ErrorKind::unsupported:
      return "unsupported";
    case ErrorKind::invalid_argument:
      return "invalid_argument";
    case ErrorKind::io:
      return "io";
    case ErrorKind::interrupted:
      return "interrupted";
    case ErrorKind::locked:
      return "locked";
  }
  return "internal";
}

json::Json error_fields(const std::string& kind, const std::string& path, const std::string& where,
                        const std::string& message) {
  const auto text_or_null = [](const std::string& text) {
    return text.empty() ? json::Json(nullptr) : json::Json(text);
  };
  return {{"kind", kind}, {"path", text_or_null(path)}, {"where", text_or_null(where)}, {"message", message}};
}

}  // namespace

json::Json error_object(const Error& error) {
  return error_fields(json_kind(error.kind()), error.path(), error.where(), error.what());
}

namespace {

// Whether a failure is also one JSON object on stdout: --json was given, and this process is not one of a training
// group's other workers (RANK above 0), which share rank 0's stdout and fail as it does.
bool json_errors(const std::vector<std::string>& args) {
  const auto end = std::find(args.begin(), args.end(), "--");
  if (std::find(args.begin(), end, "--json") == end) return false;
  const char* rank = std::getenv("RANK");
  const bool training = args.front() == "save" || args.front() == "resume";
  return !training || rank == nullptr || std::string(rank) == "0";
}

// std::cout held in memory while active, so that a --json run prints its document only once it has succeeded and a
// failure's object is all there is on stdout. Restored on destruction, dropping what was held.
class HeldStdout {
 public:
  explicit HeldStdout(bool active) : original_(std::cout.rdbuf()) {
    if (active) std::cout.rdbuf(held_.rdbuf());
  }
  ~HeldStdout() { std::cout.rdbuf(original_); }
  HeldStdout(const HeldStdout&) = delete;
  HeldStdout& operator=(const HeldStdout&) = delete;
  void release() {
    std::cout.rdbuf(original_);
    std::cout << held_.str();
  }

 private:
  std::ostringstream held_;
  std::streambuf* original_;
};

}  // namespace

namespace {
std::vector<std::string> g_command_line;
}  // namespace

namespace {

// A decimal integer within [low, high], rewritten in plain decimal ("010" -> "10") for CLI11 to convert.
CLI::Validator decimal_integer(std::int64_t low, std::int64_t high, std::string description, std::string out_of_range) {
  return CLI::Validator(
      [low, high, out_of_range](std::string& text) -> std::string {
        std::int64_t value = 0;
        if (const auto problem = integer_problem(text, value)) return *problem;
        if (value < low || value > high) return out_of_range + ", not " + text;
        text = std::to_string(value);
        return "";
      },
      std::move(description));
}

}  // namespace

CLI::Validator whole_number() {
  return decimal_integer(std::numeric_limits<std::int64_t>::min(), std::numeric_limits<std::int64_t>::max(), "INT", "");
}

CLI::Validator positive_integer() {
  return decimal_integer(1, std::numeric_limits<std::int64_t>::max(), "POSITIVE", "must be at least 1");
}

CLI::Validator integer_between(std::int64_t low, std::int64_t high) {
  return decimal_integer(low, high, "INT in [" + std::to_string(low) + " - " + std::to_string(high) + "]",
                         "must be between " + std::to_string(low) + " and " + std::to_string(high));
}

CLI::Validator one_of(std::vector<std::string> values) {
  std::string description;
  for (const auto& v : values) description += (description.empty() ? "" : ",") + v;
  return CLI::Validator(
      [values](std::string& text) -> std::string {
        if (std::find(values.begin(), values.end(), text) != values.end()) return "";
        return "'" + text + "' is not one of " + joined(values) + did_you_mean(text, values);
      },
      "{" + description + "}");
}

CLI::Validator non_negative_number() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        if (!is_number(text)) return "'" + text + "' is not a number";
        const double value = std::strtod(text.c_str(), nullptr);
        if (!std::isfinite(value) || value < 0) return "must be a finite number >= 0, not " + text;
        return "";
      },
      "NONNEGATIVE");
}

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
  // Set after the subcommands were added, which would inherit it.
  app.footer("Run 'ckpt help SUBCOMMAND' (or ckpt SUBCOMMAND --help) for its options; man ckpt for everything.");

  std::vector<std::string> args(argv + 1, argv + argc);
  // `ckpt help [SUBCOMMAND]` is `ckpt [SUBCOMMAND] --help`.
  if (!args.empty() && args.front() == "help") {
    args.erase(args.begin());
    args.push_back("--help");
  }
  // The one place a failure is reported: its line on stderr and, for --json, its object on stdout.
  const bool as_json = !args.empty() && json_errors(args);
  std::optional<HeldStdout> held;  // from parsing on: --help prints as ever
  const auto fail = [&](const char* kind, const std::string& path, const std::string& where, const std::string& message,
                        int code) {
    held.reset();
    std::cout.flush();
    print_error(message);
    if (as_json) std::cout << json::dump({{"error", error_fields(kind, path, where, message)}}, 2) << "\n";
    return code;
  };
  const auto usage_error = [&](const std::string& message) { return fail("usage", "", "", message, exit_usage); };
  const auto error = [&](const Error& e) {
    return fail(json_kind(e.kind()), e.path(), e.where(), e.what(), exit_code_for(e.kind()));
  };

  // CLI11 reports a first word that names no subcommand as a missing subcommand, without the word.
  const auto names = subcommand_names();
  if (args.empty()) return usage_error("a subcommand is required: " + joined(names) + " (see ckpt --help)");
  const std::string& first = args.front();
  const bool option = first.size() > 1 && first.front() == '-';
  if (!option && std::find(names.begin(), names.end(), first) == names.end()) {
    return usage_error("'" + first + "' is not a subcommand" + did_you_mean(first, names) + " (see ckpt --help)");
  }
  if (option && first != "-h" && first != "--help" && first != "--version") {
    return usage_error("unknown option " + first + did_you_mean(first, {"--help", "--version"}) + " (see ckpt --help)");
  }

  try {
    std::vector<std::string> reversed(args.rbegin(), args.rend());  // CLI11 takes them last first
    app.parse(reversed);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    const CLI::App* scope = &app;
    for (const CLI::App* sub : app.get_subcommands({})) {
      if (sub->get_name() == first) scope = sub;
    }
    return usage_error(usage_message(*scope, e));
  }

  // A file that shrank under its map was read as zeros: that, not what the zeros led to, is the error.
  const auto shrunk_file = []() -> std::optional<Error> {
    try {
      ensure_no_mapped_file_shrank();
      return std::nullopt;
    } catch (const Error& e) {
      return e;
    }
  };
  held.emplace(as_json);
  try {
    for (auto& [sub, action] : actions) {
      if (!sub->parsed()) continue;
      const int code = action();
      if (const auto shrunk = shrunk_file()) return error(*shrunk);
      held->release();
      return code;
    }
    return exit_usage;
  } catch (const UsageError& e) {
    return usage_error(e.what());
  } catch (const Error& e) {
    const auto shrunk = shrunk_file();
    return error(shrunk ? *shrunk : e);
  } catch (const std::bad_alloc&) {
    if (const auto shrunk = shrunk_file()) return error(*shrunk);
    return fail("out_of_memory", "", "", "out of memory", exit_failure);
  } catch (const std::exception& e) {
    if (const auto shrunk = shrunk_file()) return error(*shrunk);
    return fail("internal", "", "", e.what(), exit_failure);
  }
}

}  // namespace ckpt::cli
