#include "cli/several_runs.hpp"

#include <fmt/format.h>

#include <iostream>
#include <optional>

#include "checkpoint/run_dir.hpp"
#include "cli/text.hpp"
#include "util/error.hpp"

namespace ckpt::cli {
namespace {

int severity(int exit_code) {
  switch (exit_code) {
    case exit_interrupted:
      return 5;
    case exit_bad_input:
      return 4;
    case exit_usage:
      return 3;
    case exit_failure:
      return 2;
    case exit_locked:
      return 1;
    default:
      return 0;
  }
}

}  // namespace

void add_run_selection(CLI::App& sub, RunSelection& selection) {
  sub.add_option("RUN_DIR", selection.run_dirs, "The run directories (holding checkpoint-N directories), one or more");
  sub.add_option("--recursive", selection.roots,
                 "Also every run directory at or below ROOT, nested ones included (symlinks not followed, hidden "
                 "directories skipped); repeatable")
      ->type_name("ROOT")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
}

void require_runs(const RunSelection& selection, const std::string& subcommand) {
  if (selection.run_dirs.empty() && selection.roots.empty()) {
    throw UsageError("RUN_DIR is required, or --recursive ROOT (see ckpt help " + subcommand + ")");
  }
}

int worse_exit(int a, int b) { return severity(b) > severity(a) ? b : a; }

SeveralRuns for_each_run(const RunSelection& selection,
                         const std::function<json::Json(const std::string& run_dir)>& handle) {
  SeveralRuns done;
  for (auto& target : checkpoint::select_runs(selection.run_dirs, selection.roots)) {
    std::optional<Error> error = std::move(target.error);
    if (!error) {
      try {
        done.runs.push_back(handle(target.path));
        ++done.handled;
        continue;
      } catch (const Error& e) {
        error = e.with_context(target.path, "");  // an error about no file in particular is about its run
      }
    }
    std::cout.flush();  // the runs before it first, in a log that holds both
    print_error(error->what());
    done.runs.push_back({{"run_dir", target.path}, {"error", error_object(*error)}});
    ++done.failed;
    done.exit_code = worse_exit(done.exit_code, exit_code_for(error->kind()));
  }
  return done;
}

std::string overall_text(const SeveralRuns& done, const std::string& totals) {
  const auto runs = [](std::size_t n) { return fmt::format("{} run{}", n, n == 1 ? "" : "s"); };
  return "overall: " + runs(done.handled) + ", " + totals + (done.failed ? "; " + runs(done.failed) + " failed" : "") +
         "\n";
}

}  // namespace ckpt::cli
