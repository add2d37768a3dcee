// Kernel benchmark (see bench_kernels.h). GPU times come from cudaEvents around K launches on the
// current stream (the queue stays full, so host work between launches is hidden), after a warm-up;
// the median of R repetitions is reported. Host overheads are wall-clock times.
#include "bench/bench_kernels.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <iostream>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/kernels.h"
#include "core/ops.h"
#include "train/optimizer.h"
#ifdef SEQMIX_WITH_CUDA
#include "core/cuda/cuda_check.h"
#include "core/cuda/runtime.h"
#endif

namespace seqmix::bench {

#ifdef SEQMIX_WITH_CUDA
namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct Row {
  std::string name, dtype;
  int64_t elements = 0;
  double time_us = 0;
  double bytes = 0;  // 0: not a bandwidth measurement
  double gbps() const { return bytes > 0 && time_us > 0 ? bytes / (time_us * 1e3) : 0; }
  double frac = 0;
  std::string note;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Median GPU time in microseconds of one call of fn.
double time_gpu_us(const std::function<void()>& fn, int reps, int inner) {
  cudaStream_t s = cuda::current_stream();
  cudaEvent_t a, b;
  SEQMIX_CUDA_CHECK(cudaEventCreate(&a));
  SEQMIX_CUDA_CHECK(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) fn();  // warm-up: caches, allocator bins, occupancy queries
  cuda::synchronize();
  std::vector<double> times;
  for (int r = 0; r < reps; ++r) {
    SEQMIX_CUDA_CHECK(cudaEventRecord(a, s));
    for (int k = 0; k < inner; ++k) fn();
    SEQMIX_CUDA_CHECK(cudaEventRecord(b, s));
    SEQMIX_CUDA_CHECK(cudaEventSynchronize(b));
    float ms = 0;
    SEQMIX_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    times.push_back(double(ms) * 1e3 / inner);
  }
  SEQMIX_CUDA_CHECK(cudaEventDestroy(a));
  SEQMIX_CUDA_CHECK(cudaEventDestroy(b));
  return median(times);
}

std::string json_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\';
    o += c;
  }
  return o;
}

void print_json(const Row& r, const std::string& device) {
  std::ostringstream os;
  os.precision(6);
  os << "{\"bench\":\"kernels\",\"name\":\"" << r.name << "\",\"dtype\":\"" << r.dtype << "\",\"elements\":" << r.elements
     << ",\"time_us\":" << r.time_us;
  if (r.bytes > 0) os << ",\"gbps\":" << r.gbps() << ",\"frac_copy\":" << r.frac;
  if (!r.note.empty()) os << ",\"note\":\"" << json_escape(r.note) << "\"";
  os << ",\"device\":\"" << json_escape(device) << "\"}";
  std::cout << os.str() << std::endl;
}

void print_table(const std::vector<Row>& rows) {
  std::printf("\n%-26s %-5s %12s %12s %9s %7s\n", "name", "dtype", "elements", "time (us)", "GB/s", "copy");
  std::printf("%s\n", std::string(76, '-').c_str());
  for (const Row& r : rows) {
    if (r.bytes > 0)
      std::printf("%-26s %-5s %12lld %12.2f %9.1f %6.0f%%\n", r.name.c_str(), r.dtype.c_str(), (long long)r.elements,
                  r.time_us, r.gbps(), 100.0 * r.frac);
    else
      std::printf("%-26s %-5s %12lld %12.2f %9s %7s  %s\n", r.name.c_str(), r.dtype.c_str(), (long long)r.elements,
                  r.time_us, "-", "-", r.note.c_str());
  }
  std::fflush(stdout);
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, sep))
    if (!item.empty()) out.push_back(item);
  return out;
}

Tensor uniform_tensor(const Shape& shape, DType dt, uint64_t seed, double lo, double hi) {
  Tensor t = empty(shape, dt, Device::cuda());
  kernels::uniform_(t, seed, 0, lo, hi);
  return t;
}

}  // namespace

