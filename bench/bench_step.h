#pragma once
#include <string>
#include <vector>

namespace seqmix::bench {
// seqmix_bench step --config CONFIG [--batch B] [--seq T] [--vocab V] [--steps N] [--warmup W] [--device cpu|cuda]
//                     [--trace FILE.csv] [--peer 1]
// Times full training steps (forward, backward, clip, AdamW) of the config's model on random tokens:
// tokens/s, ms/step, model FLOP utilization and peak device memory.
//   --trace FILE.csv  the GPU time of every kernel over the timed steps (core/cuda/kernel_trace.h)
//   --peer 1          time the steps again once this GPU and the others map each other's memory (peer access,
//                     as NCCL's peer-to-peer transport sets it up), to see what that mapping costs
int step_main(const std::vector<std::string>& args);
}  // namespace seqmix::bench
