#include "data/loader.h"

#include <algorithm>

#include "core/error.h"

namespace seqmix::data {

// ---- TokenSplit ----
TokenSplit::TokenSplit(const std::vector<std::string>& shard_paths, bool verify_payload) {
  SEQMIX_CHECK(!shard_paths.empty(), "a token split needs at least one shard");
  for (const auto& p : shard_paths) {
    shards_.emplace_back(p, verify_payload);
    const auto& info = shards_.back().info();
    if (vocab_size_ == 0) vocab_size_ = info.vocab_size;
    SEQMIX_CHECK(info.vocab_size == vocab_size_, "shard ", p, " has vocabulary size ", info.vocab_size,
                 " but the other shards of its split have ", vocab_size_,
                 "; the shards come from different tokenizers, re-run `seqmix prepare`");
    offsets_.push_back(total_);
    total_ += info.count;
  }
}

void TokenSplit::copy(uint64_t start, uint64_t n, int32_t* out) const {
  SEQMIX_CHECK(start <= total_ && n <= total_ - start, "TokenSplit::copy: range [", start, ", ", start + n,
               ") outside the split (", total_, " tokens)");
  size_t s = std::upper_bound(offsets_.begin(), offsets_.end(), start) - offsets_.begin() - 1;
  while (n > 0) {
    const uint64_t local = start - offsets_[s];
    const uint64_t take = std::min<uint64_t>(n, shards_[s].size() - local);
    shards_[s].copy(local, take, out);
    out += take;
    start += take;
    n -= take;
    ++s;
  }
}

int32_t TokenSplit::at(uint64_t i) const {
  int32_t v;
  copy(i, 1, &v);
  return v;
}

// ---- RankedBatchSource ----
void RankedBatchSource::check_rank_layout() const {
  SEQMIX_CHECK(cfg_.global_batch >= 1, "the global batch size must be >= 1, got ", cfg_.global_batch);
  SEQMIX_CHECK(cfg_.world >= 1 && cfg_.rank >= 0 && cfg_.rank < cfg_.world, "bad data-parallel rank ", cfg_.rank,
               " of world size ", cfg_.world);
  SEQMIX_CHECK(cfg_.global_batch % cfg_.world == 0, "the global batch size ", cfg_.global_batch,
               " is not divisible by the number of data-parallel ranks ", cfg_.world,
               "; choose a batch size that is a multiple of the GPU count");
}

uint64_t RankedBatchSource::start_batch(int64_t step, int64_t target_count, HostBatch& out) const {
  const int32_t T = cfg_.seq_len, rows = rows_per_rank();
  out.step = step;
  out.rows = rows;
  out.seq_len = T;
  out.row_begin = static_cast<int64_t>(cfg_.rank) * rows;
  out.target_count = target_count;
  out.buffer.resize(2 * static_cast<size_t>(rows) * T);
  return static_cast<uint64_t>(step) * static_cast<uint64_t>(cfg_.global_batch) + static_cast<uint64_t>(out.row_begin);
}

HostBatch RankedBatchSource::batch(int64_t step) const {
  HostBatch b;
  fill(step, b);
  return b;
}

uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBull;
  x ^= x >> 31;
  return x;
}

// ---- IndexPermutation: balanced Feistel network over 2*h bits, cycle-walking into [0, n) ----
IndexPermutation::IndexPermutation(uint64_t n, uint64_t key) : n_(n), key_(mix64(key ^ 0x5EC3A1D0F00Dull)) {
  int bits = 0;
  while (bits < 64 && (uint64_t(1) << bits) < n) ++bits;
  if (bits % 2) ++bits;
  if (bits < 2) bits = 2;
  half_bits_ = bits / 2;
  half_mask_ = (uint64_t(1) << half_bits_) - 1;
}

uint64_t IndexPermutation::round(uint64_t x, int r) const {
  return mix64(x ^ mix64(key_ + 0x9E3779B97F4A7C15ull * static_cast<uint64_t>(r + 1))) & half_mask_;
}

uint64_t IndexPermutation::operator()(uint64_t i) const {
  SEQMIX_CHECK(i < n_, "IndexPermutation: index ", i, " outside [0, ", n_, ")");
  uint64_t x = i;
  do {
    uint64_t left = x >> half_bits_, right = x & half_mask_;
    for (int r = 0; r < 4; ++r) {
      const uint64_t next = left ^ round(right, r);
      left = right;
      right = next;
    }
    x = (left << half_bits_) | right;
  } while (x >= n_);
  return x;
}

// ---- TrainLoader ----
TrainLoader::TrainLoader(std::shared_ptr<const TokenSplit> split, TrainLoaderConfig cfg)
    : RankedBatchSource(cfg), split_(std::move(split)) {
  SEQMIX_CHECK(cfg_.seq_len >= 1, "data.seq_len must be >= 1, got ", cfg_.seq_len);
  check_rank_layout();
  const uint64_t n = split_->size();
  windows_ = n > 0 ? (n - 1) / static_cast<uint64_t>(cfg_.seq_len) : 0;
  SEQMIX_CHECK(windows_ >= 1, "the training split has ", n, " tokens, fewer than seq_len + 1 = ", cfg_.seq_len + 1,
               "; use a smaller data.seq_len or a larger corpus");
}

