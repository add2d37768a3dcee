// End-to-end trainer tests on a tiny byte-level dataset the test writes itself.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "data/prepare.h"
#include "support/test_util.h"
#include "support/train_testing.h"
#include "train/generate.h"
#include "train/optimizer.h"
#include "train/trainer.h"

namespace fs = std::filesystem;
using namespace seqmix;
using seqmix::testing::expect_error_contains;

namespace {
fs::path scratch(const std::string& name) { return seqmix::testing::scratch_dir("seqmix_test_trainer", name); }

std::string tiny_dataset() {
  static const std::string dir = seqmix::testing::make_tiny_byte_dataset(scratch("data"), 600);
  return dir;
}

std::string config_text(const std::string& data_dir, const std::string& out_dir, const std::string& train_extra = "") {
  return "run:\n  name: t\n  out_dir: " + out_dir + "\n  seed: 3\n  device: cpu\n"
         "data:\n  path: " + data_dir + "\n  seq_len: 16\n"
         "model:\n  d_model: 16\n  n_layers: 2\n  mixers: [attention]\n  attention: {n_heads: 2}\n  dropout: 0.1\n"
         "train:\n  steps: 12\n  batch_size: 4\n  lr: 3.0e-3\n  warmup: 2\n  eval_every: 6\n  eval_max_tokens: 200\n"
         "  ckpt_every: 3\n  keep_last: 3\n  log_every: 1\n" + train_extra;
}

std::unique_ptr<Config> write_and_load(const fs::path& dir, const std::string& text, std::vector<std::string> sets = {}) {
  fs::path p = dir / "cfg.yaml";
  std::ofstream(p) << text;
  return Config::load(p.string(), sets);
}

std::vector<std::string> logged_losses(const fs::path& run_dir) {
  std::ifstream in(run_dir / "metrics.jsonl");
  std::vector<std::string> out;
  std::string line;
  while (std::getline(in, line)) {
    if (line.find("\"lr\"") == std::string::npos) continue;  // the final summary line has no lr
    size_t a = line.find("\"loss\": ") + 8, b = line.find(',', a);
    out.push_back(line.substr(a, b - a));
  }
  return out;
}
}  // namespace

TEST(Trainer, OverfitsATinyBatch) {
  auto cfg = Config::from_string("model:\n  d_model: 32\n  n_layers: 2\n  mixers: [attention]\n  attention: {n_heads: 2}\n", "o.yaml");
  ModelConfig mc = read_model_config(cfg->root().child("model"), 20, 12, 1);
  LanguageModel lm(mc, cfg->root().child("model"));
  train::AdamW opt(lm.named_parameters(), train::AdamWConfig{0.9, 0.95, 1e-8, 0.0});
  Generator g(5);
  Tensor ids = (rand({4, 12}, g) * 20.0).to(DType::I32);
  Tensor tg = (rand({4, 12}, g) * 20.0).to(DType::I32);
  double first = 0, last = 0;
  for (int i = 0; i < 150; ++i) {
    Tensor loss = lm.loss(ids, tg);
    if (i == 0) first = loss.item();
    last = loss.item();
    loss.backward();
    opt.step(1e-2);
    opt.zero_grad();
  }
  EXPECT_GT(first, 2.5);
  EXPECT_LT(last, 0.05) << "the model should memorize 48 random targets";
}

TEST(Trainer, ExactResumeOnCpuIsBitwiseIdentical) {
  std::string data = tiny_dataset();
  fs::path a = scratch("resume_a"), b = scratch("resume_b");
  {
    train::Trainer t(write_and_load(a, config_text(data, a.string())), (a / "cfg.yaml").string(), "", "");
    ASSERT_EQ(t.run(), 0);
  }
  {
    // interrupted at step 7 (after the checkpoint of step 6 the run writes its own at 7), then resumed
    train::Trainer t(write_and_load(b, config_text(data, b.string()), {"train.stop_at=7"}), (b / "cfg.yaml").string(), "", "");
    ASSERT_EQ(t.run(), 0);
  }
  EXPECT_TRUE(fs::exists(b / "t" / "checkpoints" / "step_7"));
  {
    train::Trainer t(write_and_load(b, config_text(data, b.string())), (b / "cfg.yaml").string(), "auto", "");
    ASSERT_EQ(t.run(), 0);
  }
  std::vector<std::string> la = logged_losses(a / "t"), lb = logged_losses(b / "t");
  ASSERT_EQ(la.size(), 12u);
  ASSERT_EQ(lb.size(), 12u);
  EXPECT_EQ(la, lb) << "a resumed run must log the same losses, digit for digit";
}

