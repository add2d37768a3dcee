#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>
#include <set>

#include <unistd.h>

#include "core/error.h"
#include "data/loader.h"
#include "data/shard.h"

namespace fs = std::filesystem;
using namespace seqmix::data;

namespace {

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() / ("seqmix_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter()++));
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string file(const std::string& name) const { return (path / name).string(); }
  static int& counter() { static int c = 0; return c; }
};

std::vector<int32_t> iota_tokens(size_t n, int32_t vocab) {
  std::vector<int32_t> t(n);
  for (size_t i = 0; i < n; ++i) t[i] = static_cast<int32_t>(i % vocab);
  return t;
}

std::string expect_error(const std::function<void()>& f) {
  try {
    f();
  } catch (const seqmix::Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a seqmix::Error";
  return "";
}

void patch_byte(const std::string& path, size_t offset, char value) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(static_cast<std::streamoff>(offset));
  f.put(value);
}

}  // namespace

TEST(Shard, RoundTripU16AndU32) {
  TempDir d;
  auto small = iota_tokens(1000, 300);
  write_shard(d.file("a.bin"), small, 300);
  ShardReader a(d.file("a.bin"));
  EXPECT_EQ(a.info().token_bytes, 2u);
  EXPECT_EQ(a.size(), 1000u);
  std::vector<int32_t> back(1000);
  a.copy(0, 1000, back.data());
  EXPECT_EQ(back, small);

  std::vector<int32_t> big{0, 70000, 99999, 5};
  write_shard(d.file("b.bin"), big, 100000);
  ShardReader b(d.file("b.bin"));
  EXPECT_EQ(b.info().token_bytes, 4u);
  EXPECT_EQ(b[1], 70000);
  EXPECT_EQ(b[2], 99999);
  EXPECT_FALSE(fs::exists(d.file("b.bin.tmp")));
}

TEST(Shard, RefusesOutOfVocabTokensOnWrite) {
  TempDir d;
  std::vector<int32_t> t{1, 2, 300};
  auto msg = expect_error([&] { write_shard(d.file("x.bin"), t, 300); });
  EXPECT_NE(msg.find("outside the vocabulary"), std::string::npos) << msg;
  EXPECT_FALSE(fs::exists(d.file("x.bin")));
}

TEST(Shard, DetectsTruncationCorruptionAndForeignFiles) {
  TempDir d;
  const std::string p = d.file("s.bin");
  write_shard(p, iota_tokens(5000, 1000), 1000);

  // Truncated.
  fs::copy_file(p, d.file("t.bin"));
  fs::resize_file(d.file("t.bin"), kShardHeaderBytes + 2 * 4000);
  auto msg = expect_error([&] { ShardReader r(d.file("t.bin")); });
  EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;
  EXPECT_NE(msg.find("t.bin"), std::string::npos) << msg;

  // Shorter than a header.
  fs::resize_file(d.file("t.bin"), 10);
  msg = expect_error([&] { ShardReader r(d.file("t.bin")); });
  EXPECT_NE(msg.find("shorter than"), std::string::npos) << msg;

  // A flipped payload byte.
  fs::copy_file(p, d.file("c.bin"));
  patch_byte(d.file("c.bin"), kShardHeaderBytes + 777, 0x55);
  msg = expect_error([&] { ShardReader r(d.file("c.bin")); });
  EXPECT_NE(msg.find("payload checksum"), std::string::npos) << msg;

  // A flipped header byte (the count).
  fs::copy_file(p, d.file("h.bin"));
  patch_byte(d.file("h.bin"), 17, 0x7F);
  msg = expect_error([&] { ShardReader r(d.file("h.bin")); });
  EXPECT_NE(msg.find("corrupt header"), std::string::npos) << msg;

  // A newer version.
  fs::copy_file(p, d.file("v.bin"));
  patch_byte(d.file("v.bin"), 8, 9);
  msg = expect_error([&] { ShardReader r(d.file("v.bin")); });
  EXPECT_NE(msg.find("version"), std::string::npos) << msg;

  // A foreign file.
  { std::ofstream(d.file("f.bin")) << std::string(200, 'x'); }
  msg = expect_error([&] { ShardReader r(d.file("f.bin")); });
  EXPECT_NE(msg.find("not a seqmix token shard"), std::string::npos) << msg;

  // Missing.
  msg = expect_error([&] { ShardReader r(d.file("missing.bin")); });
  EXPECT_NE(msg.find("missing.bin"), std::string::npos) << msg;

  // The intact file still reads.
  ShardReader ok(p);
  EXPECT_EQ(ok.size(), 5000u);
}

