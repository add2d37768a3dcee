// Token splits, the training loader (world-size-independent batches), a prefetch thread, and the exact
// evaluation iterator.
//
// Training: window w of a split of N tokens is tokens [w*T, w*T + T + 1) (T = seq_len), so there are
// W = floor((N - 1) / T) windows per epoch. Global sample g = step * B + row (B = global batch) is window
// perm(seed, epoch = g / W)(g % W), where perm is a keyed pseudo-random bijection of [0, W) (a Feistel
// network with cycle walking). So the global batch of a step is a pure function of (seed, step, B): any
// number of data-parallel ranks sees the same global batch, rank r of R taking rows [r*B/R, (r+1)*B/R).
// Resuming needs only seed and step (the epoch follows from them).
#pragma once
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "data/shard.h"

namespace seqmix::data {

inline constexpr int32_t kIgnoreIndex = -100;

// One or more shards read as a single token stream.
class TokenSplit {
 public:
  explicit TokenSplit(const std::vector<std::string>& shard_paths, bool verify_payload = true);
  uint64_t size() const { return total_; }
  int64_t vocab_size() const { return vocab_size_; }
  // Copies tokens [start, start + n) (may span shards) to out.
  void copy(uint64_t start, uint64_t n, int32_t* out) const;
  int32_t at(uint64_t i) const;

 private:
  std::vector<ShardReader> shards_;
  std::vector<uint64_t> offsets_;  // first token of each shard
  uint64_t total_ = 0;
  int64_t vocab_size_ = 0;
};

// A batch on the host: inputs and targets of `rows` windows, both [rows, seq_len] row-major, stored back to
// back in one contiguous int32 buffer (inputs first) so the trainer copies it to the device in one go.
struct HostBatch {
  int64_t step = 0;          // training step, or eval batch index
  int32_t rows = 0;          // rows held by this rank
  int32_t seq_len = 0;
  int64_t row_begin = 0;     // index of the first row within the global batch
  int64_t target_count = 0;  // targets that are not kIgnoreIndex
  std::vector<int32_t> buffer;

  int32_t* inputs() { return buffer.data(); }
  int32_t* targets() { return buffer.data() + static_cast<size_t>(rows) * seq_len; }
  const int32_t* inputs() const { return buffer.data(); }
  const int32_t* targets() const { return buffer.data() + static_cast<size_t>(rows) * seq_len; }
  size_t bytes() const { return buffer.size() * sizeof(int32_t); }
};

// Where training batches come from: the token-shard TrainLoader, or a synthetic task
// (data/task_source.h). fill() is a pure function of the step, so a Prefetcher can run it ahead on its
// own thread and a resumed run gets the same batches.
class BatchSource {
 public:
  virtual ~BatchSource() = default;
  // This rank's rows of the global batch of `step`.
  virtual void fill(int64_t step, HostBatch& out) const = 0;
  virtual int32_t rows_per_rank() const = 0;
};

struct TrainLoaderConfig {
  int32_t seq_len = 0;
  int32_t global_batch = 0;  // sequences per optimizer step over all ranks
  uint64_t seed = 0;
  int32_t rank = 0;
  int32_t world = 1;         // must divide global_batch
};

// A BatchSource whose global batch of a step (cfg.global_batch rows) is split over cfg.world data-parallel
// ranks: rank r of R takes rows [r*B/R, (r+1)*B/R), and row `row` of step s is global sample s * B + row.
class RankedBatchSource : public BatchSource {
 public:
  const TrainLoaderConfig& config() const { return cfg_; }
  int32_t rows_per_rank() const override { return cfg_.global_batch / cfg_.world; }
  // This rank's rows of `step`.
  HostBatch batch(int64_t step) const;

 protected:
  explicit RankedBatchSource(TrainLoaderConfig cfg) : cfg_(cfg) {}
  // Checks the global batch size and the data-parallel rank layout of the config.
  void check_rank_layout() const;
  // Sets out's step, rows, seq_len, row_begin and target_count for this rank's rows of `step` and sizes its
  // buffer; returns the global sample of its first row.
  uint64_t start_batch(int64_t step, int64_t target_count, HostBatch& out) const;
  TrainLoaderConfig cfg_;
};

// A 64-bit mixing function (the splitmix64 finalizer): the keys of the loaders' permutations.
uint64_t mix64(uint64_t x);

// A keyed pseudo-random permutation of [0, n).
class IndexPermutation {
 public:
  IndexPermutation(uint64_t n, uint64_t key);
  uint64_t operator()(uint64_t i) const;
  uint64_t size() const { return n_; }

 private:
  uint64_t round(uint64_t x, int r) const;
  uint64_t n_, key_;
  int half_bits_ = 0;
  uint64_t half_mask_ = 0;
};

class TrainLoader : public RankedBatchSource {
 public:
  TrainLoader(std::shared_ptr<const TokenSplit> split, TrainLoaderConfig cfg);
  uint64_t windows_per_epoch() const { return windows_; }
  // Start token of the window used by global sample g (= step * global_batch + row).
  uint64_t window_start(uint64_t global_sample) const;
  int64_t epoch_of_step(int64_t step) const;
  // This rank's rows of `step`.
  void fill(int64_t step, HostBatch& out) const override;

 private:
  std::shared_ptr<const TokenSplit> split_;
  uint64_t windows_ = 0;
};

// Produces the batches of steps start, start+1, ... on a background thread, `depth` ahead.
class Prefetcher {
 public:
  Prefetcher(std::shared_ptr<const BatchSource> loader, int64_t start_step, int depth = 2);
  ~Prefetcher();
  Prefetcher(const Prefetcher&) = delete;
  Prefetcher& operator=(const Prefetcher&) = delete;
  // The next step's batch; rethrows an error raised on the worker thread.
  HostBatch next();

 private:
  void run();
  std::shared_ptr<const BatchSource> loader_;
  int64_t next_step_;
  size_t depth_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<HostBatch> queue_;
  std::exception_ptr error_;
  bool stop_ = false;
  std::thread thread_;
};

// Evaluation over a split, once, in order: window k has inputs tokens [k*T, k*T + L) and targets
// [k*T + 1, k*T + L + 1), L = min(T, N - 1 - k*T). Every token but the first is a target exactly once;
// the last window is padded (input 0, target kIgnoreIndex). Global eval batch i holds windows
// [i*B, (i+1)*B); rank r of R takes rows [r*n/R, (r+1)*n/R) of its n windows (possibly none).
class EvalIterator {
 public:
  EvalIterator(std::shared_ptr<const TokenSplit> split, int32_t seq_len, int32_t batch_rows, int32_t rank = 0,
               int32_t world = 1);
  int64_t num_windows() const { return windows_; }
  int64_t num_batches() const { return (windows_ + batch_rows_ - 1) / batch_rows_; }
  uint64_t total_targets() const { return split_->size() > 0 ? split_->size() - 1 : 0; }
  // Fills this rank's part of the next batch; false after the last one.
  bool next(HostBatch& out);
  void reset() { batch_ = 0; }

 private:
  std::shared_ptr<const TokenSplit> split_;
  int32_t seq_len_, batch_rows_, rank_, world_;
  int64_t windows_ = 0;
  int64_t batch_ = 0;
};

}  // namespace seqmix::data
