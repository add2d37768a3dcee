#include "data/tasks.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"

namespace seqmix::data {

namespace {

// SplitMix64 stream keyed by (seed, task, example): examples are independent of batch size and order.
class Rng {
 public:
  Rng(uint64_t seed, uint64_t task, int64_t example)
      : s_(mix(mix(seed ^ 0xA0761D6478BD642Full) ^ mix(task + 0xE7037ED1A0B428DBull) ^
               static_cast<uint64_t>(example) * 0x8EBC6AF09C88C6E3ull)) {}
  uint64_t next() {
    s_ += 0x9E3779B97F4A7C15ull;
    return mix(s_);
  }
  // Uniform in [0, n), n >= 1 (rejection sampling: exact).
  uint64_t below(uint64_t n) {
    const uint64_t limit = ~0ull - (~0ull % n);
    uint64_t x;
    do x = next();
    while (x >= limit);
    return x % n;
  }
  int32_t range(int32_t lo, int32_t hi) { return lo + static_cast<int32_t>(below(static_cast<uint64_t>(hi - lo))); }
  double uniform() { return static_cast<double>(next() >> 11) * (1.0 / 9007199254740992.0); }
  // k distinct values from [lo, hi), in draw order.
  std::vector<int32_t> distinct(int32_t lo, int32_t hi, int32_t k) {
    std::vector<int32_t> pool(hi - lo);
    std::iota(pool.begin(), pool.end(), lo);
    for (int32_t i = 0; i < k; ++i) std::swap(pool[i], pool[i + below(pool.size() - i)]);
    pool.resize(k);
    return pool;
  }

