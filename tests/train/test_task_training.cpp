// Training on a synthetic task (data.source: task:NAME, data/task_source.h): world-size-independent
// batches, loss only on the answers, held-out eval examples, accuracy in metrics.jsonl, clear config errors.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "data/task_source.h"
#include "support/test_util.h"
#include "support/train_testing.h"
#include "train/cli.h"
#include "train/trainer.h"

namespace fs = std::filesystem;
using namespace seqmix;
using seqmix::testing::expect_error_contains;

namespace {
fs::path scratch(const std::string& name) { return seqmix::testing::scratch_dir("seqmix_test_task_training", name); }

data::TaskDataConfig mqar_config(int64_t train_examples = 0) {
  data::TaskDataConfig c;
  c.name = "mqar";
  c.seq_len = 32;
  c.vocab_size = 64;
  c.num_kv_pairs = 4;
  c.train_examples = train_examples;
  c.eval_examples = 10;
  c.seed = 7;
  return c;
}

std::string task_yaml(const std::string& out_dir, const std::string& data_extra = "", const std::string& task_extra = "") {
  return "run:\n  name: t\n  out_dir: " + out_dir + "\n  seed: 3\n  device: cpu\n"
         "data:\n  source: task:mqar\n  seq_len: 16\n" + data_extra +
         "  task:\n    num_kv_pairs: 2\n    vocab_size: 32\n    train_examples: 64\n    eval_examples: 8\n" + task_extra +
         "model:\n  d_model: 16\n  n_layers: 1\n  mixers: [attention]\n  attention: {n_heads: 2}\n"
         "train:\n  steps: 4\n  batch_size: 4\n  lr: 3.0e-3\n  warmup: 1\n  eval_every: 2\n  log_every: 1\n";
}

// text with the first occurrence of `from` replaced by `to`.
std::string with_replaced(std::string text, const std::string& from, const std::string& to) {
  return text.replace(text.find(from), from.size(), to);
}

std::unique_ptr<Config> write_and_load(const fs::path& dir, const std::string& text) {
  fs::path p = dir / "cfg.yaml";
  std::ofstream(p) << text;
  return Config::load(p.string());
}

void make_trainer(const fs::path& dir, const std::string& text) {
  train::Trainer t(write_and_load(dir, text), (dir / "cfg.yaml").string(), "", "");
}
}  // namespace

TEST(TaskTraining, SameGlobalBatchForOneAndTwoRanks) {
  for (int64_t train_examples : {int64_t(0), int64_t(50)}) {  // fresh examples, and a finite set over epochs
    auto task = std::make_shared<const data::TaskSource>(mqar_config(train_examples));
    const int32_t B = 8, T = 32;
    data::TaskTrainLoader one(task, {.seq_len = T, .global_batch = B, .seed = 0});
    for (int64_t step : {0, 1, 13}) {  // step 13 is in the third epoch of 50 examples
      data::HostBatch whole = one.batch(step);
      ASSERT_EQ(whole.rows, B);
      int64_t targets = 0;
      for (int32_t rank = 0; rank < 2; ++rank) {
        data::TaskTrainLoader part(task, {.seq_len = T, .global_batch = B, .seed = 0, .rank = rank, .world = 2});
        data::HostBatch b = part.batch(step);
        ASSERT_EQ(b.rows, B / 2);
        EXPECT_EQ(b.row_begin, rank * B / 2);
        for (int32_t r = 0; r < b.rows; ++r)
          for (int32_t p = 0; p < T; ++p) {
            const size_t mine = size_t(r) * T + p, global = size_t(b.row_begin + r) * T + p;
            ASSERT_EQ(b.inputs()[mine], whole.inputs()[global]) << "step " << step << " rank " << rank;
            ASSERT_EQ(b.targets()[mine], whole.targets()[global]);
          }
        targets += b.target_count;
      }
      EXPECT_EQ(targets, whole.target_count);
    }
    // Deterministic, and a different step is a different batch.
    EXPECT_EQ(one.batch(3).buffer, data::TaskTrainLoader(task, {.seq_len = T, .global_batch = B}).batch(3).buffer);
    EXPECT_NE(one.batch(3).buffer, one.batch(4).buffer);
  }
}

TEST(TaskTraining, FiniteTrainingSetVisitsEachExampleOncePerEpoch) {
  auto task = std::make_shared<const data::TaskSource>(mqar_config(50));
  data::TaskTrainLoader l(task, {.seq_len = 32, .global_batch = 5});
  for (uint64_t epoch = 0; epoch < 2; ++epoch) {
    std::set<int64_t> seen;
    for (uint64_t g = epoch * 50; g < (epoch + 1) * 50; ++g) seen.insert(l.train_example(g));
    EXPECT_EQ(seen.size(), 50u);
    EXPECT_EQ(*seen.begin(), 0);
    EXPECT_EQ(*seen.rbegin(), 49);
  }
  EXPECT_NE(l.train_example(0), l.train_example(50)) << "each epoch has its own order";
}

TEST(TaskTraining, OnlyTheAnswersAreTargets) {
  data::TaskDataConfig c = mqar_config();
  auto task = std::make_shared<const data::TaskSource>(c);
  data::TaskTrainLoader l(task, {.seq_len = c.seq_len, .global_batch = 6});
  data::HostBatch b = l.batch(2);
  EXPECT_EQ(b.target_count, int64_t(b.rows) * c.num_kv_pairs);
  for (int32_t r = 0; r < b.rows; ++r) {
    const int32_t* in = b.inputs() + size_t(r) * c.seq_len;
    const int32_t* tg = b.targets() + size_t(r) * c.seq_len;
    int scored = 0;
    for (int32_t p = 0; p < c.seq_len; ++p) {
      if (tg[p] == data::kIgnoreIndex) continue;
      ++scored;
      ASSERT_GE(p, 2 * c.num_kv_pairs) << "no target inside the key-value context";
      // The input there is a key of the context; the target is the value that followed it.
      int32_t value = -1;
      for (int32_t k = 0; k < c.num_kv_pairs; ++k)
        if (in[2 * k] == in[p]) value = in[2 * k + 1];
      EXPECT_EQ(tg[p], value) << "row " << r << " position " << p;
      EXPECT_GE(tg[p], c.vocab_size / 2);
    }
    EXPECT_EQ(scored, c.num_kv_pairs);
  }
}

