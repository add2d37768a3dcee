// The in-process backend: ranks are threads of one process and exchange data through shared memory.
// Used by the tests (no GPU, no network) to exercise bucketing, reductions, ZeRO-1 sharding and
// checkpoint resharding exactly as the NCCL path runs them.
//
// Every collective is two phases of a generation-counted barrier: phase 1 publishes each rank's buffer
// pointer, every rank then reads what it needs from the others (sums in rank order 0..R-1, so every
// rank computes bit-identical results); phase 2 makes sure nobody still reads a buffer before its
// owner returns (and may reuse it). A barrier that does not fill within the timeout names the ranks
// that never arrived; a rank that called abort() is named by every rank waiting then or later.
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <mutex>
#include <sstream>
#include <thread>

#include "train/distributed/communicator.h"

namespace seqmix::train::dist {

struct InProcessGroup::State {
  explicit State(int w, double t) : world(w), timeout(t), ptrs(w), here(w, false), whats(w), published(w) {}
  int world;
  double timeout;
  std::mutex mu;
  std::condition_variable cv;
  uint64_t generation = 0;
  int count = 0;
  std::vector<const void*> ptrs;
  std::vector<bool> here;
  std::vector<const char*> whats;      // the collective each rank entered (they must agree)
  std::vector<const void*> published;  // the pointers of the last completed phase
  std::string failure;                 // non-empty once a rank failed or a barrier timed out

  // Phase barrier: returns every rank's pointer for this phase.
  std::vector<const void*> exchange(int rank, const void* p, const char* what, double timeout_s) {
    std::unique_lock<std::mutex> lk(mu);
    if (!failure.empty()) throw PeerFailure("rank " + std::to_string(rank) + ": " + what + " abandoned: " + failure);
    uint64_t g = generation;
    ptrs[rank] = p;
    here[rank] = true;
    whats[rank] = what;
    if (++count == world) {
      for (int r = 1; r < world; ++r)
        if (std::strcmp(whats[r], whats[0]) != 0 && failure.empty())
          failure = "the ranks issued different collectives: rank 0 " + std::string(whats[0]) + ", rank " + std::to_string(r) + " " +
                    whats[r];
      if (!failure.empty()) {
        cv.notify_all();
        throw PeerFailure("rank " + std::to_string(rank) + ": " + failure);
      }
      published = ptrs;
      count = 0;
      here.assign(world, false);
      ++generation;
      cv.notify_all();
      return published;
    }
    auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    bool ok = cv.wait_until(lk, deadline, [&] { return generation != g || !failure.empty(); });
    if (generation != g) return published;
    if (ok) throw PeerFailure("rank " + std::to_string(rank) + ": " + what + " abandoned: " + failure);
    std::ostringstream missing;
    int n = 0;
    for (int r = 0; r < world; ++r)
      if (!here[r]) missing << (n++ ? ", " : "") << r;
    std::ostringstream msg;
    msg << "rank" << (n > 1 ? "s " : " ") << missing.str() << " did not join " << what << " within " << timeout_s
        << " s (train.dist_timeout): dead or hung";
    failure = msg.str();
    cv.notify_all();
    throw PeerFailure("rank " + std::to_string(rank) + ": " + failure);
  }

  void fail(int rank, const std::string& why) {
    std::lock_guard<std::mutex> lk(mu);
    if (failure.empty()) failure = "rank " + std::to_string(rank) + " failed: " + why;
    cv.notify_all();
  }
};

namespace {

class InProcessWork : public Work {
 public:
  void wait() override {
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait(lk, [&] { return done_; });
    if (error_) std::rethrow_exception(error_);
  }
  void finish(std::exception_ptr e) {
    std::lock_guard<std::mutex> lk(mu_);
    error_ = e;
    done_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::exception_ptr error_;
};

void check_tensor(const Tensor& t, const char* what, bool sum) {
  SEQMIX_CHECK(t.defined() && t.is_cpu() && t.is_contiguous(), "in-process ", what, ": tensors must be contiguous CPU tensors");
  if (sum)
    SEQMIX_CHECK(t.dtype() == DType::F32 || t.dtype() == DType::F64 || t.dtype() == DType::BF16, "in-process ", what,
                 ": only f32, f64 and bf16 sums, got ", dtype_name(t.dtype()));
}

// Sums in rank order in the accumulator type A, stored as T (bf16: f32 accumulation, one rounding).
template <typename T, typename A = T>
void sum_into(T* out, const std::vector<const void*>& srcs, int64_t begin, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    A acc = A(static_cast<const T*>(srcs[0])[begin + i]);
    for (size_t r = 1; r < srcs.size(); ++r) acc += A(static_cast<const T*>(srcs[r])[begin + i]);
    out[i] = T(acc);
  }
}

void sum_dispatch(DType dt, void* out, const std::vector<const void*>& srcs, int64_t begin, int64_t n) {
  if (dt == DType::F32) sum_into(static_cast<float*>(out), srcs, begin, n);
  else if (dt == DType::BF16) sum_into<bf16, float>(static_cast<bf16*>(out), srcs, begin, n);
  else sum_into(static_cast<double*>(out), srcs, begin, n);
}

class InProcessComm : public Communicator {
 public:
  InProcessComm(std::shared_ptr<InProcessGroup::State> st, int rank) : st_(std::move(st)), rank_(rank) {
    timeout_s_ = st_->timeout;
    worker_ = std::thread([this] { loop(); });
  }
  ~InProcessComm() override {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
      cv_.notify_all();
    }
    worker_.join();
  }
  int rank() const override { return rank_; }
  int world() const override { return st_->world; }
  Device device() const override { return Device::cpu(); }
  std::string backend() const override { return "inprocess"; }
  bool shares_process() const override { return true; }

