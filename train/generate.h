// Sampling from a language model with its incremental (KV-cache / recurrent-state) forms.
#pragma once
#include <cstdint>
#include <vector>

#include "models/lm.h"

namespace seqmix::train {

struct SamplingOptions {
  int64_t max_new_tokens = 50;
  double temperature = 1.0;  // 0: greedy
  int64_t top_k = 0;         // 0: off
  double top_p = 1.0;        // 1: off
  uint64_t seed = 0;
};

// Feeds `prompt` once, then one token per step; returns the new tokens. Deterministic for a seed.
std::vector<int32_t> generate(const LanguageModel& model, const std::vector<int32_t>& prompt, const SamplingOptions& opt,
                              Device device);

// Picks a token from logits (host, one row) with temperature, top-k and top-p; `u` uniform in (0, 1).
int32_t sample_from_logits(const std::vector<float>& logits, const SamplingOptions& opt, double u);

}  // namespace seqmix::train
