// GEMM and convolution kernel benchmark (CUDA): bf16 cuBLASLt GEMMs at 4096^3 and 8192^3, FFT long
// convolution and the short causal conv1d, forward and backward. bench/torch_gemm.py measures the
// same operations in PyTorch and prints the same table for a side-by-side comparison.
#pragma once
#include <string>
#include <vector>

namespace seqmix::bench {

// seqmix bench gemm [--sizes 4096,8192] [--iters N] [--warmup N] [--no-conv] [--no-gemm]
//   --sizes    square GEMM sizes (default 4096,8192), each timed as C = A B and C = A B^T (bf16 in/out,
//              f32 accumulation)
//   --iters N  timed runs per measurement (default 50, at least 20); the median is reported
//   --warmup N untimed runs first (default 10)
//   --no-conv  skip fft_conv (B=4, T=4096, C=1024, L=4096) and conv1d (K=4) forward/backward
//   --no-gemm  skip the GEMMs
// Prints one JSON object per measurement, then an aligned table (ms, TFLOP/s, GB/s). Returns 0, or 1
// with a message on stderr (no CUDA device, bad arguments).
int gemm_main(const std::vector<std::string>& args);

}  // namespace seqmix::bench
