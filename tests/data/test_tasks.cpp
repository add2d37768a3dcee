#include <gtest/gtest.h>

#include <map>
#include <set>

#include "core/error.h"
#include "data/tasks.h"

using namespace seqmix::data;

namespace {
const int32_t* row(const std::vector<int32_t>& v, const TaskBatch& b, int e) { return v.data() + size_t(e) * b.seq_len; }
}  // namespace

TEST(Tasks, MqarFollowsZoologyLayout) {
  MqarConfig c{.vocab_size = 512, .seq_len = 128, .num_kv_pairs = 8};
  auto b = make_mqar(c, 32, 7);
  ASSERT_EQ(b.inputs.size(), 32u * 128);
  EXPECT_EQ(b.scored(), 32 * 8);
  for (int e = 0; e < b.batch; ++e) {
    const int32_t* in = row(b.inputs, b, e);
    const int32_t* tg = row(b.targets, b, e);
    std::map<int32_t, int32_t> kv;
    std::set<int32_t> keys, vals;
    for (int k = 0; k < 8; ++k) {
      EXPECT_GE(in[2 * k], 1);
      EXPECT_LT(in[2 * k], 256);
      EXPECT_GE(in[2 * k + 1], 256);
      EXPECT_LT(in[2 * k + 1], 512);
      kv[in[2 * k]] = in[2 * k + 1];
      keys.insert(in[2 * k]);
      vals.insert(in[2 * k + 1]);
      EXPECT_EQ(tg[2 * k], kIgnoreIndex);
      EXPECT_EQ(tg[2 * k + 1], kIgnoreIndex);
    }
    EXPECT_EQ(keys.size(), 8u);
    EXPECT_EQ(vals.size(), 8u);
    std::set<int32_t> queried;
    for (int p = 16; p < 128; ++p) {
      EXPECT_TRUE(in[p] >= 0 && in[p] < 512);
      if (tg[p] == kIgnoreIndex) continue;
      EXPECT_EQ((p - 16) % 2, 0) << "queries sit at even offsets after the pairs";
      ASSERT_TRUE(kv.count(in[p])) << "a query is a key";
      EXPECT_EQ(tg[p], kv[in[p]]) << "its target is the key's value";
      queried.insert(in[p]);
    }
    EXPECT_EQ(queried, keys) << "each key queried once";
  }
  // Deterministic per seed and per example index (a batch split in two gives the same examples).
  EXPECT_EQ(make_mqar(c, 32, 7).inputs, b.inputs);
  EXPECT_NE(make_mqar(c, 32, 8).inputs, b.inputs);
  auto tail = make_mqar(c, 12, 7, 20);
  EXPECT_TRUE(std::equal(tail.inputs.begin(), tail.inputs.end(), b.inputs.begin() + 20 * 128));
  // Power law: short gaps are more common than long ones.
  auto big = make_mqar(MqarConfig{.vocab_size = 2048, .seq_len = 1024, .num_kv_pairs = 4}, 200, 1);
  int near = 0, far = 0;
  for (int e = 0; e < 200; ++e)
    for (int p = 8; p < 1024; ++p)
      if (row(big.targets, big, e)[p] != kIgnoreIndex) ((p - 8) / 2 < 100 ? near : far)++;
  EXPECT_GT(near, far / 4);  // the first 100 of 508 gaps get a disproportionate share
  EXPECT_THROW(make_mqar(MqarConfig{.vocab_size = 100, .seq_len = 128, .num_kv_pairs = 8}, 1, 1), seqmix::Error);
  EXPECT_THROW(make_mqar(MqarConfig{.vocab_size = 512, .seq_len = 128, .num_kv_pairs = 40}, 1, 1), seqmix::Error);
}

TEST(Tasks, SelectiveCopyLabelsAtMarkersOnly) {
  SelectiveCopyConfig c{.vocab_size = 10, .seq_len = 64, .num_tokens = 6};
  auto b = make_selective_copy(c, 16, 3);
  EXPECT_EQ(b.scored(), 16 * 6);
  for (int e = 0; e < 16; ++e) {
    const int32_t* in = row(b.inputs, b, e);
    const int32_t* tg = row(b.targets, b, e);
    std::vector<int32_t> data;
    for (int p = 0; p < 58; ++p) {
      EXPECT_EQ(tg[p], kIgnoreIndex);
      if (in[p] != 0) data.push_back(in[p]);
    }
    ASSERT_EQ(data.size(), 6u);
    for (int j = 0; j < 6; ++j) {
      EXPECT_EQ(in[58 + j], 1);
      EXPECT_EQ(tg[58 + j], data[j]);
      EXPECT_GE(data[j], 2);
    }
  }
}

