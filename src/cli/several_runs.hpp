// RUN_DIR... and --recursive ROOT, for list, latest and rotate: one run directory or several. With exactly one RUN_DIR
// and no --recursive a command runs as it always has (job scripts parse its output); otherwise each run is handled
// on its own (under its own lock, for rotate), a failing one is reported and the next one handled, and the command
// exits with the worst status (worse_exit).
#pragma once

#include <CLI/CLI.hpp>
#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include "cli/cli.hpp"
#include "format/json.hpp"

namespace ckpt::cli {

struct RunSelection {
  std::vector<std::string> run_dirs;
  std::vector<std::string> roots;  // --recursive
  // Whether the output is that of several runs: it follows the command line, never what a tree happens to hold.
  bool several() const { return run_dirs.size() != 1 || !roots.empty(); }
};

// Registers RUN_DIR... and --recursive ROOT (repeatable) on `sub`.
void add_run_selection(CLI::App& sub, RunSelection& selection);

// After parsing: throws UsageError unless a RUN_DIR or a --recursive ROOT was given.
void require_runs(const RunSelection& selection, const std::string& subcommand);

// Of two exit statuses, the one that says more is wrong: interrupted (130), corrupt or unsupported input (3), a refused
// request (2), any other failure (1), a run another process holds locked (75: try again later), success.
int worse_exit(int a, int b);

struct SeveralRuns {
  json::Json runs = json::Json::array();  // the --json document's "runs", one object per run
  std::size_t handled = 0;
  std::size_t failed = 0;
  int exit_code = exit_ok;  // the worst
};

// Handles each selected run (checkpoint::select_runs) in turn with `handle(run_dir)`, which prints the run's text and
// returns its object in the --json document ({"run_dir": ..., ...}). An Error it throws, or the one that stopped the
// run being found, is that run's failure: its line on stderr at once (naming the run), {"run_dir": ..., "error":
// {...}} in the document, its exit status counted; then the next run is handled.
SeveralRuns for_each_run(const RunSelection& selection,
                         const std::function<json::Json(const std::string& run_dir)>& handle);

// The last line of several runs' text: "overall: 3 runs, TOTALS" (the runs handled), and "; 1 run failed" when any did.
std::string overall_text(const SeveralRuns& done, const std::string& totals);

}  // namespace ckpt::cli
