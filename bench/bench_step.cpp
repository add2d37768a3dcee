#include "bench/bench_step.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>

#include "models/lm.h"
#include "train/grad_norm.h"
#include "train/optimizer.h"
#include "train/trainer.h"
#ifdef SEQMIX_WITH_CUDA
#include "core/cuda/kernel_trace.h"
#include "core/cuda/runtime.h"
#endif

namespace seqmix::bench {

namespace {
void sync(Device d) {
#ifdef SEQMIX_WITH_CUDA
  if (d.is_cuda()) cuda::synchronize();
#endif
  (void)d;
}
}  // namespace

int step_main(const std::vector<std::string>& argv) {
  std::map<std::string, std::string> a{{"config", "configs/gpt2-124m.yaml"}, {"batch", "16"}, {"seq", "1024"}, {"vocab", "50304"},
                                       {"steps", "20"}, {"warmup", "5"}, {"device", "auto"}, {"peak-tflops", "989"},
                                       {"trace", ""}, {"peer", "0"}};
  for (size_t i = 0; i + 1 < argv.size(); i += 2) {
    SEQMIX_CHECK(argv[i].rfind("--", 0) == 0 && a.count(argv[i].substr(2)), "step: unknown option ", argv[i]);
    a[argv[i].substr(2)] = argv[i + 1];
  }
  int64_t B = std::stoll(a["batch"]), T = std::stoll(a["seq"]), V = std::stoll(a["vocab"]);
  int steps = std::stoi(a["steps"]), warmup = std::stoi(a["warmup"]);
  auto cfg = Config::load(a["config"]);
  ModelConfig mc = read_model_config(cfg->root().child("model"), V, T, 1);
  LanguageModel model(mc, cfg->root().child("model"));
  Device dev = train::resolve_device(a["device"]);
  DType compute = dev.is_cuda() ? DType::BF16 : DType::F32;
  model.to(dev);
  train::AdamW opt(model.named_parameters(), train::AdamWConfig{});
  Generator g(7);
  Tensor ids = (rand({B, T + 1}, g) * double(V - 1)).to(DType::I32);
  Tensor in = ids.narrow(1, 0, T).contiguous(), tg = ids.narrow(1, 1, T).contiguous();
  double loss = 0;
  if (dev.is_cuda()) cuda::reset_peak(dev.index);
  // `n` timed steps after `warm` untimed ones; sorted step times in seconds
  auto run_steps = [&](int warm, int n) {
    std::vector<double> times;
    for (int s = 0; s < warm + n; ++s) {
      sync(dev);
      auto t0 = std::chrono::steady_clock::now();
      {
        ComputeDtypeGuard cg(compute);
        // the batch is uploaded each step, as in training (pinned staging + async copy on the GPU)
        Tensor din = in, dtg = tg;
#ifdef SEQMIX_WITH_CUDA
        if (dev.is_cuda()) {
          din = Tensor::empty(in.shape(), DType::I32, dev);
          dtg = Tensor::empty(tg.shape(), DType::I32, dev);
          cuda::upload_async(in.data_ptr(), in.nbytes(), din);
          cuda::upload_async(tg.data_ptr(), tg.nbytes(), dtg);
        }
#endif
        Tensor l = model.loss(din, dtg);
        l.backward();
        train::clip_grad_norm(model.parameters(), 1.0);  // one host sync, as in training
        opt.step(1e-4);
        opt.zero_grad();
        if (s == warm + n - 1) loss = l.item();
      }
      sync(dev);
      double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (s >= warm) times.push_back(dt);
    }
    std::sort(times.begin(), times.end());
    return times;
  };
  std::vector<double> times = run_steps(warmup, 0);
#ifdef SEQMIX_WITH_CUDA
  if (!a["trace"].empty()) {
    SEQMIX_CHECK(dev.is_cuda(), "step: --trace needs a GPU");
    cuda::kernel_trace_start();
  }
#endif
  times = run_steps(0, steps);
#ifdef SEQMIX_WITH_CUDA
  if (!a["trace"].empty()) {
    cuda::KernelTraceSummary ks = cuda::kernel_trace_stop(a["trace"], steps);
    std::printf("kernel trace -> %s: per step span %.3f ms, GPU busy %.3f ms (%lld records, %lld dropped)\n", a["trace"].c_str(),
                ks.span_ms / steps, ks.busy_ms / steps, (long long)ks.records, (long long)ks.dropped);
  }
  if (a["peer"] == "1") {
    // the same steps again once this GPU and the others map each other's memory (as under NCCL's P2P transport)
    SEQMIX_CHECK(dev.is_cuda(), "step: --peer needs a GPU");
    double before = times[times.size() / 2];
    int peers = cuda::enable_peer_access();
    std::vector<double> after = run_steps(warmup, steps);
    std::printf("peer access: %d peer(s); median step %.3f ms before, %.3f ms after (%+.2f%%)\n", peers, before * 1e3,
                after[after.size() / 2] * 1e3, 100.0 * (after[after.size() / 2] / before - 1));
  }
#endif
  double med = times[times.size() / 2];
  double tok_s = double(B * T) / med;
  double flops = 3.0 * model.flops_per_token(T) * double(B * T);
  double peak = std::stod(a["peak-tflops"]) * 1e12;
  double mem_gib = dev.is_cuda() ? double(cuda::stats(dev.index).peak_bytes) / double(1 << 30) : 0.0;
  std::printf("{\"bench\": \"step\", \"config\": \"%s\", \"device\": \"%s\", \"params\": %lld, \"batch\": %lld, \"seq\": %lld, "
              "\"ms_per_step\": %.3f, \"tok_per_s\": %.0f, \"tflops\": %.1f, \"mfu\": %.4f, \"peak_mem_gib\": %.2f, \"loss\": %.4f}\n",
              a["config"].c_str(), dev.str().c_str(), (long long)model.num_parameters(), (long long)B, (long long)T, med * 1e3,
              tok_s, flops / med / 1e12, flops / med / peak, mem_gib, loss);
  std::printf("%-28s %10s %12s %10s %8s %12s\n", "model step", "ms/step", "tok/s", "TFLOP/s", "MFU", "peak GiB");
  std::printf("%-28s %10.2f %12.0f %10.1f %7.1f%% %12.2f\n", ("seqmix " + std::to_string(model.num_parameters() / 1000000) + "M").c_str(),
              med * 1e3, tok_s, flops / med / 1e12, 100 * flops / med / peak, mem_gib);
  return 0;
}

}  // namespace seqmix::bench