TEST(Trainer, RefusesToOverwriteARunWithoutResume) {
  std::string data = tiny_dataset();
  fs::path a = scratch("overwrite");
  std::string text = config_text(data, a.string(), "");
  {
    train::Trainer t(write_and_load(a, text, {"train.stop_at=3"}), (a / "cfg.yaml").string(), "", "");
    t.run();
  }
  expect_error_contains([&] { train::Trainer t(write_and_load(a, text), (a / "cfg.yaml").string(), "", ""); },
                        "--resume auto");
}

TEST(Trainer, CorruptCheckpointIsRefused) {
  std::string data = tiny_dataset();
  fs::path a = scratch("corrupt");
  std::string text = config_text(data, a.string(), "");
  {
    train::Trainer t(write_and_load(a, text, {"train.stop_at=3"}), (a / "cfg.yaml").string(), "", "");
    t.run();
  }
  fs::path model = a / "t" / "checkpoints" / "step_3" / "model.safetensors";
  ASSERT_TRUE(fs::exists(model));
  {
    std::fstream f(model, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-5, std::ios::end);
    f.put('\x7f');
  }
  expect_error_contains([&] { train::Trainer t(write_and_load(a, text), (a / "cfg.yaml").string(), (a / "t" / "checkpoints" / "step_3").string(), ""); },
                        "corrupt");
}

TEST(Trainer, BadConfigErrorsNameTheKeyAndLine) {
  std::string data = tiny_dataset();
  fs::path a = scratch("badcfg");
  std::string text = config_text(data, a.string(), "  learning_rate: 0.1\n");
  expect_error_contains([&] { train::Trainer t(write_and_load(a, text), (a / "cfg.yaml").string(), "", ""); },
                        "unknown config key 'train.learning_rate' (");
  expect_error_contains([&] { train::Trainer t(write_and_load(a, text), (a / "cfg.yaml").string(), "", ""); }, "line 25");
  expect_error_contains([&] { Config::from_string("model: [unclosed", "broken.yaml"); }, "broken.yaml line");
  expect_error_contains(
      [&] {
        train::Trainer t(write_and_load(a, config_text(data, a.string()), {"model.attention.heads=3"}), (a / "cfg.yaml").string(), "", "");
      },
      "'model.attention.heads' (--set)");
  expect_error_contains([&] { Config::load((a / "missing.yaml").string()); }, "cannot open config file");
}

TEST(Generate, DeterministicForASeedAndDifferentAcrossSeeds) {
  auto cfg = Config::from_string("model:\n  d_model: 16\n  n_layers: 1\n  attention: {n_heads: 2}\n  init_std: 0.5\n", "g.yaml");
  ModelConfig mc = read_model_config(cfg->root().child("model"), 30, 32, 1);
  LanguageModel lm(mc, cfg->root().child("model"));
  lm.eval();
  train::SamplingOptions o;
  o.max_new_tokens = 20;
  o.seed = 7;
  o.top_k = 10;
  o.top_p = 0.9;
  auto a = train::generate(lm, {1, 2, 3}, o, Device::cpu());
  auto b = train::generate(lm, {1, 2, 3}, o, Device::cpu());
  EXPECT_EQ(a, b);
  o.seed = 8;
  EXPECT_NE(train::generate(lm, {1, 2, 3}, o, Device::cpu()), a);
  o.temperature = 0;
  auto g1 = train::generate(lm, {1, 2, 3}, o, Device::cpu());
  o.seed = 99;
  EXPECT_EQ(train::generate(lm, {1, 2, 3}, o, Device::cpu()), g1) << "greedy ignores the seed";
}

TEST(Generate, TopKAndTopPRestrictTheChoice) {
  std::vector<float> logits{0.f, 5.f, 4.f, -1.f};
  train::SamplingOptions o;
  o.top_k = 1;
  for (double u : {0.01, 0.5, 0.99}) EXPECT_EQ(train::sample_from_logits(logits, o, u), 1);
  o.top_k = 0;
  o.top_p = 0.5;  // token 1 alone holds > 50% of the mass
  for (double u : {0.01, 0.99}) EXPECT_EQ(train::sample_from_logits(logits, o, u), 1);
}

TEST(Trainer, NonFiniteStepsAreSkippedThenTheRunStops) {
  // weights drawn with std 1e38 include infinities: every step's loss is NaN
  std::string data = tiny_dataset();
  fs::path a = scratch("nan");
  std::string text = config_text(data, a.string(), "  max_bad_steps: 3\n");
  auto cfg = write_and_load(a, text, {"model.init_std=1e38", "train.ckpt_every=0"});
  train::Trainer t(std::move(cfg), (a / "cfg.yaml").string(), "", "");
  expect_error_contains([&] { t.run(); }, "3 consecutive steps had a non-finite loss");
  std::ifstream log(a / "t" / "log.txt");
  std::stringstream ss;
  ss << log.rdbuf();
  EXPECT_NE(ss.str().find("update skipped"), std::string::npos) << "each skipped step is logged";
}