 private:
  static uint64_t mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  uint64_t s_;
};

TaskBatch empty_batch(int32_t batch, int32_t seq_len) {
  SEQMIX_CHECK(batch >= 1 && seq_len >= 1, "task batch and seq_len must be >= 1 (got ", batch, ", ", seq_len, ")");
  TaskBatch b;
  b.batch = batch;
  b.seq_len = seq_len;
  b.inputs.assign(static_cast<size_t>(batch) * seq_len, 0);
  b.targets.assign(static_cast<size_t>(batch) * seq_len, kIgnoreIndex);
  return b;
}

}  // namespace

int64_t TaskBatch::scored() const {
  return std::count_if(targets.begin(), targets.end(), [](int32_t t) { return t != kIgnoreIndex; });
}

TaskBatch make_mqar(const MqarConfig& c, int32_t batch, uint64_t seed, int64_t first_example) {
  SEQMIX_CHECK(c.seq_len % 2 == 0, "mqar: seq_len must be even, got ", c.seq_len);
  SEQMIX_CHECK(c.vocab_size > c.seq_len, "mqar: vocab_size (", c.vocab_size, ") must exceed seq_len (", c.seq_len, ")");
  SEQMIX_CHECK(c.num_kv_pairs >= 1 && 4 * c.num_kv_pairs <= c.seq_len, "mqar: need 1 <= 4 * num_kv_pairs <= seq_len (",
               c.num_kv_pairs, " pairs, seq_len ", c.seq_len, ")");
  SEQMIX_CHECK(c.power_a > 0, "mqar: power_a must be > 0");
  const int32_t half = c.vocab_size / 2, ctx = 2 * c.num_kv_pairs, space = (c.seq_len - ctx) / 2;
  SEQMIX_CHECK(half - 1 >= c.num_kv_pairs, "mqar: vocab_size too small for ", c.num_kv_pairs, " distinct keys");
  std::vector<double> weight(space);
  for (int32_t g = 0; g < space; ++g) weight[g] = c.power_a * std::pow(g + 1.0, c.power_a - 1.0);
  TaskBatch b = empty_batch(batch, c.seq_len);
  for (int32_t e = 0; e < batch; ++e) {
    Rng rng(seed, 1, first_example + e);
    int32_t* in = b.inputs.data() + static_cast<size_t>(e) * c.seq_len;
    int32_t* tg = b.targets.data() + static_cast<size_t>(e) * c.seq_len;
    const auto keys = rng.distinct(1, half, c.num_kv_pairs);
    const auto vals = rng.distinct(half, c.vocab_size, c.num_kv_pairs);
    for (int32_t k = 0; k < c.num_kv_pairs; ++k) {
      in[2 * k] = keys[k];
      in[2 * k + 1] = vals[k];
    }
    // Gaps without replacement, each draw proportional to the remaining weights.
    std::vector<double> w = weight;
    double total = std::accumulate(w.begin(), w.end(), 0.0);
    for (int32_t k = 0; k < c.num_kv_pairs; ++k) {
      double u = rng.uniform() * total;
      int32_t g = 0;
      for (; g < space - 1; ++g) {
        if (w[g] <= 0) continue;
        if (u < w[g]) break;
        u -= w[g];
      }
      while (w[g] <= 0) --g;  // rounding at the end: the last remaining gap
      total -= w[g];
      w[g] = 0;
      const int32_t pos = ctx + 2 * g;
      in[pos] = keys[k];
      tg[pos] = vals[k];
    }
    if (c.random_non_queries)
      for (int32_t p = ctx; p < c.seq_len; ++p)
        if (tg[p] == kIgnoreIndex) in[p] = rng.range(0, c.vocab_size);
  }
  return b;
}

TaskBatch make_selective_copy(const SelectiveCopyConfig& c, int32_t batch, uint64_t seed, int64_t first_example) {
  SEQMIX_CHECK(c.vocab_size >= 3, "selective_copy: vocab_size must be >= 3 (blank, marker, data)");
  SEQMIX_CHECK(c.num_tokens >= 1 && 2 * c.num_tokens <= c.seq_len, "selective_copy: need 1 <= 2 * num_tokens <= seq_len");
  const int32_t region = c.seq_len - c.num_tokens;
  TaskBatch b = empty_batch(batch, c.seq_len);
  for (int32_t e = 0; e < batch; ++e) {
    Rng rng(seed, 2, first_example + e);
    int32_t* in = b.inputs.data() + static_cast<size_t>(e) * c.seq_len;
    int32_t* tg = b.targets.data() + static_cast<size_t>(e) * c.seq_len;
    auto pos = rng.distinct(0, region, c.num_tokens);
    std::sort(pos.begin(), pos.end());
    for (int32_t j = 0; j < c.num_tokens; ++j) {
      const int32_t d = rng.range(2, c.vocab_size);
      in[pos[j]] = d;
      in[region + j] = 1;
      tg[region + j] = d;
    }
  }
  return b;
}

TaskBatch make_induction(const InductionConfig& c, int32_t batch, uint64_t seed, int64_t first_example) {
  SEQMIX_CHECK(c.vocab_size >= 3, "induction: vocab_size must be >= 3");
  SEQMIX_CHECK(c.seq_len >= 4, "induction: seq_len must be >= 4");
  const int32_t trigger = c.vocab_size - 1;
  TaskBatch b = empty_batch(batch, c.seq_len);
  for (int32_t e = 0; e < batch; ++e) {
    Rng rng(seed, 3, first_example + e);
    int32_t* in = b.inputs.data() + static_cast<size_t>(e) * c.seq_len;
    int32_t* tg = b.targets.data() + static_cast<size_t>(e) * c.seq_len;
    for (int32_t p = 0; p < c.seq_len; ++p) in[p] = rng.range(0, trigger);
    const int32_t i = rng.range(0, c.seq_len - 2);  // trigger at i, answer at i + 1 < seq_len - 1
    in[i] = trigger;
    in[c.seq_len - 1] = trigger;
    tg[c.seq_len - 1] = in[i + 1];
  }
  return b;
}

TaskBatch make_passkey(const PasskeyConfig& c, int32_t batch, uint64_t seed, int64_t first_example) {
  SEQMIX_CHECK(c.vocab_size >= 13, "passkey: vocab_size must be >= 13 (2 markers, 10 digits, filler)");
  SEQMIX_CHECK(c.digits >= 1, "passkey: digits must be >= 1");
  SEQMIX_CHECK(c.seq_len >= 2 * c.digits + 2, "passkey: seq_len must be >= 2 * digits + 2");
  SEQMIX_CHECK(c.depth <= 1.0, "passkey: depth must be in [0, 1] (or < 0 for random)");
  const int32_t k = c.digits, L = c.seq_len, tail = k, room = L - tail - (k + 1);  // needle start in [0, room]
  TaskBatch b = empty_batch(batch, L);
  for (int32_t e = 0; e < batch; ++e) {
    Rng rng(seed, 4, first_example + e);
    int32_t* in = b.inputs.data() + static_cast<size_t>(e) * L;
    int32_t* tg = b.targets.data() + static_cast<size_t>(e) * L;
    for (int32_t p = 0; p < L; ++p) in[p] = rng.range(12, c.vocab_size);
    std::vector<int32_t> d(k);
    for (auto& x : d) x = 2 + rng.range(0, 10);
    const double depth = c.depth < 0 ? rng.uniform() : c.depth;
    const int32_t at = std::clamp(static_cast<int32_t>(std::lround(depth * room)), 0, room);
    in[at] = 0;
    for (int32_t j = 0; j < k; ++j) in[at + 1 + j] = d[j];
    const int32_t q = L - tail;
    in[q] = 1;
    for (int32_t j = 0; j + 1 < k; ++j) in[q + 1 + j] = d[j];
    for (int32_t j = 0; j < k; ++j) tg[q + j] = d[j];
  }
  return b;
}

TaskBatch make_passkey_text(const Tokenizer& tok, int32_t seq_len, int32_t batch, uint64_t seed, double depth,
                            int32_t digits, int64_t first_example) {
  SEQMIX_CHECK(digits >= 1 && digits <= 18, "passkey_text: digits must be in [1, 18]");
  const std::vector<int32_t> filler =
      tok.encode(" The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.");
  const std::vector<int32_t> question = tok.encode(" What is the pass key? The pass key is");
  TaskBatch b = empty_batch(batch, seq_len);
  for (int32_t e = 0; e < batch; ++e) {
    Rng rng(seed, 5, first_example + e);
    std::string key(1, static_cast<char>('1' + rng.below(9)));
    for (int32_t j = 1; j < digits; ++j) key.push_back(static_cast<char>('0' + rng.below(10)));
    const std::vector<int32_t> needle = tok.encode(" The pass key is " + key + ". Remember it. " + key + " is the pass key.");
    const std::vector<int32_t> answer = tok.encode(" " + key);
    for (int32_t a : answer)
      SEQMIX_CHECK(a != tok.unk_id(), "passkey_text: the tokenizer maps the pass key \"", key,
                   "\" to its unknown id; use a byte or bpe tokenizer (or the token-level passkey task)");
    const int64_t fixed = static_cast<int64_t>(needle.size() + question.size() + answer.size()) - 1;
    SEQMIX_CHECK(fixed < seq_len, "passkey_text: seq_len ", seq_len, " is too short for the needle and question (",
                 fixed + 1, " tokens)");
    const int64_t n_fill = seq_len - fixed;
    std::vector<int32_t> fill;
    while (static_cast<int64_t>(fill.size()) < n_fill) fill.insert(fill.end(), filler.begin(), filler.end());
    fill.resize(n_fill);
    const double d = depth < 0 ? rng.uniform() : depth;
    // The needle goes at a filler-sentence boundary near the requested depth.
    int64_t at = std::clamp<int64_t>(std::llround(d * n_fill), 0, n_fill);
    at -= at % static_cast<int64_t>(std::max<size_t>(filler.size(), 1));
    std::vector<int32_t> seq(fill.begin(), fill.begin() + at);
    seq.insert(seq.end(), needle.begin(), needle.end());
    seq.insert(seq.end(), fill.begin() + at, fill.end());
    seq.insert(seq.end(), question.begin(), question.end());
    const size_t q_end = seq.size();
    seq.insert(seq.end(), answer.begin(), answer.end() - 1);
    int32_t* in = b.inputs.data() + static_cast<size_t>(e) * seq_len;
    int32_t* tg = b.targets.data() + static_cast<size_t>(e) * seq_len;
    std::copy(seq.begin(), seq.end(), in);
    for (size_t j = 0; j < answer.size(); ++j) tg[q_end - 1 + j] = answer[j];
  }
  return b;
}

double task_accuracy(const TaskBatch& b, const int32_t* pred, double* exact) {
  int64_t right = 0, total = 0, ex_right = 0;
  for (int32_t e = 0; e < b.batch; ++e) {
    bool all = true;
    for (int32_t p = 0; p < b.seq_len; ++p) {
      const size_t i = static_cast<size_t>(e) * b.seq_len + p;
      if (b.targets[i] == kIgnoreIndex) continue;
      ++total;
      if (pred[i] == b.targets[i]) ++right;
      else all = false;
    }
    ex_right += all;
  }
  if (exact) *exact = b.batch ? static_cast<double>(ex_right) / b.batch : 0.0;
  return total ? static_cast<double>(right) / static_cast<double>(total) : 0.0;
}

TaskBatch make_task(const std::string& name, const std::map<std::string, std::string>& params, int32_t batch,
                    uint64_t seed, int64_t first_example) {
  std::map<std::string, bool> used;
  auto num = [&](const char* key, double def) {
    auto it = params.find(key);
    if (it == params.end()) return def;
    used[key] = true;
    try {
      size_t pos = 0;
      double v = std::stod(it->second, &pos);
      if (pos == it->second.size()) return v;
    } catch (...) {
    }
    SEQMIX_FAIL("task ", name, ": parameter ", key, " needs a number, got \"", it->second, "\"");
  };
  auto i32 = [&](const char* key, int32_t def) { return static_cast<int32_t>(num(key, def)); };
  TaskBatch b;
  if (name == "mqar") {
    MqarConfig c;
    c.vocab_size = i32("vocab_size", c.vocab_size);
    c.seq_len = i32("seq_len", c.seq_len);
    c.num_kv_pairs = i32("num_kv_pairs", c.num_kv_pairs);
    c.power_a = num("power_a", c.power_a);
    b = make_mqar(c, batch, seed, first_example);
  } else if (name == "selective_copy") {
    SelectiveCopyConfig c;
    c.vocab_size = i32("vocab_size", c.vocab_size);
    c.seq_len = i32("seq_len", c.seq_len);
    c.num_tokens = i32("num_tokens", c.num_tokens);
    b = make_selective_copy(c, batch, seed, first_example);
  } else if (name == "induction") {
    InductionConfig c;
    c.vocab_size = i32("vocab_size", c.vocab_size);
    c.seq_len = i32("seq_len", c.seq_len);
    b = make_induction(c, batch, seed, first_example);
  } else if (name == "passkey") {
    PasskeyConfig c;
    c.vocab_size = i32("vocab_size", c.vocab_size);
    c.seq_len = i32("seq_len", c.seq_len);
    c.digits = i32("digits", c.digits);
    c.depth = num("depth", c.depth);
    b = make_passkey(c, batch, seed, first_example);
  } else {
    SEQMIX_FAIL("unknown task \"", name, "\"; use one of: mqar, selective_copy, induction, passkey");
  }
  for (const auto& [k, v] : params)
    SEQMIX_CHECK(used.count(k), "task ", name, ": unknown parameter \"", k, "\"");
  return b;
}

}  // namespace seqmix::data
