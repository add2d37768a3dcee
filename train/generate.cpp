#include "train/generate.h"

#include <algorithm>
#include <cmath>

namespace seqmix::train {

int32_t sample_from_logits(const std::vector<float>& l, const SamplingOptions& opt, double u) {
  if (opt.temperature == 0) return int32_t(std::max_element(l.begin(), l.end()) - l.begin());
  std::vector<std::pair<double, int32_t>> p;
  double m = *std::max_element(l.begin(), l.end());
  for (size_t j = 0; j < l.size(); ++j) p.emplace_back(std::exp((double(l[j]) - m) / opt.temperature), int32_t(j));
  // largest first; ties by id, so the order (and the draw) is deterministic
  std::sort(p.begin(), p.end(), [](auto& x, auto& y) { return x.first > y.first || (x.first == y.first && x.second < y.second); });
  if (opt.top_k > 0 && size_t(opt.top_k) < p.size()) p.resize(size_t(opt.top_k));
  double total = 0;
  for (auto& e : p) total += e.first;
  if (opt.top_p < 1.0) {
    double acc = 0;
    size_t keep = 0;
    while (keep < p.size() && acc < opt.top_p * total) acc += p[keep++].first;
    p.resize(std::max<size_t>(keep, 1));
    total = acc;
  }
  double target = u * total, acc = 0;
  for (auto& e : p) {
    acc += e.first;
    if (target <= acc) return e.second;
  }
  return p.back().second;
}

std::vector<int32_t> generate(const LanguageModel& model, const std::vector<int32_t>& prompt, const SamplingOptions& opt,
                              Device device) {
  SEQMIX_CHECK(!prompt.empty(), "generate: the prompt encodes to no tokens");
  SEQMIX_CHECK(opt.temperature >= 0, "generate: temperature must be >= 0");
  SEQMIX_CHECK(opt.top_p > 0 && opt.top_p <= 1, "generate: top_p must be in (0, 1]");
  autograd::NoGradGuard ng;
  GenerationState st = model.init_generation(1, int64_t(prompt.size()) + opt.max_new_tokens);
  Tensor logits = model.step(Tensor::from_vector(prompt, {1, int64_t(prompt.size())}, device), st);
  Generator gen(opt.seed);
  std::vector<int32_t> out;
  for (int64_t i = 0; i < opt.max_new_tokens; ++i) {
    double u = double(philox_uniform(gen.seed, gen.take(1), 0));
    int32_t next = sample_from_logits(logits.to(DType::F32).to_vector<float>(), opt, u);
    out.push_back(next);
    if (i + 1 < opt.max_new_tokens) logits = model.step(Tensor::from_vector(std::vector<int32_t>{next}, {1, 1}, device), st);
  }
  return out;
}

}  // namespace seqmix::train
