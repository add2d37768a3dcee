// seqmix_bench: one entry per benchmark family; each prints JSON lines and a table.
#include <cstdio>
#include <string>
#include <vector>

#include "bench/bench_attention.h"
#include "bench/bench_delta.h"
#include "bench/bench_gemm.h"
#include "bench/bench_kernels.h"
#include "bench/bench_recurrence.h"
#include "bench/bench_step.h"
#include "bench/bench_tokenizer.h"
#include "core/error.h"

int main(int argc, char** argv) {
  const char* usage =
      "usage: seqmix_bench <family> [options]\n"
      "  kernels    memory-bound kernels vs the device copy rate, op launch and autograd overhead\n"
      "  gemm       bf16 GEMM TFLOP/s, FFT and short convolutions\n"
      "  attention  causal attention forward/backward\n"
      "  tokenizer  BPE training time and tokenizer throughput\n"
      "  recurrence chunked gated-linear-recurrence engine forward/backward\n"
      "  delta      fused chunked delta-rule kernel vs the op composition, forward/backward\n"
      "  step       full training steps of a config's model: tokens/s, MFU, peak memory\n";
  if (argc < 2) {
    std::fputs(usage, stderr);
    return 2;
  }
  std::string family = argv[1];
  std::vector<std::string> args(argv + 2, argv + argc);
  try {
    if (family == "kernels") return seqmix::bench::kernels_main(args);
    if (family == "gemm") return seqmix::bench::gemm_main(args);
    if (family == "attention") return seqmix::bench::attention_main(args);
    if (family == "tokenizer") return seqmix::bench::tokenizer_main(args);
    if (family == "step") return seqmix::bench::step_main(args);
    if (family == "recurrence") return seqmix::bench::recurrence_main(args);
    if (family == "delta") return seqmix::bench::delta_main(args);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "seqmix_bench %s: error: %s\n", family.c_str(), e.what());
    return 1;
  }
  std::fprintf(stderr, "unknown benchmark family '%s'\n%s", family.c_str(), usage);
  return 2;
}
