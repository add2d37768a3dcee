// The NCCL communicator: one process per GPU. Collectives run on a communication stream of their own:
// it first waits (GPU-side event) for what the caller's stream has queued, and Work::wait makes the
// caller's stream wait for the collective's completion event, so backward keeps running while buckets
// are reduced. Built only with CUDA and NCCL (see the guard below); otherwise the entry points say so.
//
// Failure handling: a watchdog thread checks the completion events of the pending collectives; one
// that is not done after the timeout (train.dist_timeout) stops the process with a message naming the
// ranks that never reached it, from the progress table of the rendezvous monitor (each rank's count
// of issued collectives). A rank whose process dies is named at once through its dropped rendezvous
// connection. Stopping is an exit with status 3 (kPeerFailureExit): NCCL kernels waiting for a dead
// peer never return, so the process cannot unwind; checkpoints already written are complete (atomic
// renames) and an interrupted one is a .tmp directory that readers ignore.
#include "train/distributed/communicator.h"

#if __has_include(<nccl.h>) && defined(SEQMIX_WITH_CUDA) && defined(SEQMIX_WITH_NCCL)
#define SEQMIX_NCCL_ENABLED 1
#endif

#ifdef SEQMIX_NCCL_ENABLED
#include <cuda_runtime.h>
#include <nccl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <mutex>
#include <sstream>
#include <thread>

#include "core/cuda/cuda_check.h"
#include "core/cuda/runtime.h"
#include "train/distributed/launcher.h"
#include "train/distributed/rendezvous.h"
#endif