TEST(Tasks, InductionLabelOnlyAtTheEnd) {
  auto b = make_induction(InductionConfig{.vocab_size = 20, .seq_len = 50}, 16, 5);
  EXPECT_EQ(b.scored(), 16);
  for (int e = 0; e < 16; ++e) {
    const int32_t* in = row(b.inputs, b, e);
    const int32_t* tg = row(b.targets, b, e);
    int first = -1, count = 0;
    for (int p = 0; p < 50; ++p) {
      if (in[p] == 19) {
        ++count;
        if (first < 0) first = p;
      }
      if (p < 49) {
        EXPECT_EQ(tg[p], kIgnoreIndex);
      }
    }
    EXPECT_EQ(count, 2);
    EXPECT_EQ(in[49], 19);
    EXPECT_EQ(tg[49], in[first + 1]);
  }
}

TEST(Tasks, PasskeyNeedleAtDepthAndAnswerAtTheEnd) {
  PasskeyConfig c{.vocab_size = 100, .seq_len = 200, .digits = 5, .depth = 0.5};
  auto b = make_passkey(c, 8, 9);
  EXPECT_EQ(b.scored(), 8 * 5);
  for (int e = 0; e < 8; ++e) {
    const int32_t* in = row(b.inputs, b, e);
    const int32_t* tg = row(b.targets, b, e);
    int at = -1;
    for (int p = 0; p < 200; ++p)
      if (in[p] == 0) at = p;
    ASSERT_GE(at, 0);
    EXPECT_NEAR(at, 0.5 * (200 - 5 - 6), 1);
    EXPECT_EQ(in[195], 1);
    for (int j = 0; j < 5; ++j) {
      EXPECT_EQ(tg[195 + j], in[at + 1 + j]);
      EXPECT_GE(tg[195 + j], 2);
      EXPECT_LT(tg[195 + j], 12);
      if (j < 4) {
        EXPECT_EQ(in[196 + j], in[at + 1 + j]);  // teacher forcing
      }
    }
    for (int p = 0; p < 195; ++p) EXPECT_EQ(tg[p], kIgnoreIndex);
  }
}

TEST(Tasks, PasskeyTextWithARealTokenizer) {
  auto tok = make_byte_tokenizer();
  auto b = make_passkey_text(*tok, 400, 4, 11, 0.3);
  EXPECT_EQ(b.scored(), 4 * 6);  // " NNNNN" is 6 bytes
  for (int e = 0; e < 4; ++e) {
    std::vector<int32_t> ids(row(b.inputs, b, e), row(b.inputs, b, e) + 400);
    const std::string text = tok->decode(ids);
    const auto k = text.find("The pass key is ");
    ASSERT_NE(k, std::string::npos);
    const std::string key = text.substr(k + 16, 5);
    const std::string tail = " What is the pass key? The pass key is " + key.substr(0, 4);
    EXPECT_EQ(text.substr(text.size() - tail.size()), tail);
    std::string answer;
    for (int p = 0; p < 400; ++p)
      if (row(b.targets, b, e)[p] != kIgnoreIndex) answer.push_back(char(row(b.targets, b, e)[p]));
    EXPECT_EQ(answer, " " + key);
  }
  EXPECT_THROW(make_passkey_text(*tok, 50, 1, 1), seqmix::Error);
}

TEST(Tasks, AccuracyAndByName) {
  auto b = make_task("induction", {{"vocab_size", "16"}, {"seq_len", "32"}}, 10, 2);
  std::vector<int32_t> pred = b.targets;
  double exact = 0;
  EXPECT_DOUBLE_EQ(task_accuracy(b, pred.data(), &exact), 1.0);
  EXPECT_DOUBLE_EQ(exact, 1.0);
  pred[31] = -5;
  EXPECT_DOUBLE_EQ(task_accuracy(b, pred.data(), &exact), 0.9);
  EXPECT_THROW(make_task("mqar", {{"vocab", "16"}}, 1, 1), seqmix::Error);
  EXPECT_THROW(make_task("copying", {}, 1, 1), seqmix::Error);
  EXPECT_EQ(make_task("mqar", {{"num_kv_pairs", "4"}, {"seq_len", "64"}, {"vocab_size", "256"}}, 2, 1).scored(), 8);
}