  WorkPtr all_reduce_sum_async(Tensor& t) override {
    check_tensor(t, "all_reduce", true);
    Tensor x = t;
    return enqueue([this, x] {
      auto srcs = st_->exchange(rank_, x.data_ptr(), "all_reduce", timeout_s_);
      std::vector<char> tmp(x.nbytes());
      sum_dispatch(x.dtype(), tmp.data(), srcs, 0, x.numel());
      st_->exchange(rank_, nullptr, "all_reduce", timeout_s_);
      std::memcpy(x.data_ptr(), tmp.data(), tmp.size());
    });
  }
  WorkPtr reduce_scatter_sum_async(const Tensor& in, Tensor& out) override {
    check_tensor(in, "reduce_scatter", true);
    check_tensor(out, "reduce_scatter", true);
    SEQMIX_CHECK(in.dtype() == out.dtype() && in.numel() == out.numel() * world(), "reduce_scatter: input of ", in.numel(),
                 " elements for an output of ", out.numel(), " on ", world(), " ranks");
    Tensor a = in, b = out;
    return enqueue([this, a, b] {
      auto srcs = st_->exchange(rank_, a.data_ptr(), "reduce_scatter", timeout_s_);
      sum_dispatch(a.dtype(), b.data_ptr(), srcs, int64_t(rank_) * b.numel(), b.numel());
      st_->exchange(rank_, nullptr, "reduce_scatter", timeout_s_);
    });
  }
  WorkPtr all_gather_async(const Tensor& in, Tensor& out) override {
    check_tensor(in, "all_gather", false);
    check_tensor(out, "all_gather", false);
    SEQMIX_CHECK(in.dtype() == out.dtype() && out.numel() == in.numel() * world(), "all_gather: input of ", in.numel(),
                 " elements for an output of ", out.numel(), " on ", world(), " ranks");
    Tensor a = in, b = out;
    return enqueue([this, a, b] {
      auto srcs = st_->exchange(rank_, a.data_ptr(), "all_gather", timeout_s_);
      size_t bytes = a.nbytes();
      for (int r = 0; r < world(); ++r) std::memcpy(static_cast<char*>(b.data_ptr()) + r * bytes, srcs[r], bytes);
      st_->exchange(rank_, nullptr, "all_gather", timeout_s_);
    });
  }
  WorkPtr broadcast_async(Tensor& t, int root) override {
    check_tensor(t, "broadcast", false);
    SEQMIX_CHECK(root >= 0 && root < world(), "broadcast: root ", root, " out of range");
    Tensor x = t;
    return enqueue([this, x, root] {
      auto srcs = st_->exchange(rank_, x.data_ptr(), "broadcast", timeout_s_);
      if (rank_ != root) std::memcpy(x.data_ptr(), srcs[root], x.nbytes());
      st_->exchange(rank_, nullptr, "broadcast", timeout_s_);
    });
  }
  void barrier() override {
    enqueue([this] { st_->exchange(rank_, nullptr, "barrier", timeout_s_); })->wait();
  }
  void abort(const std::string& why) override { st_->fail(rank_, why); }

 private:
  WorkPtr enqueue(std::function<void()> fn) {
    auto w = std::make_shared<InProcessWork>();
    std::lock_guard<std::mutex> lk(mu_);
    queue_.emplace_back(std::move(fn), w);
    cv_.notify_all();
    return w;
  }
  void loop() {
    for (;;) {
      std::pair<std::function<void()>, std::shared_ptr<InProcessWork>> job;
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return stop_ || !queue_.empty(); });
        if (queue_.empty()) return;
        job = std::move(queue_.front());
        queue_.pop_front();
      }
      std::exception_ptr err;
      try {
        job.first();
      } catch (...) {
        err = std::current_exception();
      }
      job.second->finish(err);
    }
  }

  std::shared_ptr<InProcessGroup::State> st_;
  int rank_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<std::function<void()>, std::shared_ptr<InProcessWork>>> queue_;
  bool stop_ = false;
  std::thread worker_;
};

}  // namespace

InProcessGroup::InProcessGroup(int world, double timeout_seconds) {
  SEQMIX_CHECK(world >= 1, "InProcessGroup: world must be at least 1, got ", world);
  state_ = std::make_shared<State>(world, timeout_seconds);
  for (int r = 0; r < world; ++r) comms_.push_back(std::make_unique<InProcessComm>(state_, r));
}

InProcessGroup::~InProcessGroup() {
  // A worker blocked in a barrier whose peers are gone must not hang the destructor.
  state_->fail(-1, "the group was destroyed");
  comms_.clear();
}

Communicator& InProcessGroup::comm(int rank) {
  SEQMIX_CHECK(rank >= 0 && rank < int(comms_.size()), "InProcessGroup::comm: rank ", rank, " out of range");
  return *comms_[size_t(rank)];
}

int InProcessGroup::world() const { return state_->world; }

}  // namespace seqmix::train::dist
