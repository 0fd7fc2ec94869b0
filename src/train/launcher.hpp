// `ckpt save|resume --nproc-per-node N`: this very command, started N times as the workers of one
// torch.distributed group, as torchrun starts a script. Each worker gets the environment torchrun gives it
// (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR, MASTER_PORT) and, seeing RANK set,
// runs as a worker rather than launching again. Torch-free: it is the `ckpt` binary that launches.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace ckpt::train {

// Set in each worker's environment to the launcher's pid: the worker dies with the launcher.
inline constexpr const char* kLauncherPidVariable = "CKPT_LAUNCHER_PID";

struct LaunchOptions {
  int nproc_per_node = 1;
  int nnodes = 1;
  int node_rank = 0;
  std::string master_addr = "127.0.0.1";
  std::optional<int> master_port;  // default: a free port on one node, torchrun's 29500 across nodes
};

struct LaunchResult {
  int exit_code = 0;                   // the first failed worker's (1 for a signal), 130 when all were interrupted
  std::optional<std::string> failure;  // which worker failed first and how
};

// Starts the workers (argv[0] is replaced by this executable), forwards SIGINT and SIGTERM to them and waits.
// When one fails, the others are given a grace period to stop on their own (their next collective fails), then
// SIGTERM, then SIGKILL; a worker also dies with the launcher (kLauncherPidVariable). Throws Error
// (invalid_argument, io) when it cannot start.
LaunchResult launch_workers(const LaunchOptions& options, const std::vector<std::string>& argv);

}  // namespace ckpt::train
