// Collective communication between data-parallel ranks.
//
// A Communicator connects `world()` ranks; every rank must issue the same collectives in the same
// order (as with NCCL and MPI). Tensors are contiguous and live on device(): f32, f64 or bf16 for the
// sums (bf16 accumulates in f32 per addition), any dtype for all_gather and broadcast.
//
// Async variants return a Work handle; the tensors must not be touched until wait() returns. On the
// GPU (NCCL) the collective runs on a communication stream that first waits (GPU-side event) for the
// work queued so far on the caller's stream, and wait() makes the caller's current stream wait for it
// (GPU-side too: the host does not block). In the in-process backend the collective runs on the
// rank's worker thread and wait() blocks the host.
//
// Failure: no collective waits forever. A rank that does not join a collective within timeout()
// seconds (train.dist_timeout), or that reports a failure through abort(), makes the others stop
// with a seqmix::Error (or, for NCCL, a message on stderr and exit) that names it.
//
// Backends: InProcessGroup (threads of one process, shared memory; for tests, no GPU needed),
// make_tcp_communicator (CPU processes over TCP: launcher tests, tiny CPU runs) and, when built with
// CUDA and NCCL, make_nccl_communicator (one process per GPU).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace seqmix::train::dist {

// A collective could not complete because another rank died, hung or failed (the message names it).
// A process that stops because of it exits with kPeerFailureExit (launcher.h), so that the launcher
// blames the rank that failed first, not the one that noticed.
class PeerFailure : public Error {
 public:
  using Error::Error;
};

class Work {
 public:
  virtual ~Work() = default;
  // Completes the collective (for CUDA: orders the caller's current stream after it). Rethrows a
  // failure of the collective.
  virtual void wait() = 0;
};
using WorkPtr = std::shared_ptr<Work>;

// A Work that is already complete.
class DoneWork : public Work {
 public:
  void wait() override {}
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world() const = 0;
  // The GPU index this rank uses on its node (from LOCAL_RANK); rank() when not given.
  virtual int local_rank() const { return rank(); }
  // Where the tensors of the collectives must live (cpu for the in-process backend, cuda:N for NCCL).
  virtual Device device() const = 0;
  virtual std::string backend() const = 0;
  // True when the ranks are threads of one process (the in-process test backend): process-wide
  // state (logging, the default RNG) is then shared between them.
  virtual bool shares_process() const { return false; }

  // t = sum over ranks of t (in place).
  virtual WorkPtr all_reduce_sum_async(Tensor& t) = 0;
  // in: world() * n elements; out: n elements = sum over ranks of chunk rank() of in.
  virtual WorkPtr reduce_scatter_sum_async(const Tensor& in, Tensor& out) = 0;
  // The same, divided by world(): the mean over ranks. The default sums, then scales in place when the
  // work is waited for; NCCL averages inside the collective (ncclAvg: no extra pass over the data).
  virtual WorkPtr all_reduce_mean_async(Tensor& t);
  virtual WorkPtr reduce_scatter_mean_async(const Tensor& in, Tensor& out);
  // in: n elements; out: world() * n elements, chunk r from rank r.
  virtual WorkPtr all_gather_async(const Tensor& in, Tensor& out) = 0;
  // t = root's t on every rank.
  virtual WorkPtr broadcast_async(Tensor& t, int root) = 0;
  // Returns when every rank has entered it (host-side; all queued collectives complete first).
  virtual void barrier() = 0;
  // Reports that this rank failed: peers blocked in (or later entering) a collective stop with an
  // error naming this rank and `why`.
  virtual void abort(const std::string& why) = 0;

  void all_reduce_sum(Tensor& t) { all_reduce_sum_async(t)->wait(); }
  void reduce_scatter_sum(const Tensor& in, Tensor& out) { reduce_scatter_sum_async(in, out)->wait(); }
  void all_gather(const Tensor& in, Tensor& out) { all_gather_async(in, out)->wait(); }
  void broadcast(Tensor& t, int root) { broadcast_async(t, root)->wait(); }
  // Host convenience: the sum of `v` over ranks (f64, through device()); synchronizes.
  double all_reduce_sum(double v);
  // The same for several values at once (one collective).
  std::vector<double> all_reduce_sum(const std::vector<double>& v);

  void set_timeout(double seconds) { timeout_s_ = seconds; }
  double timeout() const { return timeout_s_; }

 protected:
  double timeout_s_ = 600;
};

// ---- in-process backend (tests) ----
// One group shared by `world` threads; comm(r) is rank r's communicator (owned by the group, valid
// while the group lives). Each communicator runs its collectives on a worker thread of its own.
class InProcessGroup {
 public:
  explicit InProcessGroup(int world, double timeout_seconds = 60);
  ~InProcessGroup();
  InProcessGroup(const InProcessGroup&) = delete;
  InProcessGroup& operator=(const InProcessGroup&) = delete;
  Communicator& comm(int rank);
  int world() const;

  struct State;

 private:
  std::shared_ptr<State> state_;
  std::vector<std::unique_ptr<Communicator>> comms_;
};

// ---- TCP backend (multi-process on the CPU; train/distributed/tcp_comm.cpp) ----
// For `--gpus N --device cpu`: tests of the launcher and tiny CPU runs. Same rendezvous as NCCL.
struct DistEnv;
std::unique_ptr<Communicator> make_tcp_communicator(const DistEnv& env, double timeout_seconds);

// ---- NCCL backend (multi-process, one GPU per process) ----
// True when this seqmix was built with CUDA and NCCL.
bool nccl_available();

// Rank, world and rendezvous address from the environment: RANK/WORLD_SIZE/LOCAL_RANK (torchrun,
// `seqmix train --gpus N`) or SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID; MASTER_ADDR (default
// 127.0.0.1) and MASTER_PORT (default 29500; MASTER_PORT + 1 under torchrun, whose agent store holds
// MASTER_PORT; SEQMIX_RDZV_PORT overrides). world = 1 when none is set.
struct DistEnv {
  int rank = 0, world = 1, local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  bool from_env = false;  // some variable was set
};
DistEnv dist_env_from_environment();

// Rendezvous at env.master_addr:master_port (rank 0 serves), exchange of the NCCL unique id, then
// ncclCommInitRank on cuda:local_rank. Throws when NCCL is not built in. The communicator also keeps
// a heartbeat connection to rank 0, so that a rank that dies or hangs is named by the others.
std::unique_ptr<Communicator> make_nccl_communicator(const DistEnv& env, double timeout_seconds);

}  // namespace seqmix::train::dist
