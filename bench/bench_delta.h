// Delta-rule benchmark (CUDA): the fused chunked kernel of layers/mixers/common/delta_rule_cuda.cu against the
// chunked op composition of delta_rule(), forward and forward+backward, bf16 inputs, at B=4 T=4096 H=16
// Dk=Dv=128 for gated_deltanet (per-head log decay) and deltanet (none); the same for rwkv7's generalized rule
// (the fused recurrent kernel of generalized_delta_cuda.cu against generalized_delta_rule's op composition);
// plus the time per token of the kernels at T=65,536 B=1 against T=4,096 B=1 (the cost must be linear in length).
#pragma once
#include <string>
#include <vector>

namespace seqmix::bench {

// seqmix_bench delta [--B 4] [--T 4096] [--H 16] [--D 128] [--long 65536] [--kinds gated,plain,rwkv7]
//                    [--iters N] [--warmup N] [--no-check] [--no-long] [--no-ops]
//   --B, --T, --H   batch, length and heads of the main table (default 4, 4096, 16)
//   --D             head dim, Dk = Dv (default 128)
//   --long          the long length of the scaling table (default 65536; B=1), compared with --T at B=1
//   --kinds         gated (gated_deltanet: per-head decay), plain (deltanet), rwkv7 (the generalized rule with
//                   rwkv7's per-channel decays); default gated,plain,rwkv7
//   --iters N       timed runs per measurement (default 10); the median is reported
//   --warmup N      untimed runs first (default 2)
//   --no-check      skip the check of the kernel against the CPU reference (B=1 T=200 H=2, same D) done first
//   --no-long       skip the scaling table
//   --no-ops        skip timing the op composition
// Prints one JSON object per measurement, then a table. Returns 0, or 1 with a message on stderr.
int delta_main(const std::vector<std::string>& args);

}  // namespace seqmix::bench
