// Multi-process data parallelism on the CPU over TCP (a star through rank 0): `seqmix train --gpus N
// --device cpu` runs N CPU processes. Meant for testing the launcher, the rendezvous and the
// multi-process trainer without GPUs, and for tiny CPU runs; NCCL is the engine on GPUs.
//
// Every collective is synchronous: clients send their buffer to rank 0, which sums in rank order
// 0..R-1 (the in-process backend's order, so both give identical numbers) and sends the result back.
// Each message starts with the collective's sequence number, so ranks that issue different
// collectives are caught. Failure: rank 0 names a rank that does not deliver its part within the
// timeout (and reports it to the others); the rendezvous monitor names a rank whose process died.
#include <poll.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>

#include "train/distributed/communicator.h"
#include "train/distributed/launcher.h"
#include "train/distributed/rendezvous.h"

namespace seqmix::train::dist {

namespace {

class TcpComm : public Communicator {
 public:
  TcpComm(const DistEnv& env, double timeout_s) : env_(env), fds_(size_t(env.world), -1) {
    timeout_s_ = timeout_s;
    // Start-up may be skewed (launchers, loading): at least kStartupTimeout to meet.
    rdv_ = std::make_unique<Rendezvous>(env.rank, env.world, env.master_addr, env.master_port, std::max(timeout_s, kStartupTimeout));
    int listen_fd = -1, port = 0;
    if (env.rank == 0) listen_fd = net::listen_on(0, env.world + 8, &port);
    port = std::stoi(rdv_->share(std::to_string(port)));
    rdv_->start_monitor([this] { return issued_.load(); }, [this](const std::string& m) { die(m); });  // after share()
    if (env.rank == 0) {
      for (int joined = 1; joined < env.world; ++joined) {
        pollfd p{listen_fd, POLLIN, 0};
        SEQMIX_CHECK(::poll(&p, 1, int(timeout_s * 1000)) > 0, "tcp backend: a rank did not connect within ", timeout_s, " s");
        int fd = ::accept(listen_fd, nullptr, nullptr);
        int one = 1;  // small messages go out at once (no Nagle delay)
        if (fd >= 0) ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        int32_t r = -1;
        SEQMIX_CHECK(fd >= 0 && net::recv_all(fd, &r, sizeof r, timeout_s) && r > 0 && r < env.world && fds_[size_t(r)] < 0,
                     "tcp backend: a bad connection to rank 0");
        fds_[size_t(r)] = fd;
      }
      ::close(listen_fd);
    } else {
      int fd = net::connect_to(env.master_addr, port, timeout_s, "tcp backend: rank " + std::to_string(env.rank));
      int32_t r = env.rank;
      SEQMIX_CHECK(net::send_all(fd, &r, sizeof r, timeout_s), "tcp backend: rank ", env.rank, " lost rank 0");
      fds_[0] = fd;
    }
  }
  ~TcpComm() override {
    rdv_->goodbye();
    rdv_.reset();
    for (int fd : fds_)
      if (fd >= 0) ::close(fd);
  }

  int rank() const override { return env_.rank; }
  int world() const override { return env_.world; }
  int local_rank() const override { return env_.local_rank; }
  Device device() const override { return Device::cpu(); }
  std::string backend() const override { return "tcp"; }

  WorkPtr all_reduce_sum_async(Tensor& t) override {
    check(t, "all_reduce", true);
    sum_to_all(t.data_ptr(), t.numel(), t.dtype(), "all_reduce");
    return std::make_shared<DoneWork>();
  }
  WorkPtr reduce_scatter_sum_async(const Tensor& in, Tensor& out) override {
    check(in, "reduce_scatter", true);
    check(out, "reduce_scatter", true);
    SEQMIX_CHECK(in.dtype() == out.dtype() && in.numel() == out.numel() * world(), "reduce_scatter: input of ", in.numel(),
                 " elements for an output of ", out.numel(), " on ", world(), " ranks");
    std::vector<char> tmp(in.nbytes());
    std::memcpy(tmp.data(), in.data_ptr(), tmp.size());
    sum_to_all(tmp.data(), in.numel(), in.dtype(), "reduce_scatter");
    std::memcpy(out.data_ptr(), tmp.data() + size_t(rank()) * out.nbytes(), out.nbytes());
    return std::make_shared<DoneWork>();
  }
  WorkPtr all_gather_async(const Tensor& in, Tensor& out) override {
    check(in, "all_gather", false);
    check(out, "all_gather", false);
    SEQMIX_CHECK(in.dtype() == out.dtype() && out.numel() == in.numel() * world(), "all_gather: input of ", in.numel(),
                 " elements for an output of ", out.numel(), " on ", world(), " ranks");
    const size_t n = in.nbytes();
    char* o = static_cast<char*>(out.data_ptr());
    const int64_t seq = ++issued_;
    if (rank() == 0) {
      std::memcpy(o, in.data_ptr(), n);
      for (int r = 1; r < world(); ++r) recv_from(r, seq, o + size_t(r) * n, n, "all_gather");
      for (int r = 1; r < world(); ++r) send_to(r, seq, o, n * size_t(world()), "all_gather");
    } else {
      send_to(0, seq, in.data_ptr(), n, "all_gather");
      recv_from(0, seq, o, n * size_t(world()), "all_gather");
    }
    return std::make_shared<DoneWork>();
  }
  WorkPtr broadcast_async(Tensor& t, int root) override {
    check(t, "broadcast", false);
    SEQMIX_CHECK(root >= 0 && root < world(), "broadcast: root ", root, " out of range");
    const size_t n = t.nbytes();
    const int64_t seq = ++issued_;
    if (rank() == 0) {
      if (root != 0) recv_from(root, seq, t.data_ptr(), n, "broadcast");
      for (int r = 1; r < world(); ++r)
        if (r != root) send_to(r, seq, t.data_ptr(), n, "broadcast");
    } else if (rank() == root) {
      send_to(0, seq, t.data_ptr(), n, "broadcast");
    } else {
      recv_from(0, seq, t.data_ptr(), n, "broadcast");
    }
    return std::make_shared<DoneWork>();
  }
  void barrier() override {
    float x = 0;
    sum_to_all(&x, 1, DType::F32, "barrier");
  }
  void abort(const std::string& why) override { rdv_->report_failure(why); }