TEST(TokenSplit, SpansShards) {
  TempDir d;
  auto all = iota_tokens(2500, 997);
  write_shard(d.file("0.bin"), std::span(all).subspan(0, 1000), 997);
  write_shard(d.file("1.bin"), std::span(all).subspan(1000, 7), 997);
  write_shard(d.file("2.bin"), std::span(all).subspan(1007), 997);
  TokenSplit s({d.file("0.bin"), d.file("1.bin"), d.file("2.bin")});
  EXPECT_EQ(s.size(), 2500u);
  std::vector<int32_t> got(1500);
  s.copy(500, 1500, got.data());
  EXPECT_TRUE(std::equal(got.begin(), got.end(), all.begin() + 500));
}

TEST(IndexPermutation, IsABijection) {
  for (uint64_t n : {1ull, 2ull, 3ull, 10ull, 257ull, 1000ull}) {
    IndexPermutation p(n, 42);
    std::set<uint64_t> seen;
    for (uint64_t i = 0; i < n; ++i) seen.insert(p(i));
    EXPECT_EQ(seen.size(), n);
    EXPECT_EQ(*seen.rbegin(), n - 1);
  }
  IndexPermutation a(1000, 1), b(1000, 2);
  int same = 0;
  for (uint64_t i = 0; i < 1000; ++i) same += a(i) == b(i);
  EXPECT_LT(same, 50);
}

namespace {
std::shared_ptr<TokenSplit> make_split(const TempDir& d, size_t n, int32_t vocab = 50000) {
  std::mt19937_64 rng(11);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = static_cast<int32_t>(rng() % vocab);
  write_shard(d.file("train.bin"), t, vocab);
  return std::make_shared<TokenSplit>(std::vector<std::string>{d.file("train.bin")});
}
}  // namespace

TEST(TrainLoader, TargetsAreInputsShiftedAndWindowsComeFromTheSplit) {
  TempDir d;
  auto split = make_split(d, 1000);
  TrainLoader loader(split, {.seq_len = 16, .global_batch = 4, .seed = 3});
  EXPECT_EQ(loader.windows_per_epoch(), 999u / 16);
  auto b = loader.batch(5);
  ASSERT_EQ(b.buffer.size(), 2u * 4 * 16);
  for (int r = 0; r < 4; ++r) {
    const uint64_t start = loader.window_start(5 * 4 + r);
    EXPECT_EQ(start % 16, 0u);
    for (int t = 0; t < 16; ++t) {
      EXPECT_EQ(b.inputs()[r * 16 + t], split->at(start + t));
      EXPECT_EQ(b.targets()[r * 16 + t], split->at(start + t + 1));
    }
  }
}

TEST(TrainLoader, DeterministicAndEpochsCoverEveryWindowOnce) {
  TempDir d;
  auto split = make_split(d, 16 * 60 + 1);  // exactly 60 windows
  TrainLoader a(split, {.seq_len = 16, .global_batch = 6, .seed = 9});
  TrainLoader b(split, {.seq_len = 16, .global_batch = 6, .seed = 9});
  TrainLoader c(split, {.seq_len = 16, .global_batch = 6, .seed = 10});
  EXPECT_EQ(a.batch(7).buffer, b.batch(7).buffer);
  EXPECT_NE(a.batch(7).buffer, c.batch(7).buffer);
  for (int epoch = 0; epoch < 2; ++epoch) {
    std::set<uint64_t> starts;
    for (int s = epoch * 10; s < epoch * 10 + 10; ++s) {
      EXPECT_EQ(a.epoch_of_step(s), epoch);
      for (int r = 0; r < 6; ++r) starts.insert(a.window_start(s * 6 + r));
    }
    EXPECT_EQ(starts.size(), 60u) << "epoch " << epoch;
  }
  // Epochs are shuffled differently.
  EXPECT_NE(a.window_start(0), a.window_start(60));
}

