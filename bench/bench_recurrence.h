// Gated linear recurrence benchmark (CUDA): the chunked kernel of layers/mixers/common/linear_recurrence.cu,
// forward and forward+backward, bf16, at B=4 T=4096 H=16 Dk=Dv=128 for per-channel decay (gla; hgrn2: a
// lower-bounded forget gate f and keys 1 - f), RetNet's fixed per-head decays (retnet), a data-dependent
// per-head decay (simple_gla) and no decay (linear attention), plus
// the time per token at T=65,536 B=1 against T=4,096
// B=1 (the cost must be linear in length). bench/torch_recurrence.py runs a plain PyTorch chunked
// implementation on the same shapes and prints the same table.
#pragma once
#include <string>
#include <vector>

namespace seqmix::bench {

// seqmix bench recurrence [--B 4] [--T 4096] [--H 16] [--D 128] [--long 65536] [--kinds gla,hgrn2,retnet,linear_attention,simple_gla]
//                         [--iters N] [--warmup N] [--no-check] [--no-long] [--compare-ffma]
//   --B, --T, --H   batch, length and heads of the main table (default 4, 4096, 16)
//   --D             head dim, Dk = Dv (default 128)
//   --long          the long length of the scaling table (default 65536; B=1), compared with --T at B=1
//   --kinds         which recurrences (default all five)
//   --compare-ffma  also time the tensor-core and the FFMA chunk kernels, forced (SEQMIX_LR_TC=1 / 0)
//   --iters N       timed runs per measurement (default 20, at least 10); the median is reported
//   --warmup N      untimed runs first (default 3)
//   --no-check      skip the check against the CPU reference (B=1 T=200 H=2, same D) done before timing
//   --no-long       skip the scaling table
// FLOPs are those the chunked algorithm executes (chunk C = 64, full C x C blocks, 2 per multiply-add):
// forward 2 C (Dk + Dv) + 4 Dk Dv per token and head, backward 2 C (3 Dk + 2 Dv) + 8 Dk Dv.
// Prints one JSON object per measurement, then aligned tables. Returns 0, or 1 with a message on stderr.
int recurrence_main(const std::vector<std::string>& args);

}  // namespace seqmix::bench