 private:
  static void check(const Tensor& t, const char* what, bool sum) {
    SEQMIX_CHECK(t.defined() && t.is_cpu() && t.is_contiguous(), "tcp ", what, ": tensors must be contiguous CPU tensors");
    if (sum)
      SEQMIX_CHECK(t.dtype() == DType::F32 || t.dtype() == DType::F64 || t.dtype() == DType::BF16, "tcp ", what,
                   ": only f32, f64 and bf16 sums");
  }

  void sum_to_all(void* data, int64_t n, DType dt, const char* what) {
    const size_t bytes = size_t(n) * dtype_size(dt);
    const int64_t seq = ++issued_;
    if (rank() == 0) {
      std::vector<char> part(bytes);
      for (int r = 1; r < world(); ++r) {
        recv_from(r, seq, part.data(), bytes, what);
        if (dt == DType::F32) add(static_cast<float*>(data), reinterpret_cast<const float*>(part.data()), n);
        else if (dt == DType::BF16) add_bf16(static_cast<bf16*>(data), reinterpret_cast<const bf16*>(part.data()), n);
        else add(static_cast<double*>(data), reinterpret_cast<const double*>(part.data()), n);
      }
      for (int r = 1; r < world(); ++r) send_to(r, seq, data, bytes, what);
    } else {
      send_to(0, seq, data, bytes, what);
      recv_from(0, seq, data, bytes, what);
    }
  }
  template <typename T>
  static void add(T* acc, const T* x, int64_t n) {
    for (int64_t i = 0; i < n; ++i) acc[i] += x[i];
  }
  static void add_bf16(bf16* acc, const bf16* x, int64_t n) {  // rounded to bf16 after each rank, as a ring does
    for (int64_t i = 0; i < n; ++i) acc[i] = bf16(float(acc[i]) + float(x[i]));
  }

  void send_to(int peer, int64_t seq, const void* data, size_t n, const char* what) {
    if (!net::send_all(fds_[size_t(peer)], &seq, sizeof seq, timeout_s_) || !net::send_all(fds_[size_t(peer)], data, n, timeout_s_))
      lost(peer, what, seq);
  }
  void recv_from(int peer, int64_t seq, void* data, size_t n, const char* what) {
    // Clients give rank 0 a little longer, so that rank 0 (which knows who is missing) speaks first.
    double t = rank() == 0 ? timeout_s_ : timeout_s_ * 1.2 + 2;
    int64_t got = -1;
    if (!net::recv_all(fds_[size_t(peer)], &got, sizeof got, t)) lost(peer, what, seq);
    if (got != seq)
      throw PeerFailure(detail::concat("rank ", peer, " is out of step: it sent collective #", got, " while rank ", rank(), " is in ",
                                       what, " #", seq, " (the ranks issue different collectives)"));
    if (!net::recv_all(fds_[size_t(peer)], data, n, t)) lost(peer, what, seq);
  }
  [[noreturn]] void lost(int peer, const char* what, int64_t seq) {
    throw PeerFailure(detail::concat("rank ", peer, " did not take part in ", what, " #", seq, " within ", timeout_s_,
                                     " s (train.dist_timeout): it died or hangs"));
  }
  [[noreturn]] void die(const std::string& msg) {
    std::fprintf(stderr, "\nseqmix train: rank %d: stopping: %s\n", env_.rank, msg.c_str());
    std::fflush(stderr);
    std::fflush(stdout);
    ::_exit(kPeerFailureExit);
  }

  DistEnv env_;
  std::unique_ptr<Rendezvous> rdv_;
  std::vector<int> fds_;
  std::atomic<int64_t> issued_{0};
};

}  // namespace

std::unique_ptr<Communicator> make_tcp_communicator(const DistEnv& env, double timeout_seconds) {
  return std::make_unique<TcpComm>(env, timeout_seconds);
}

}  // namespace seqmix::train::dist
