// Synthetic recall tasks (data/tasks.h) as training data: `data.source: task:NAME` in a config.
//
// Examples are a pure function of (seed, example index), so batches follow the loader's rule: global
// sample g = step * B + row of a step, rank r of R taking rows [r*B/R, (r+1)*B/R) of the same global
// batch. Training sample g uses training example g (train_examples = 0: every sample a fresh example), or,
// with a finite training set of N examples, example perm_{seed, epoch}(g mod N), epoch = g div N (the
// loader's keyed permutation, so every epoch visits each example once in a new order). Validation and
// test examples are held out by index: val example i is index 2^40 + i, test example i is 2^41 + i (same
// seed), and training indices stay below 2^40. Targets are kIgnoreIndex except at the scored positions
// (MQAR: the answers), so the loss covers only what the task scores.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "data/loader.h"
#include "data/tasks.h"

namespace seqmix::data {

struct TaskDataConfig {
  std::string name = "mqar";  // mqar | selective_copy | induction | passkey
  int32_t seq_len = 256;
  int32_t vocab_size = 0;     // 0: the task's default (mqar 8192, selective_copy 16, induction 64, passkey 256)
  // mqar
  int32_t num_kv_pairs = 16;
  double power_a = 0.01;
  // selective_copy
  int32_t num_tokens = 16;
  // passkey
  int32_t digits = 5;
  double depth = -1.0;
  // examples: train_examples = 0 draws a fresh example for every training sample
  int64_t train_examples = 0;
  int64_t eval_examples = 1000;  // per held-out split (val, test)
  uint64_t seed = 0;
};

inline constexpr int64_t kTaskValFirst = int64_t(1) << 40;
inline constexpr int64_t kTaskTestFirst = int64_t(1) << 41;

// The task names `data.source: task:NAME` accepts.
const char* task_source_names();  // "mqar, selective_copy, induction, passkey"
bool is_task_source(const std::string& source);  // starts with "task:"
// The task's default vocabulary; throws for an unknown task name.
int32_t task_default_vocab(const std::string& name);

class TaskSource {
 public:
  // Fills in the default vocabulary and checks the settings (errors name the data.task key).
  explicit TaskSource(TaskDataConfig cfg);
  const TaskDataConfig& config() const { return cfg_; }
  int32_t vocab_size() const { return cfg_.vocab_size; }
  int32_t seq_len() const { return cfg_.seq_len; }
  // Examples in a split: train_examples (0: unbounded), eval_examples for val and test.
  int64_t split_examples(const std::string& split) const;
  // `count` examples of `split` ("train", "val", "test") starting at its example `first`.
  TaskBatch examples(const std::string& split, int64_t first, int32_t count) const;
  // Example index (in the generator's index space) of a split's example i.
  int64_t example_index(const std::string& split, int64_t i) const;
  // One line for the log: "mqar, 64 KV pairs, vocab 8192, seq_len 256, 100000 train examples, ...".
  std::string describe() const;

 private:
  TaskBatch generate(int64_t index, int32_t count) const;
  TaskDataConfig cfg_;
};

// Training batches of a task: the BatchSource beside the token-shard TrainLoader.
class TaskTrainLoader : public RankedBatchSource {
 public:
  // cfg.seq_len must be the task's; cfg.seed is ignored (the task's seed is used).
  TaskTrainLoader(std::shared_ptr<const TaskSource> task, TrainLoaderConfig cfg);
  // Training example (index within the training set) of global sample g.
  int64_t train_example(uint64_t global_sample) const;
  void fill(int64_t step, HostBatch& out) const override;

 private:
  std::shared_ptr<const TaskSource> task_;
};

}  // namespace seqmix::data
