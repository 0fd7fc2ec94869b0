// A torch.distributed process group from C++: c10d's TCPStore for the rendezvous (served by rank 0 at
// MASTER_ADDR:MASTER_PORT) and ProcessGroupGloo for the collectives, exactly as torch.distributed's
// init_process_group("gloo", init_method="env://") sets them up.
//
// Failures: a collective that fails because a peer is gone (killed, or exited after an error of its own)
// throws an io Error saying so: with the peer's own message when it left one in the store (report_failure),
// else naming the ranks on this host whose process no longer runs.
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <string>
#include <vector>

#include "train/api.hpp"
#include "util/error.hpp"

namespace c10d {
class Store;
class ProcessGroupGloo;
}  // namespace c10d

namespace ckpt::train {

class ProcessGroup {
 public:
  // Joins the group: blocks until every rank has connected (at most the rendezvous timeout).
  explicit ProcessGroup(const DistributedSettings& settings);
  ~ProcessGroup();
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }

  // In place, identical on every rank afterwards (Gloo's ring: each element reduced once, then copied).
  void allreduce_sum(at::Tensor& tensor);
  void broadcast(at::Tensor& tensor, int root);

  // Every rank says whether its part of `what` succeeded (with `failure` its error when not); when another rank
  // failed, this one throws an Error of the same kind naming the first such rank and its message. Returns
  // normally on the rank that failed, which reports its own error. Doubles as a barrier.
  void agree(const Error* failure, const std::string& what);

  // Rank `root` publishes a text (a path, a fingerprint) that every rank returns.
  std::string share(const std::string& text, int root);

  // Leaves this rank's error where the peers look when a collective fails (best effort, never throws).
  void report_failure(const std::string& message) noexcept;

 private:
  [[noreturn]] void lost_peer(const std::exception& cause);
  std::string next_key(const std::string& what);

  int rank_;
  int size_;
  std::string address_;
  std::int64_t sequence_ = 0;
  // Every rank's host and pid, read once the group has formed: a rank whose peer on this host is gone can
  // name it, even when the store (in rank 0) went with it.
  std::vector<std::pair<std::string, long>> processes_;
  c10::intrusive_ptr<c10d::Store> store_;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> group_;
};

}  // namespace ckpt::train