int64_t TrainLoader::epoch_of_step(int64_t step) const {
  return static_cast<int64_t>(static_cast<uint64_t>(step) * cfg_.global_batch / windows_);
}

uint64_t TrainLoader::window_start(uint64_t g) const {
  const uint64_t epoch = g / windows_, pos = g % windows_;
  const IndexPermutation perm(windows_, mix64(cfg_.seed) ^ mix64(epoch + 0x1234567ull));
  return perm(pos) * static_cast<uint64_t>(cfg_.seq_len);
}

void TrainLoader::fill(int64_t step, HostBatch& out) const {
  SEQMIX_CHECK(step >= 0, "TrainLoader: step must be >= 0, got ", step);
  const int32_t T = cfg_.seq_len, rows = rows_per_rank();
  const uint64_t first = start_batch(step, static_cast<int64_t>(rows) * T, out);
  std::vector<int32_t> win(T + 1);
  // One permutation per epoch; a batch spans at most a few epochs.
  uint64_t cached_epoch = ~0ull;
  std::unique_ptr<IndexPermutation> perm;
  for (int32_t r = 0; r < rows; ++r) {
    const uint64_t g = first + r;
    const uint64_t epoch = g / windows_;
    if (epoch != cached_epoch) {
      perm = std::make_unique<IndexPermutation>(windows_, mix64(cfg_.seed) ^ mix64(epoch + 0x1234567ull));
      cached_epoch = epoch;
    }
    const uint64_t start = (*perm)(g % windows_) * static_cast<uint64_t>(T);
    split_->copy(start, T + 1, win.data());
    std::copy(win.begin(), win.end() - 1, out.inputs() + static_cast<size_t>(r) * T);
    std::copy(win.begin() + 1, win.end(), out.targets() + static_cast<size_t>(r) * T);
  }
}

// ---- Prefetcher ----
Prefetcher::Prefetcher(std::shared_ptr<const BatchSource> loader, int64_t start_step, int depth)
    : loader_(std::move(loader)), next_step_(start_step), depth_(static_cast<size_t>(std::max(1, depth))) {
  thread_ = std::thread([this] { run(); });
}

Prefetcher::~Prefetcher() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Prefetcher::run() {
  int64_t step = next_step_;
  while (true) {
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] { return stop_ || queue_.size() < depth_; });
      if (stop_) return;
    }
    HostBatch b;
    try {
      loader_->fill(step, b);
    } catch (...) {
      std::lock_guard<std::mutex> lk(mu_);
      error_ = std::current_exception();
      cv_.notify_all();
      return;
    }
    ++step;
    {
      std::lock_guard<std::mutex> lk(mu_);
      queue_.push_back(std::move(b));
    }
    cv_.notify_all();
  }
}

HostBatch Prefetcher::next() {
  std::unique_lock<std::mutex> lk(mu_);
  cv_.wait(lk, [&] { return !queue_.empty() || error_; });
  if (queue_.empty()) std::rethrow_exception(error_);
  HostBatch b = std::move(queue_.front());
  queue_.pop_front();
  lk.unlock();
  cv_.notify_all();
  return b;
}

// ---- EvalIterator ----
EvalIterator::EvalIterator(std::shared_ptr<const TokenSplit> split, int32_t seq_len, int32_t batch_rows,
                           int32_t rank, int32_t world)
    : split_(std::move(split)), seq_len_(seq_len), batch_rows_(batch_rows), rank_(rank), world_(world) {
  SEQMIX_CHECK(seq_len_ >= 1 && batch_rows_ >= 1, "EvalIterator: seq_len and batch rows must be >= 1");
  SEQMIX_CHECK(world_ >= 1 && rank_ >= 0 && rank_ < world_, "bad data-parallel rank ", rank_, " of ", world_);
  const uint64_t targets = total_targets();
  windows_ = static_cast<int64_t>((targets + seq_len_ - 1) / seq_len_);
}

bool EvalIterator::next(HostBatch& out) {
  if (batch_ >= num_batches()) return false;
  const int64_t first = batch_ * batch_rows_;
  const int64_t n = std::min<int64_t>(batch_rows_, windows_ - first);
  const int64_t rb = n * rank_ / world_, re = n * (rank_ + 1) / world_;
  const int32_t T = seq_len_;
  out.step = batch_;
  out.rows = static_cast<int32_t>(re - rb);
  out.seq_len = T;
  out.row_begin = rb;
  out.target_count = 0;
  out.buffer.assign(2 * static_cast<size_t>(out.rows) * T, 0);
  std::vector<int32_t> win(T + 1);
  const uint64_t N = split_->size();
  for (int64_t r = 0; r < out.rows; ++r) {
    const uint64_t start = static_cast<uint64_t>(first + rb + r) * T;
    const uint64_t L = std::min<uint64_t>(T, N - 1 - start);
    split_->copy(start, L + 1, win.data());
    int32_t* in = out.inputs() + r * T;
    int32_t* tg = out.targets() + r * T;
    std::copy(win.begin(), win.begin() + L, in);
    std::copy(win.begin() + 1, win.begin() + L + 1, tg);
    std::fill(tg + L, tg + T, kIgnoreIndex);
    out.target_count += static_cast<int64_t>(L);
  }
  ++batch_;
  return true;
}

}  // namespace seqmix::data