TEST(TaskTraining, HeldOutSplitsAreDistinctExamples) {
  data::TaskSource task(mqar_config(20));
  EXPECT_EQ(task.example_index("val", 0), data::kTaskValFirst);
  EXPECT_EQ(task.example_index("test", 3), data::kTaskTestFirst + 3);
  data::TaskBatch tr = task.examples("train", 0, 4), va = task.examples("val", 0, 4), te = task.examples("test", 0, 4);
  EXPECT_NE(tr.inputs, va.inputs);
  EXPECT_NE(va.inputs, te.inputs);
  EXPECT_EQ(va.inputs, task.examples("val", 0, 4).inputs);
  expect_error_contains([&] { task.examples("val", 8, 3); }, "outside the val split (10 examples)");
  expect_error_contains([&] { task.examples("train", 19, 2); }, "outside the train split (20 examples)");
}

TEST(TaskTraining, TinyModelTrainsAndLogsAccuracy) {
  fs::path dir = scratch("train");
  {
    train::Trainer t(write_and_load(dir, task_yaml(dir.string())), (dir / "cfg.yaml").string(), "", "");
    EXPECT_EQ(t.model().config().vocab_size, 32) << "the vocabulary comes from the task";
    ASSERT_EQ(t.run(), 0);
  }
  std::ifstream in(dir / "t" / "metrics.jsonl");
  std::string line, last;
  int with_val_acc = 0;
  while (std::getline(in, line)) {
    if (line.find("\"val_acc\": ") != std::string::npos) ++with_val_acc;
    last = line;
  }
  EXPECT_EQ(with_val_acc, 2) << "the eval at step 2 and the final one";
  EXPECT_NE(last.find("\"test_acc\": "), std::string::npos) << last;
  EXPECT_NE(last.find("\"val_exact\": "), std::string::npos) << last;
  const size_t a = last.find("\"test_acc\": ") + 12;
  const double acc = std::stod(last.substr(a, last.find_first_of(",}", a) - a));
  EXPECT_GE(acc, 0.0);
  EXPECT_LE(acc, 1.0);
  // The resolved config has every task default, and reloads for `seqmix eval`.
  std::ifstream rc(dir / "t" / "config.yaml");
  std::stringstream resolved;
  resolved << rc.rdbuf();
  EXPECT_NE(resolved.str().find("power_a"), std::string::npos);
  train::LoadedRun r = train::load_run((dir / "t").string(), "cpu");
  ASSERT_TRUE(r.task);
  EXPECT_FALSE(r.dataset);
  train::EvalResult ev = train::evaluate_task(*r.model, *r.task, "test", 3, r.device, r.compute_dtype);
  EXPECT_EQ(ev.examples, 8);
  EXPECT_EQ(ev.tokens, 16);
  EXPECT_NEAR(ev.accuracy, acc, 1e-12) << "the same held-out examples as the run's final eval";
  EXPECT_EQ(cli::eval_main({(dir / "t").string(), "--task", "mqar", "--examples", "4"}), 0);
}

TEST(TaskTraining, BadKeysNameTheKey) {
  fs::path dir = scratch("bad");
  const std::string out = (dir / "runs").string();
  expect_error_contains([&] { make_trainer(dir, task_yaml(out, "", "    num_kv_pair: 3\n")); },
                        "unknown config key 'data.task.num_kv_pair'");
  expect_error_contains([&] { make_trainer(dir, task_yaml(out, "", "    num_tokens: 3\n")); },
                        "data.task.num_tokens (" + (dir / "cfg.yaml").string() + " line 14) is not a setting of task mqar");
  expect_error_contains([&] { make_trainer(dir, task_yaml(out, "  tokenizer: bpe\n")); },
                        "data.tokenizer (" + (dir / "cfg.yaml").string() + " line 9) does not apply to a synthetic task source");
  const std::string no_eval = with_replaced(task_yaml(out), "eval_examples: 8", "eval_examples: 0");
  expect_error_contains([&] { make_trainer(dir, no_eval); }, "data.task.eval_examples must be >= 1");
  const std::string big = with_replaced(task_yaml(out), "num_kv_pairs: 2", "num_kv_pairs: 5");
  expect_error_contains([&] { make_trainer(dir, big); }, "data.task.num_kv_pairs = 5 does not fit data.seq_len = 16");
  const std::string typo = with_replaced(task_yaml(out), "task:mqar", "task:mqra");
  expect_error_contains([&] { make_trainer(dir, typo); }, "unknown task 'mqra'; use task:NAME with NAME one of mqar");
  const std::string wrong_type = with_replaced(task_yaml(out), "vocab_size: 32", "vocab_size: many");
  expect_error_contains([&] { make_trainer(dir, wrong_type); }, "config key 'data.task.vocab_size'");
  expect_error_contains(
      [&] {
        make_trainer(dir, "run:\n  out_dir: " + out + "\ndata:\n  source: brown\n  task:\n    num_kv_pairs: 4\n");
      },
      "data.task (" + (dir / "cfg.yaml").string() + " line 5) is read only with a synthetic task source");
  EXPECT_FALSE(fs::exists(dir / "runs")) << "a bad config writes nothing";
}
