#include "train/launcher.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>

#include "util/error.hpp"

extern char** environ;

namespace ckpt::train {
namespace {

using Clock = std::chrono::steady_clock;
constexpr std::chrono::seconds kGracePeriod{10};  // for the others to notice a failed worker by themselves
constexpr std::chrono::seconds kTermPeriod{10};   // between SIGTERM and SIGKILL

// Signals to pass on to the workers, as a bit mask (SIGINT and SIGTERM may both arrive before the loop looks).
std::atomic<unsigned> g_forward_signals{0};
extern "C" void on_forwarded_signal(int signal) { g_forward_signals.fetch_or(1u << signal); }

// A port no one listens on now (the rendezvous store binds it a moment later, as torchrun's standalone mode does).
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0)
    throw Error(ErrorKind::io, "", "--master-port", std::string("cannot open a socket: ") + std::strerror(errno));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_ANY);
  socklen_t length = sizeof address;
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0;
  ::close(fd);
  if (!ok) throw Error(ErrorKind::io, "", "--master-port", "cannot find a free port");
  return ntohs(address.sin_port);
}

std::vector<std::string> worker_environment(const LaunchOptions& o, int local_rank, int port) {
  static const char* const kOwn[] = {"RANK=",       "LOCAL_RANK=",  "WORLD_SIZE=",  "LOCAL_WORLD_SIZE=",
                                     "GROUP_RANK=", "MASTER_ADDR=", "MASTER_PORT=", "CKPT_LAUNCHER_PID="};
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e) {
    bool own = false;
    for (const char* prefix : kOwn) own |= std::strncmp(*e, prefix, std::strlen(prefix)) == 0;
    if (!own) env.emplace_back(*e);
  }
  env.push_back("RANK=" + std::to_string(o.node_rank * o.nproc_per_node + local_rank));
  env.push_back("LOCAL_RANK=" + std::to_string(local_rank));
  env.push_back("WORLD_SIZE=" + std::to_string(o.nnodes * o.nproc_per_node));
  env.push_back("LOCAL_WORLD_SIZE=" + std::to_string(o.nproc_per_node));
  env.push_back("GROUP_RANK=" + std::to_string(o.node_rank));
  env.push_back("MASTER_ADDR=" + o.master_addr);
  env.push_back("MASTER_PORT=" + std::to_string(port));
  env.push_back(std::string(kLauncherPidVariable) + "=" + std::to_string(::getpid()));
  return env;
}

std::vector<char*> pointers(std::vector<std::string>& strings) {
  std::vector<char*> result;
  for (auto& s : strings) result.push_back(s.data());
  result.push_back(nullptr);
  return result;
}

struct Worker {
  pid_t pid = 0;
  int rank = 0;
  bool running = true;
};

std::string describe(const Worker& w, int status) {
  const std::string who = "worker rank " + std::to_string(w.rank) + " (pid " + std::to_string(w.pid) + ")";
  if (WIFSIGNALED(status)) {
    return who + " was killed by signal " + std::to_string(WTERMSIG(status)) + " (" + strsignal(WTERMSIG(status)) + ")";
  }
  return who + " failed with exit status " + std::to_string(WEXITSTATUS(status));
}

}  // namespace

