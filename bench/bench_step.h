#pragma once
#include <string>
#include <vector>

namespace seqmix::bench {
// seqmix_bench step --config CONFIG [--batch B] [--seq T] [--vocab V] [--steps N] [--warmup W] [--device cpu|cuda]
// Times full training steps (forward, backward, clip, AdamW) of the config's model on random tokens:
// tokens/s, ms/step, model FLOP utilization and peak device memory.
int step_main(const std::vector<std::string>& args);
}  // namespace seqmix::bench