namespace seqmix::train::dist {

#ifndef SEQMIX_NCCL_ENABLED
bool nccl_available() { return false; }
std::unique_ptr<Communicator> make_nccl_communicator(const DistEnv& env, double) {
  SEQMIX_FAIL("multi-GPU training needs NCCL, but this seqmix was built without it (rank ", env.rank, " of ", env.world,
              "): build with CUDA, NCCL installed and SEQMIX_WITH_NCCL defined");
}
#else

#define SEQMIX_NCCL_CHECK(call)                                                                    \
  do {                                                                                             \
    ncclResult_t seqmix_nr_ = (call);                                                              \
    if (seqmix_nr_ != ncclSuccess) SEQMIX_FAIL("NCCL error in ", #call, ": ", ncclGetErrorString(seqmix_nr_)); \
  } while (0)

bool nccl_available() { return true; }

namespace {



ncclDataType_t nccl_dtype(DType t) {
  switch (t) {
    case DType::F32: return ncclFloat32;
    case DType::F64: return ncclFloat64;
    case DType::BF16: return ncclBfloat16;
    case DType::F16: return ncclFloat16;
    case DType::I64: return ncclInt64;
    case DType::I32: return ncclInt32;
    case DType::U8: return ncclUint8;
  }
  SEQMIX_FAIL("NCCL: unsupported dtype");
}

struct Pending {
  int64_t seq;
  const char* op;
  cudaEvent_t done;
  std::chrono::steady_clock::time_point issued;
};

class NcclWork : public Work {
 public:
  explicit NcclWork(cudaEvent_t done) : done_(done) {}
  ~NcclWork() override { cudaEventDestroy(done_); }
  void wait() override { SEQMIX_CUDA_CHECK(cudaStreamWaitEvent(cuda::current_stream(), done_, 0)); }

 private:
  cudaEvent_t done_;
};

class NcclComm : public Communicator {
 public:
  NcclComm(const DistEnv& env, double timeout_s) : env_(env) {
    timeout_s_ = timeout_s;
    // LOCAL_RANK picks the GPU; where the launcher shows each process only its own GPUs (SLURM
    // --gpus-per-task, CUDA_VISIBLE_DEVICES per rank) the index wraps around the visible ones.
    int visible = 0;
    SEQMIX_CHECK(cudaGetDeviceCount(&visible) == cudaSuccess && visible > 0, "rank ", env.rank, ": no CUDA device is visible for NCCL");
    dev_ = env.local_rank % visible;
    cuda::select_device(dev_);
    // Start-up may be skewed (launchers, loading): at least kStartupTimeout to meet.
    rdv_ = std::make_unique<Rendezvous>(env.rank, env.world, env.master_addr, env.master_port, std::max(timeout_s, kStartupTimeout));
    ncclUniqueId id{};
    std::string payload;
    if (env.rank == 0) {
      SEQMIX_NCCL_CHECK(ncclGetUniqueId(&id));
      payload.assign(reinterpret_cast<const char*>(&id), sizeof id);
    }
    payload = rdv_->share(payload);
    SEQMIX_CHECK(payload.size() == sizeof id, "rendezvous: the NCCL unique id has ", payload.size(), " bytes, expected ", sizeof id);
    std::memcpy(&id, payload.data(), sizeof id);
    // After share() (the monitor owns the connections from now on), before the init that a dead peer would block.
    rdv_->start_monitor([this] { return issued_.load(); }, [this](const std::string& m) { die(m); });
    SEQMIX_NCCL_CHECK(ncclCommInitRank(&comm_, env.world, id, env.rank));
    SEQMIX_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    watchdog_ = std::thread([this] { watch(); });
  }
  ~NcclComm() override {
    stop_ = true;
    if (watchdog_.joinable()) watchdog_.join();
    if (stream_) cudaStreamSynchronize(stream_);
    rdv_->goodbye();
    if (comm_) ncclCommDestroy(comm_);
    if (stream_) cudaStreamDestroy(stream_);
  }

  int rank() const override { return env_.rank; }
  int world() const override { return env_.world; }
  int local_rank() const override { return dev_; }
  Device device() const override { return Device::cuda(dev_); }
  std::string backend() const override { return "nccl"; }

  WorkPtr all_reduce_sum_async(Tensor& t) override { return all_reduce(t, ncclSum); }
  WorkPtr all_reduce_mean_async(Tensor& t) override { return all_reduce(t, ncclAvg); }
  WorkPtr reduce_scatter_sum_async(const Tensor& in, Tensor& out) override { return reduce_scatter(in, out, ncclSum); }
  WorkPtr reduce_scatter_mean_async(const Tensor& in, Tensor& out) override { return reduce_scatter(in, out, ncclAvg); }
  WorkPtr all_gather_async(const Tensor& in, Tensor& out) override {
    check(in, "all_gather");
    check(out, "all_gather");
    SEQMIX_CHECK(in.dtype() == out.dtype() && out.numel() == in.numel() * world(), "all_gather: input of ", in.numel(),
                 " elements for an output of ", out.numel(), " on ", world(), " ranks");
    return launch("all_gather", [&](cudaStream_t s) {
      SEQMIX_NCCL_CHECK(ncclAllGather(in.data_ptr(), out.data_ptr(), size_t(in.numel()), nccl_dtype(in.dtype()), comm_, s));
    });
  }
  WorkPtr broadcast_async(Tensor& t, int root) override {
    check(t, "broadcast");
    return launch("broadcast", [&](cudaStream_t s) {
      SEQMIX_NCCL_CHECK(ncclBroadcast(t.data_ptr(), t.data_ptr(), size_t(t.numel()), nccl_dtype(t.dtype()), root, comm_, s));
    });
  }
  void barrier() override {
    if (!barrier_buf_.defined()) barrier_buf_ = Tensor::empty({1}, DType::F32, device());
    barrier_buf_.zero_();
    all_reduce_sum_async(barrier_buf_)->wait();
    SEQMIX_CUDA_CHECK(cudaStreamSynchronize(stream_));
    cuda::synchronize();
  }
  void abort(const std::string& why) override { rdv_->report_failure(why); }

 private:
  void check(const Tensor& t, const char* what) {
    SEQMIX_CHECK(t.defined() && t.is_contiguous() && t.device() == device(), "NCCL ", what, ": tensors must be contiguous on ",
                 device().str());
  }
  WorkPtr all_reduce(Tensor& t, ncclRedOp_t op) {
    check(t, "all_reduce");
    return launch("all_reduce", [&](cudaStream_t s) {
      SEQMIX_NCCL_CHECK(ncclAllReduce(t.data_ptr(), t.data_ptr(), size_t(t.numel()), nccl_dtype(t.dtype()), op, comm_, s));
    });
  }
  WorkPtr reduce_scatter(const Tensor& in, Tensor& out, ncclRedOp_t op) {
    check(in, "reduce_scatter");
    check(out, "reduce_scatter");
    SEQMIX_CHECK(in.dtype() == out.dtype() && in.numel() == out.numel() * world(), "reduce_scatter: input of ", in.numel(),
                 " elements for an output of ", out.numel(), " on ", world(), " ranks");
    return launch("reduce_scatter", [&](cudaStream_t s) {
      SEQMIX_NCCL_CHECK(ncclReduceScatter(in.data_ptr(), out.data_ptr(), size_t(out.numel()), nccl_dtype(in.dtype()), op, comm_, s));
    });
  }
  template <typename F>
  WorkPtr launch(const char* op, F&& issue) {
    cuda::select_device(dev_);
    cudaEvent_t ready, done;
    SEQMIX_CUDA_CHECK(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
    SEQMIX_CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
    SEQMIX_CUDA_CHECK(cudaEventRecord(ready, cuda::current_stream()));
    SEQMIX_CUDA_CHECK(cudaStreamWaitEvent(stream_, ready, 0));
    cudaEventDestroy(ready);
    int64_t seq = ++issued_;
    issue(stream_);
    SEQMIX_CUDA_CHECK(cudaEventRecord(done, stream_));
    cudaEvent_t watch_ev;
    SEQMIX_CUDA_CHECK(cudaEventCreateWithFlags(&watch_ev, cudaEventDisableTiming));
    SEQMIX_CUDA_CHECK(cudaEventRecord(watch_ev, stream_));
    {
      std::lock_guard<std::mutex> lk(mu_);
      pending_.push_back({seq, op, watch_ev, std::chrono::steady_clock::now()});
    }
    return std::make_shared<NcclWork>(done);
  }

  void watch() {
    cudaSetDevice(dev_);
    while (!stop_) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      std::lock_guard<std::mutex> lk(mu_);
      while (!pending_.empty()) {
        Pending& p = pending_.front();
        cudaError_t q = cudaEventQuery(p.done);
        if (q == cudaSuccess) {
          cudaEventDestroy(p.done);
          pending_.pop_front();
          continue;
        }
        if (q != cudaErrorNotReady) die(std::string("CUDA error while waiting for ") + p.op + ": " + cudaGetErrorString(q));
        double age = std::chrono::duration<double>(std::chrono::steady_clock::now() - p.issued).count();
        if (age > timeout_s_) die(timeout_message(p, age));
        break;
      }
    }
  }

  std::string timeout_message(const Pending& p, double age) {
    std::ostringstream os;
    os << p.op << " #" << p.seq << " did not complete within " << int(age) << " s (train.dist_timeout = " << timeout_s_ << "); ";
    auto table = rdv_->progress_table();
    int behind = 0;
    std::ostringstream who;
    for (int r = 0; r < world(); ++r) {
      if (r == rank() || table[size_t(r)].progress >= p.seq) continue;
      who << (behind++ ? ", " : "") << "rank " << r << " (issued " << table[size_t(r)].progress << " collectives, heard from "
          << int(table[size_t(r)].silent_s) << " s ago)";
    }
    if (behind) os << who.str() << (behind > 1 ? " never reached it: they hang or died" : " never reached it: it hangs or died");
    else os << "every rank reached it: NCCL or the interconnect is stuck";
    return os.str();
  }

  [[noreturn]] void die(const std::string& msg) {
    std::fprintf(stderr, "\nseqmix train: rank %d: stopping: %s\n", env_.rank, msg.c_str());
    std::fflush(stderr);
    std::fflush(stdout);
    ::_exit(kPeerFailureExit);
  }

  DistEnv env_;
  int dev_ = 0;
  std::unique_ptr<Rendezvous> rdv_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  std::atomic<int64_t> issued_{0};
  std::mutex mu_;
  std::deque<Pending> pending_;
  std::atomic<bool> stop_{false};
  std::thread watchdog_;
  Tensor barrier_buf_;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(const DistEnv& env, double timeout_seconds) {
  return std::make_unique<NcclComm>(env, timeout_seconds);
}
#endif

}  // namespace seqmix::train::dist