TEST(TrainLoader, SameGlobalBatchForAnyWorldSize) {
  TempDir d;
  auto split = make_split(d, 5000);
  const int B = 12, T = 8;
  TrainLoader one(split, {.seq_len = T, .global_batch = B, .seed = 123});
  for (int64_t step : {0, 1, 17, 100}) {
    const auto ref = one.batch(step);
    for (int world : {2, 3, 4}) {
      std::vector<int32_t> in, tg;
      for (int rank = 0; rank < world; ++rank) {
        TrainLoader l(split, {.seq_len = T, .global_batch = B, .seed = 123, .rank = rank, .world = world});
        auto b = l.batch(step);
        EXPECT_EQ(b.rows, B / world);
        EXPECT_EQ(b.row_begin, rank * B / world);
        in.insert(in.end(), b.inputs(), b.inputs() + b.rows * T);
        tg.insert(tg.end(), b.targets(), b.targets() + b.rows * T);
      }
      EXPECT_TRUE(std::equal(in.begin(), in.end(), ref.inputs())) << "world " << world << " step " << step;
      EXPECT_TRUE(std::equal(tg.begin(), tg.end(), ref.targets())) << "world " << world << " step " << step;
    }
  }
  auto msg = expect_error([&] { TrainLoader l(split, {.seq_len = T, .global_batch = 10, .seed = 1, .world = 4}); });
  EXPECT_NE(msg.find("not divisible"), std::string::npos) << msg;
  msg = expect_error([&] { TrainLoader l(split, {.seq_len = 5000, .global_batch = 1, .seed = 1}); });
  EXPECT_NE(msg.find("seq_len"), std::string::npos) << msg;
}

TEST(Prefetcher, YieldsConsecutiveStepsLikeTheLoader) {
  TempDir d;
  auto split = make_split(d, 3000);
  auto loader = std::make_shared<TrainLoader>(split, TrainLoaderConfig{.seq_len = 8, .global_batch = 4, .seed = 5});
  Prefetcher pf(loader, 40, 3);
  for (int64_t s = 40; s < 50; ++s) {
    auto b = pf.next();
    EXPECT_EQ(b.step, s);
    EXPECT_EQ(b.buffer, loader->batch(s).buffer);
  }
}

TEST(EvalIterator, CoversEveryTokenOnceWithPartialLastWindow) {
  TempDir d;
  for (size_t n : {2, 17, 100, 161}) {
    std::vector<int32_t> t(n);
    std::iota(t.begin(), t.end(), 0);
    write_shard(d.file("val.bin"), t, static_cast<int64_t>(n));
    auto split = std::make_shared<TokenSplit>(std::vector<std::string>{d.file("val.bin")});
    for (int world : {1, 3}) {
      std::vector<int> seen(n, 0);
      int64_t counted = 0;
      for (int rank = 0; rank < world; ++rank) {
        EvalIterator it(split, 16, 3, rank, world);
        HostBatch b;
        while (it.next(b)) {
          counted += b.target_count;
          for (int r = 0; r < b.rows; ++r)
            for (int k = 0; k < 16; ++k) {
              const int32_t tg = b.targets()[r * 16 + k];
              if (tg == kIgnoreIndex) continue;
              ASSERT_EQ(b.inputs()[r * 16 + k] + 1, tg);  // the previous token is the input
              ++seen[tg];
            }
        }
      }
      EXPECT_EQ(counted, static_cast<int64_t>(n - 1));
      EXPECT_EQ(seen[0], 0);
      for (size_t i = 1; i < n; ++i) ASSERT_EQ(seen[i], 1) << "token " << i << " n " << n << " world " << world;
    }
  }
}