int kernels_main(const std::vector<std::string>& args) {
  try {
    int64_t n = int64_t(1) << 26;
    int reps = 20, inner = 5;
    std::vector<DType> dtypes = {DType::BF16, DType::F32};
    std::set<std::string> only;
    for (size_t i = 0; i < args.size(); ++i) {
      auto value = [&]() -> std::string {
        SEQMIX_CHECK(i + 1 < args.size(), "bench kernels: ", args[i], " needs a value");
        return args[++i];
      };
      if (args[i] == "--n") n = std::stoll(value());
      else if (args[i] == "--reps") reps = std::stoi(value());
      else if (args[i] == "--inner") inner = std::stoi(value());
      else if (args[i] == "--dtype") {
        std::string d = value();
        if (d == "all") dtypes = {DType::BF16, DType::F32};
        else dtypes = {parse_dtype(d)};
      } else if (args[i] == "--only") {
        for (const std::string& s : split(value(), ',')) only.insert(s);
      } else {
        SEQMIX_FAIL("bench kernels: unknown argument '", args[i],
                    "' (use --n N, --reps R, --inner K, --dtype f32|bf16|all, --only a,b,...)");
      }
    }
    SEQMIX_CHECK(reps >= 1 && inner >= 1 && n >= 4096, "bench kernels: need --reps >= 1, --inner >= 1, --n >= 4096");
    SEQMIX_CHECK(cuda_available(), "bench kernels: no CUDA device is visible");
    auto want = [&](const std::string& name) { return only.empty() || only.count(name) > 0; };

    cuda::select_device(0);
    cudaDeviceProp prop{};
    SEQMIX_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    const std::string device = prop.name;
    std::cerr << "bench kernels on " << device << ": n = " << n << ", median of " << reps << " x " << inner
              << " launches" << std::endl;

    std::vector<Row> rows;
    auto emit = [&](Row r) {
      print_json(r, device);
      rows.push_back(std::move(r));
    };
    // Runs one bandwidth measurement; an op that is missing or fails is reported, not fatal.
    auto measure = [&](const std::string& name, DType dt, int64_t elements, double bytes, double copy_gbps,
                       const std::function<void()>& fn) {
      Row r{name, dtype_name(dt), elements};
      try {
        r.time_us = time_gpu_us(fn, reps, inner);
        r.bytes = bytes;
        r.frac = copy_gbps > 0 ? r.gbps() / copy_gbps : 1.0;
      } catch (const std::exception& e) {
        r.note = std::string("failed: ") + e.what();
        (void)cudaGetLastError();
      }
      emit(r);
      return r.gbps();
    };

    for (DType dt : dtypes) {
      const double es = double(dtype_size(dt));
      const double nb = double(n) * es;
      const int64_t D = 4096, rows_n = std::max<int64_t>(n / D, 1);
      double copy_gbps = 0;
      {
        Tensor src = uniform_tensor({n}, dt, 1, -1, 1), dst = empty({n}, dt, Device::cuda());
        // always measured: the reference rate of the "copy" column
        copy_gbps = measure("copy", dt, n, 2 * nb, 0, [&] { dst.copy_(src); });
      }
      if (want("add")) {
        Tensor a = uniform_tensor({n}, dt, 2, -1, 1), b = uniform_tensor({n}, dt, 3, -1, 1);
        measure("add", dt, n, 3 * nb, copy_gbps, [&] { kernels::binary(BinaryOp::Add, a, b); });
      }
      if (want("gelu_fwd") || want("gelu_bwd")) {
        Tensor x = uniform_tensor({n}, dt, 4, -3, 3), g = uniform_tensor({n}, dt, 5, -1, 1);
        if (want("gelu_fwd")) measure("gelu fwd", dt, n, 2 * nb, copy_gbps, [&] { kernels::unary(UnaryOp::Gelu, x); });
        if (want("gelu_bwd")) {
          Tensor y = kernels::unary(UnaryOp::Gelu, x);
          // the fast path reads g and x (not y) and writes dx
          measure("gelu bwd", dt, n, 3 * nb, copy_gbps, [&] { kernels::unary_backward(UnaryOp::Gelu, g, x, y); });
        }
      }
      if (want("softmax_fwd")) {
        Tensor x = uniform_tensor({rows_n, D}, dt, 6, -4, 4);
        measure("softmax fwd D=4096", dt, rows_n * D, 2 * double(rows_n * D) * es, copy_gbps,
                [&] { kernels::softmax(x); });
      }
      if (want("rmsnorm_fwd") || want("rmsnorm_bwd")) {
        Tensor x = uniform_tensor({rows_n, D}, dt, 7, -2, 2), w = uniform_tensor({D}, dt, 8, 0.5, 1.5);
        Tensor g = uniform_tensor({rows_n, D}, dt, 9, -1, 1);
        const double xb = double(rows_n * D) * es;
        if (want("rmsnorm_fwd"))
          measure("rmsnorm fwd D=4096", dt, rows_n * D, 2 * xb, copy_gbps, [&] { kernels::rmsnorm(x, w, 1e-6); });
        if (want("rmsnorm_bwd")) {
          try {
            NormResult r = kernels::rmsnorm(x, w, 1e-6);
            measure("rmsnorm bwd D=4096", dt, rows_n * D, 3 * xb, copy_gbps,
                    [&] { kernels::rmsnorm_backward(g, x, w, r.rstd, true); });
          } catch (const std::exception& e) {
            emit(Row{"rmsnorm bwd D=4096", dtype_name(dt), rows_n * D, 0, 0, 0, std::string("failed: ") + e.what()});
          }
        }
      }
      if (want("ce_fwd") || want("ce_bwd")) {
        const int64_t N = 8192, V = 50304;
        Tensor logits = uniform_tensor({N, V}, dt, 10, -4, 4);
        std::vector<int64_t> t(N);
        std::mt19937 rng(11);
        for (int64_t& v : t) v = int64_t(rng() % uint32_t(V));
        Tensor targets = Tensor::from_vector<int64_t>(t, {N}).cuda();
        const double lb = double(N * V) * es;
        if (want("ce_fwd"))
          measure("cross-entropy fwd V=50304", dt, N * V, lb, copy_gbps,
                  [&] { kernels::cross_entropy(logits, targets, -100); });
        if (want("ce_bwd")) {
          try {
            CrossEntropyResult r = kernels::cross_entropy(logits, targets, -100);
            Tensor gl = full({}, 1.0, DType::F32, Device::cuda());
            measure("cross-entropy bwd V=50304", dt, N * V, 2 * lb, copy_gbps,
                    [&] { kernels::cross_entropy_backward(logits, targets, r.lse, -100, gl, r.count); });
          } catch (const std::exception& e) {
            emit(Row{"cross-entropy bwd V=50304", dtype_name(dt), N * V, 0, 0, 0, std::string("failed: ") + e.what()});
          }
        }
      }
      if (dt == DType::F32 && want("adamw")) {
        // one fused AdamW step over n f32 parameters: reads p, g, m, v and writes p, m, v (28 B each)
        try {
          Tensor p = uniform_tensor({n / 1024, 1024}, DType::F32, 20, -1, 1);
          p.requires_grad_(true);
          p.set_grad(uniform_tensor({n / 1024, 1024}, DType::F32, 21, -1, 1));
          train::AdamW opt({{"w", p}}, train::AdamWConfig{});
          measure("adamw step", dt, n, 28.0 * double(n), copy_gbps, [&] { opt.step(1e-4); });
        } catch (const std::exception& e) {
          emit(Row{"adamw step", dtype_name(dt), n, 0, 0, 0, std::string("failed: ") + e.what()});
        }
      }
      cuda::synchronize();
      cuda::empty_cache();
    }

    if (want("launch")) {
      // Host cost of one op on tiny tensors: issue time of 1000 launches (async), then the total
      // including the wait for the GPU.
      Tensor a = ones({1000}, DType::F32, Device::cuda()), b = ones({1000}, DType::F32, Device::cuda());
      for (int i = 0; i < 100; ++i) add(a, b);
      cuda::synchronize();
      const int launches = 1000;
      for (int layer = 0; layer < 2; ++layer) {
        std::vector<double> issue, total;
        for (int r = 0; r < 5; ++r) {
          double t0 = now_s();
          for (int i = 0; i < launches; ++i) {
            if (layer == 0) add(a, b);
            else kernels::binary(BinaryOp::Add, a, b);
          }
          double t1 = now_s();
          cuda::synchronize();
          double t2 = now_s();
          issue.push_back((t1 - t0) * 1e6 / launches);
          total.push_back((t2 - t0) * 1e6 / launches);
        }
        const char* what = layer == 0 ? "ops::add" : "kernels::binary";
        emit(Row{std::string("launch tiny add (") + (layer == 0 ? "ops" : "kernel") + ")", "f32", 1000, median(issue), 0,
                 0, std::string("host time per launch of ") + what + " x1000, async"});
        emit(Row{std::string("launch tiny add + sync (") + (layer == 0 ? "ops" : "kernel") + ")", "f32", 1000,
                 median(total), 0, 0, "per launch, including the final synchronize"});
      }
    }

    if (want("autograd")) {
      // Build a 1000-op graph on small tensors (500 x (mul, add)), then run backward through it.
      Tensor x = full({16}, 0.5, DType::F32, Device::cuda());
      x.requires_grad_(true);
      Tensor c = full({16}, 0.999, DType::F32, Device::cuda());
      std::vector<double> build, back;
      for (int r = 0; r < 7; ++r) {
        cuda::synchronize();
        double t0 = now_s();
        Tensor y = x;
        for (int i = 0; i < 500; ++i) y = add(mul(y, c), x);
        Tensor loss = sum(y);
        double t1 = now_s();
        loss.backward();
        cuda::synchronize();
        double t2 = now_s();
        x.set_grad(Tensor());
        if (r >= 2) {  // the first runs warm caches and the allocator
          build.push_back((t1 - t0) * 1e6 / 1001);
          back.push_back((t2 - t1) * 1e6 / 1001);
        }
      }
      emit(Row{"autograd build (per op)", "f32", 16, median(build), 0, 0, "1001-op graph of [16] tensors, forward incl. launches"});
      emit(Row{"autograd backward (per op)", "f32", 16, median(back), 0, 0, "backward of that graph incl. kernels and sync"});
      emit(Row{"autograd 1000-op graph total", "f32", 16, median(build) * 1001 + median(back) * 1001, 0, 0,
               "build + backward, us per graph"});
    }

    print_table(rows);
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "bench kernels: " << e.what() << std::endl;
    return 1;
  }
}

#else

int kernels_main(const std::vector<std::string>&) {
  std::cerr << "bench kernels: this seqmix was built without CUDA (the kernel benchmark needs a GPU)" << std::endl;
  return 1;
}

#endif

}  // namespace seqmix::bench