LaunchResult launch_workers(const LaunchOptions& o, const std::vector<std::string>& argv) {
  if (o.nproc_per_node < 1 || o.nproc_per_node > 1024)
    throw Error(ErrorKind::invalid_argument, "", "--nproc-per-node", "must be between 1 and 1024");
  if (o.nnodes < 1 || o.nnodes > 65536)
    throw Error(ErrorKind::invalid_argument, "", "--nnodes", "must be between 1 and 65536");
  if (o.node_rank < 0 || o.node_rank >= o.nnodes)
    throw Error(ErrorKind::invalid_argument, "", "--node-rank", "must be below --nnodes");
  if (o.nnodes > 1 && (o.master_addr.rfind("127.", 0) == 0 || o.master_addr == "localhost" || o.master_addr == "::1")) {
    throw Error(ErrorKind::invalid_argument, "", "--master-addr",
                "with --nnodes above 1, the address of node 0 as the other machines reach it");
  }
  if (o.master_port && (*o.master_port < 1 || *o.master_port > 65535)) {
    throw Error(ErrorKind::invalid_argument, "", "--master-port", "must be a TCP port (1-65535)");
  }
  const int port = o.master_port ? *o.master_port : o.nnodes == 1 ? free_port() : 29500;

  struct sigaction action {};
  action.sa_handler = on_forwarded_signal;
  sigemptyset(&action.sa_mask);
  struct sigaction previous_int {
  }, previous_term{}, previous_child{};
  g_forward_signals.store(0);
  sigaction(SIGINT, &action, &previous_int);
  sigaction(SIGTERM, &action, &previous_term);
  // An inherited SIG_IGN would have the kernel reap the workers before waitpid could read their status.
  struct sigaction default_child {};
  default_child.sa_handler = SIG_DFL;
  sigaction(SIGCHLD, &default_child, &previous_child);
  auto restore_signals = [&] {
    sigaction(SIGINT, &previous_int, nullptr);
    sigaction(SIGTERM, &previous_term, nullptr);
    sigaction(SIGCHLD, &previous_child, nullptr);
  };

  std::vector<Worker> workers;
  auto signal_all = [&](int signal) {
    for (const auto& w : workers) {
      if (w.running) ::kill(w.pid, signal);
    }
  };
  std::vector<std::string> args = argv;
  std::vector<char*> arg_pointers = pointers(args);
  LaunchResult result;
  for (int local = 0; local < o.nproc_per_node; ++local) {
    std::vector<std::string> env = worker_environment(o, local, port);
    std::vector<char*> env_pointers = pointers(env);
    pid_t pid = 0;
    const int error = ::posix_spawn(&pid, "/proc/self/exe", nullptr, nullptr, arg_pointers.data(), env_pointers.data());
    if (error != 0) {
      signal_all(SIGKILL);
      for (const auto& w : workers) ::waitpid(w.pid, nullptr, 0);
      restore_signals();
      throw Error(ErrorKind::io, "/proc/self/exe", "", std::string("cannot start a worker: ") + std::strerror(error));
    }
    workers.push_back({pid, o.node_rank * o.nproc_per_node + local});
  }

  // The failure reported: a worker killed by a signal (the cause, when the others then fail in a collective),
  // else the first to fail.
  std::optional<Clock::time_point> failed_at;
  bool failure_is_signal = false;
  bool terminated = false;
  bool all_interrupted = true;
  std::size_t running = workers.size();
  while (running > 0) {
    const unsigned pending = g_forward_signals.exchange(0);
    for (int signal : {SIGINT, SIGTERM}) {
      if (pending & (1u << signal)) signal_all(signal);
    }
    bool reaped = false;
    for (auto& w : workers) {
      if (!w.running) continue;
      int status = 0;
      const pid_t done = ::waitpid(w.pid, &status, WNOHANG);
      if (done != w.pid) continue;
      w.running = false;
      --running;
      reaped = true;
      const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
      const bool interrupted = WIFEXITED(status) && WEXITSTATUS(status) == 130;
      all_interrupted &= interrupted;
      // Once the launcher has signalled the rest, their deaths are its doing, not causes.
      if (!ok && !interrupted && (!result.failure || (WIFSIGNALED(status) && !failure_is_signal && !terminated))) {
        result.failure = describe(w, status);
        result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 1;
        failure_is_signal = WIFSIGNALED(status);
        if (!failed_at) failed_at = Clock::now();
      }
    }
    if (failed_at && running > 0) {
      const auto waited = Clock::now() - *failed_at;
      if (!terminated && waited > kGracePeriod) {
        signal_all(SIGTERM);
        terminated = true;
      } else if (terminated && waited > kGracePeriod + kTermPeriod) {
        signal_all(SIGKILL);
      }
    }
    if (!reaped && running > 0) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  restore_signals();
  if (!result.failure && all_interrupted) result.exit_code = 130;
  return result;
}

}  // namespace ckpt::train
