#include "data/task_source.h"

#include <algorithm>
#include <sstream>

#include "core/error.h"

namespace seqmix::data {

int32_t task_default_vocab(const std::string& name) {
  if (name == "mqar") return MqarConfig{}.vocab_size;
  if (name == "selective_copy") return SelectiveCopyConfig{}.vocab_size;
  if (name == "induction") return InductionConfig{}.vocab_size;
  if (name == "passkey") return PasskeyConfig{}.vocab_size;
  SEQMIX_FAIL("data.source 'task:", name, "': unknown task '", name, "'; use task:NAME with NAME one of ", task_source_names());
}

const char* task_source_names() { return "mqar, selective_copy, induction, passkey"; }

bool is_task_source(const std::string& source) { return source.rfind("task:", 0) == 0; }

TaskSource::TaskSource(TaskDataConfig cfg) : cfg_(std::move(cfg)) {
  const std::string& n = cfg_.name;
  if (cfg_.vocab_size == 0) cfg_.vocab_size = task_default_vocab(n);
  else task_default_vocab(n);  // checks the name
  SEQMIX_CHECK(cfg_.vocab_size > 0, "data.task.vocab_size must be positive (0: the task's default), got ", cfg_.vocab_size);
  SEQMIX_CHECK(cfg_.seq_len > 0, "data.seq_len must be positive, got ", cfg_.seq_len);
  SEQMIX_CHECK(cfg_.train_examples >= 0 && cfg_.train_examples < kTaskValFirst, "data.task.train_examples must be in [0, 2^40) ",
               "(0: a fresh example for every training sample), got ", cfg_.train_examples);
  SEQMIX_CHECK(cfg_.eval_examples >= 1 && cfg_.eval_examples < kTaskValFirst, "data.task.eval_examples must be >= 1, got ",
               cfg_.eval_examples);
  if (n == "mqar") {
    const int32_t T = cfg_.seq_len, V = cfg_.vocab_size, K = cfg_.num_kv_pairs;
    SEQMIX_CHECK(T % 2 == 0, "task:mqar needs an even data.seq_len (keys and values alternate), got ", T);
    SEQMIX_CHECK(K >= 1, "data.task.num_kv_pairs must be >= 1, got ", K);
    SEQMIX_CHECK(4 * int64_t(K) <= T, "data.task.num_kv_pairs = ", K, " does not fit data.seq_len = ", T,
                 ": MQAR needs 4 * num_kv_pairs <= seq_len (the pairs, then room for a query of each); use at most ", T / 4,
                 " pairs or a longer seq_len");
    SEQMIX_CHECK(V > T, "data.task.vocab_size = ", V, " must exceed data.seq_len = ", T, " for task:mqar");
    SEQMIX_CHECK(V / 2 - 1 >= K, "data.task.vocab_size = ", V, " is too small for ", K,
                 " distinct keys (keys come from [1, vocab/2)); raise data.task.vocab_size");
    SEQMIX_CHECK(cfg_.power_a > 0, "data.task.power_a must be > 0, got ", cfg_.power_a);
  }
  // Everything else the generators check: one example, its error prefixed with where the settings live.
  try {
    generate(0, 1);
  } catch (const Error& e) {
    SEQMIX_FAIL("data.source task:", n, " with data.seq_len = ", cfg_.seq_len, " and the data.task settings: ", e.what());
  }
}

int64_t TaskSource::split_examples(const std::string& split) const {
  if (split == "train") return cfg_.train_examples;
  SEQMIX_CHECK(split == "val" || split == "test", "task splits are train, val and test; got '", split, "'");
  return cfg_.eval_examples;
}

int64_t TaskSource::example_index(const std::string& split, int64_t i) const {
  const int64_t n = split_examples(split);
  SEQMIX_CHECK(i >= 0 && (n == 0 || i < n), "task example ", i, " is outside the ", split, " split (", n, " examples)");
  if (split == "train") return i;
  return (split == "val" ? kTaskValFirst : kTaskTestFirst) + i;
}

TaskBatch TaskSource::examples(const std::string& split, int64_t first, int32_t count) const {
  SEQMIX_CHECK(count >= 1, "task batch must hold at least one example");
  example_index(split, first + count - 1);  // range check of the last one
  return generate(example_index(split, first), count);
}

TaskBatch TaskSource::generate(int64_t index, int32_t count) const {
  const std::string& n = cfg_.name;
  if (n == "mqar") {
    MqarConfig c;
    c.vocab_size = cfg_.vocab_size;
    c.seq_len = cfg_.seq_len;
    c.num_kv_pairs = cfg_.num_kv_pairs;
    c.power_a = cfg_.power_a;
    return make_mqar(c, count, cfg_.seed, index);
  }
  if (n == "selective_copy") return make_selective_copy({cfg_.vocab_size, cfg_.seq_len, cfg_.num_tokens}, count, cfg_.seed, index);
  if (n == "induction") return make_induction({cfg_.vocab_size, cfg_.seq_len}, count, cfg_.seed, index);
  if (n == "passkey") return make_passkey({cfg_.vocab_size, cfg_.seq_len, cfg_.digits, cfg_.depth}, count, cfg_.seed, index);
  task_default_vocab(n);  // throws for an unknown name
  return {};
}

std::string TaskSource::describe() const {
  std::ostringstream os;
  os << cfg_.name;
  if (cfg_.name == "mqar") os << ", " << cfg_.num_kv_pairs << " KV pairs";
  if (cfg_.name == "selective_copy") os << ", " << cfg_.num_tokens << " tokens";
  if (cfg_.name == "passkey") os << ", " << cfg_.digits << " digits";
  os << ", vocab " << cfg_.vocab_size << ", seq_len " << cfg_.seq_len << ", ";
  if (cfg_.train_examples > 0) os << cfg_.train_examples << " train examples";
  else os << "a fresh train example per sample";
  os << ", " << cfg_.eval_examples << " val + " << cfg_.eval_examples << " test examples";
  return os.str();
}

// ---- TaskTrainLoader ----
TaskTrainLoader::TaskTrainLoader(std::shared_ptr<const TaskSource> task, TrainLoaderConfig cfg)
    : RankedBatchSource(cfg), task_(std::move(task)) {
  SEQMIX_CHECK(cfg_.seq_len == task_->seq_len(), "TaskTrainLoader: seq_len ", cfg_.seq_len, " differs from the task's ",
               task_->seq_len());
  check_rank_layout();
}

int64_t TaskTrainLoader::train_example(uint64_t g) const {
  const uint64_t n = uint64_t(task_->split_examples("train"));
  if (n == 0) {
    SEQMIX_CHECK(g < uint64_t(kTaskValFirst), "training sample ", g, " would reach the held-out example range (2^40)");
    return int64_t(g);
  }
  const uint64_t epoch = g / n;
  const IndexPermutation perm(n, mix64(task_->config().seed ^ 0x7A5C0FFEEull) ^ mix64(epoch + 0x51ED27ull));
  return int64_t(perm(g % n));
}

void TaskTrainLoader::fill(int64_t step, HostBatch& out) const {
  SEQMIX_CHECK(step >= 0, "TaskTrainLoader: step must be >= 0, got ", step);
  const int32_t T = cfg_.seq_len, rows = rows_per_rank();
  const uint64_t first = start_batch(step, 0, out);
  for (int32_t r = 0; r < rows; ++r) {
    TaskBatch ex = task_->examples("train", train_example(first + uint64_t(r)), 1);
    std::copy(ex.inputs.begin(), ex.inputs.end(), out.inputs() + size_t(r) * T);
    std::copy(ex.targets.begin(), ex.targets.end(), out.targets() + size_t(r) * T);
    out.target_count += ex.scored();
  }
}

}  // namespace seqmix::data
