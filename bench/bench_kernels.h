// Kernel benchmark: memory-bound CUDA kernels against the device-copy rate, plus host overheads.
#pragma once
#include <string>
#include <vector>

namespace seqmix::bench {

// seqmix_bench kernels [--n N] [--reps R] [--inner K] [--dtype f32|bf16|all] [--only a,b,...]
//   --n N        elements of the elementwise / row benchmarks (default 64M = 67108864)
//   --reps R     timed repetitions, the median is reported (default 20, at least 20 advised)
//   --inner K    launches per timed repetition (default 5): the GPU time between two events / K
//   --dtype D    f32, bf16 or all (default all)
//   --only LIST  comma-separated subset of: copy, add, gelu_fwd, gelu_bwd, softmax_fwd, rmsnorm_fwd,
//                rmsnorm_bwd, ce_fwd, ce_bwd, launch, autograd
// Prints one JSON object per measurement (name, dtype, elements, time_us, gbps, frac_copy), then a
// table. GB/s counts the bytes each op must read and write once. Returns 0, or 1 with a message.
int kernels_main(const std::vector<std::string>& args);

}  // namespace seqmix::bench
