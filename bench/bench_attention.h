// Causal attention benchmark (CUDA): the fused flash-style kernels of layers/mixers/attention, forward,
// backward and forward+backward, bf16, at B=4 T=4096 H=16 D=128 and the same number of tokens at other
// lengths. bench/torch_attention.py measures torch's scaled_dot_product_attention (flash and cuDNN
// backends) on the same shapes, prints the same table, and checks our outputs and gradients against its
// own on the inputs `--dump` writes.
#pragma once
#include <string>
#include <vector>

namespace seqmix::bench {

// seqmix bench attention [--T 1024,2048,4096,8192,16384] [--tokens 16384] [--H 16] [--hkv 16] [--D 128]
//                        [--window 0] [--iters N] [--warmup N] [--no-check] [--dump DIR]
//   --T        sequence lengths (default 1024,2048,4096,8192,16384); B = tokens / T
//   --tokens   B * T, constant across lengths (default 16384: B=4 at T=4096)
//   --H, --hkv query and kv heads (default 16 and 16), --D head dim (default 128)
//   --window   sliding window (default 0: plain causal)
//   --iters N  timed runs per measurement (default 20, at least 10); the median is reported
//   --warmup N untimed runs first (default 5)
//   --no-check skip the check against the CPU reference (B=1 T=512, same H/hkv/D/window) done before timing
//   --dump DIR write q, k, v, dout (inputs) and o, lse, dq, dk, dv (ours) for B=2 T=1024 (raw little-endian
//              bf16 / f32, layout [B, T, H, D], lse [B, H, T]) plus meta.json, for
//              `python bench/torch_attention.py --check DIR`
// FLOPs (causal): forward 4 B H T^2 D / 2, backward 2.5x forward. Prints one JSON object per
// measurement, then an aligned table. Returns 0, or 1 with a message on stderr.
int attention_main(const std::vector<std::string>& args);

}  // namespace seqmix::bench
