#include "train/distributed.hpp"

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <thread>

#include "util/error.hpp"

namespace ckpt::train {
namespace {

// torch.distributed's defaults: the store's for the rendezvous, the process group's for a collective (a peer
// may be writing a large checkpoint while the others wait in one).
constexpr std::chrono::seconds kRendezvousTimeout{300};
constexpr std::chrono::minutes kCollectiveTimeout{30};

std::string host_name() {
  char name[256] = {};
  return ::gethostname(name, sizeof name - 1) == 0 ? std::string(name) : std::string();
}

// Whether a process runs here (a zombie, dead but not yet reaped by its parent, does not).
bool process_runs(long pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  const auto close = text.rfind(')');
  return close != std::string::npos && close + 2 < text.size() && text[close + 2] != 'Z';
}

bool is_loopback(const std::string& address) {
  return address == "localhost" || address == "::1" || address.rfind("127.", 0) == 0;
}

std::vector<std::uint8_t> to_bytes(const std::string& text) { return {text.begin(), text.end()}; }
std::string to_text(const std::vector<std::uint8_t>& bytes) { return {bytes.begin(), bytes.end()}; }

}  // namespace

ProcessGroup::ProcessGroup(const DistributedSettings& settings)
    : rank_(settings.rank),
      size_(settings.world_size),
      address_(settings.master_addr + ":" + std::to_string(settings.master_port)) {
  if (settings.master_port <= 0 || settings.master_port > 65535) {
    throw Error(ErrorKind::invalid_argument, "", "MASTER_PORT", "must be a TCP port (1-65535)");
  }
  try {
    c10d::TCPStoreOptions options;
    options.port = static_cast<std::uint16_t>(settings.master_port);
    options.isServer = rank_ == 0;
    options.numWorkers = static_cast<std::size_t>(size_);
    options.waitWorkers = true;
    options.timeout = kRendezvousTimeout;
    store_ = c10::make_intrusive<c10d::TCPStore>(settings.master_addr, options);
  } catch (const std::exception& e) {
    throw Error(ErrorKind::io, address_, "",
                std::string(rank_ == 0 ? "cannot serve the rendezvous store (is the port in use?): "
                                       : "cannot reach the rendezvous store: ") +
                    e.what());
  }
  try {
    auto options = c10d::ProcessGroupGloo::Options::create(kCollectiveTimeout);
    if (const char* interface = std::getenv("GLOO_SOCKET_IFNAME"); interface && *interface) {
      options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(interface));
    } else if (is_loopback(settings.master_addr)) {
      options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    } else {
      options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    store_->set("ckpt/process/" + std::to_string(rank_), to_bytes(host_name() + "\n" + std::to_string(::getpid())));
    group_ = c10::make_intrusive<c10d::ProcessGroupGloo>(store_, rank_, size_, options);
    // Every rank set its key before joining the group, which waits for all of them.
    for (int r = 0; r < size_; ++r) {
      const std::string text = to_text(store_->get("ckpt/process/" + std::to_string(r)));
      const auto newline = text.find('\n');
      processes_.emplace_back(text.substr(0, newline),
                              newline == std::string::npos ? 0 : std::atol(text.c_str() + newline + 1));
    }
  } catch (const std::exception& e) {
    throw Error(ErrorKind::io, address_, "", std::string("cannot form the Gloo process group: ") + e.what());
  }
}

ProcessGroup::~ProcessGroup() = default;

std::string ProcessGroup::next_key(const std::string& what) {
  return "ckpt/" + std::to_string(sequence_++) + "/" + what;
}

void ProcessGroup::report_failure(const std::string& message) noexcept {
  try {
    store_->set("ckpt/failure/" + std::to_string(rank_), to_bytes(message));
  } catch (...) {}
}

void ProcessGroup::lost_peer(const std::exception& cause) {
  std::string peer;
  try {
    for (int r = 0; r < size_ && peer.empty(); ++r) {
      const std::string key = "ckpt/failure/" + std::to_string(r);
      if (r != rank_ && store_->check({key}))
        peer = "rank " + std::to_string(r) + " failed: " + to_text(store_->get(key));
    }
  } catch (...) {
    // The store lives in rank 0, which may be the process that is gone.
  }
  if (peer.empty()) {
    const std::string here = host_name();
    std::string gone;
    // A killed peer's sockets close as it exits, a moment before it shows as dead: look for up to a second.
    for (int attempt = 0; attempt < 20 && gone.empty(); ++attempt) {
      if (attempt > 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));
      for (int r = 0; r < size_; ++r) {
        const auto& [host, pid] = processes_[static_cast<std::size_t>(r)];
        if (r == rank_ || host != here || pid <= 0 || process_runs(pid)) continue;
        gone += (gone.empty() ? "rank " : ", rank ") + std::to_string(r) + " (pid " + std::to_string(pid) + ")";
      }
    }
    peer = gone.empty() ? std::string("another process is gone (killed, or stopped by an error of its own): ")
                        : gone + " is gone (killed, or stopped by an error of its own): ";
    peer += cause.what();
  }
  throw Error(ErrorKind::io, address_, "", peer);
}

void ProcessGroup::allreduce_sum(at::Tensor& tensor) {
  try {
    std::vector<at::Tensor> tensors{tensor};
    group_->allreduce(tensors)->wait();
  } catch (const std::exception& e) {
    lost_peer(e);
  }
}

void ProcessGroup::broadcast(at::Tensor& tensor, int root) {
  try {
    std::vector<at::Tensor> tensors{tensor};
    c10d::BroadcastOptions options;
    options.rootRank = root;
    group_->broadcast(tensors, options)->wait();
  } catch (const std::exception& e) {
    lost_peer(e);
  }
}

void ProcessGroup::agree(const Error* failure, const std::string& what) {
  const std::string key = next_key("agree");
  const bool ok = failure == nullptr;
  if (!ok) {
    try {
      // The kind as a digit, then the message.
      store_->set(key + "/" + std::to_string(rank_),
                  to_bytes(std::to_string(static_cast<int>(failure->kind())) + failure->what()));
    } catch (const std::exception& e) {
      lost_peer(e);
    }
  }
  at::Tensor failed = at::zeros({size_}, at::kInt);
  failed[rank_] = ok ? 0 : 1;
  allreduce_sum(failed);
  const int* flags = failed.data_ptr<int>();
  for (int r = 0; r < size_; ++r) {
    if (flags[r] == 0) continue;
    if (r == rank_) return;  // the caller reports its own error
    std::string detail;
    try {
      detail = to_text(store_->get(key + "/" + std::to_string(r)));
    } catch (const std::exception& e) {
      lost_peer(e);
    }
    ErrorKind kind = ErrorKind::io;
    if (!detail.empty() && detail[0] >= '0' && detail[0] <= '9') {
      kind = static_cast<ErrorKind>(detail[0] - '0');
      detail.erase(0, 1);
    }
    throw Error(kind, "", "", "rank " + std::to_string(r) + " failed " + what + ": " + detail);
  }
}

std::string ProcessGroup::share(const std::string& text, int root) {
  const std::string key = next_key("share");
  try {
    if (rank_ == root) {
      store_->set(key, to_bytes(text));
      return text;
    }
    return to_text(store_->get(key));
  } catch (const std::exception& e) {
    lost_peer(e);
  }
}

}  // namespace ckpt::train
