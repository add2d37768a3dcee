// CUDA causal long convolution through cuFFT: x [B, T, C], k [C, L] (L <= T).
//   y[b,t,c] = sum_{s <= t, s < L} k[c,s] x[b,t-s,c]
//
// Layout: the B*C sequences are FFT'd in place of a transpose. x is copied (and converted to f32,
// zero-padded to N >= T + L - 1 steps) into xpad [N, B*C]: sequence q = b*C + c lives at stride B*C,
// so one batched cuFFT plan (istride = B*C, idist = 1, batch = B*C) transforms all of them, and the
// copy is coalesced on both sides. The filter goes to kpad [N, C] (a tiled transpose) and one plan
// of batch C. N is the smallest 2^a 3^b 5^c 7^d >= T + L - 1, so the circular convolution equals the
// causal one on t < T.
//   forward:  Y = X * K / N, y = C2R(Y)[t < T]
//   backward: G = R2C(g);  dk = C2R(sum_b G * conj(X)) / N, first L steps (correlation of g with x);
//             dx = C2R(G * conj(K)) / N, first T steps (correlation of g with k).
// All FFT math is f32 (bf16/f16 in and out are converted at the copies). Plans are cached per
// (device, N, batch, direction) with auto-allocation off: each execution gets its work area from the
// caching allocator on the current stream, so cached plans hold no memory.
#include <map>
#include <mutex>
#include <tuple>

#include "core/cuda/device_utils.cuh"
#include "core/kernels.h"

namespace seqmix::cuda {

namespace {

// ---------------------------------------------------------------------------------------------
// Plans
// ---------------------------------------------------------------------------------------------
std::mutex& plan_mutex() {
  static std::mutex m;
  return m;
}

// Batch-interleaved 1-D plan: `batch` sequences of length n at stride `batch` (distance 1).
cufftHandle get_plan(int device, int64_t n, int64_t batch, cufftType type, size_t* work) {
  using Key = std::tuple<int, int64_t, int64_t, int>;
  static auto* cache = new std::map<Key, std::pair<cufftHandle, size_t>>();  // leaked on purpose at exit
  Key key{device, n, batch, int(type)};
  auto it = cache->find(key);
  if (it != cache->end()) {
    *work = it->second.second;
    return it->second.first;
  }
  cufftHandle plan;
  SEQMIX_CUFFT_CHECK(cufftCreate(&plan));
  SEQMIX_CUFFT_CHECK(cufftSetAutoAllocation(plan, 0));
  long long nn[1] = {n};
  long long freq[1] = {n / 2 + 1};
  long long real[1] = {n};
  bool r2c = type == CUFFT_R2C;
  size_t ws = 0;
  cufftResult r = cufftMakePlanMany64(plan, 1, nn, r2c ? real : freq, batch, 1, r2c ? freq : real, batch, 1, type, batch, &ws);
  if (r != CUFFT_SUCCESS) {
    cufftDestroy(plan);
    SEQMIX_FAIL("fft_conv: cufftMakePlanMany64 failed for length ", n, " x ", batch, " sequences: ", cufft_status_name(r));
  }
  cache->emplace(key, std::make_pair(plan, ws));
  *work = ws;
  return plan;
}

// out-of-place transforms on the current stream
void exec_r2c(const float* in, float2* out, int64_t n, int64_t batch, Device dev) {
  std::lock_guard<std::mutex> lock(plan_mutex());
  size_t ws = 0;
  cufftHandle plan = get_plan(dev.index, n, batch, CUFFT_R2C, &ws);
  Tensor work = Tensor::empty({int64_t(std::max<size_t>(ws, 1))}, DType::U8, dev);
  SEQMIX_CUFFT_CHECK(cufftSetStream(plan, current_stream()));
  SEQMIX_CUFFT_CHECK(cufftSetWorkArea(plan, work.data_ptr()));
  SEQMIX_CUFFT_CHECK(cufftExecR2C(plan, const_cast<float*>(in), reinterpret_cast<cufftComplex*>(out)));
}

void exec_c2r(float2* in, float* out, int64_t n, int64_t batch, Device dev) {
  std::lock_guard<std::mutex> lock(plan_mutex());
  size_t ws = 0;
  cufftHandle plan = get_plan(dev.index, n, batch, CUFFT_C2R, &ws);
  Tensor work = Tensor::empty({int64_t(std::max<size_t>(ws, 1))}, DType::U8, dev);
  SEQMIX_CUFFT_CHECK(cufftSetStream(plan, current_stream()));
  SEQMIX_CUFFT_CHECK(cufftSetWorkArea(plan, work.data_ptr()));
  SEQMIX_CUFFT_CHECK(cufftExecC2R(plan, reinterpret_cast<cufftComplex*>(in), out));
}

int64_t fft_size(int64_t need) {
  for (int64_t n = std::max<int64_t>(need, 2);; ++n) {
    if (n % 2) continue;  // even lengths for R2C
    int64_t m = n;
    for (int p : {2, 3, 5, 7})
      while (m % p == 0) m /= p;
    if (m == 1) return n;
  }
}

// ---------------------------------------------------------------------------------------------
// Copies between [B, T, C] and the padded [N, B*C] f32 layout. Threads run over q = b*C + c (one
// column each, coalesced), blocks over rows n (grid-stride).
// ---------------------------------------------------------------------------------------------
template <typename T>
__global__ void pad_in_kernel(const T* __restrict__ x, float* __restrict__ out, int64_t N, int64_t T_len, int64_t C,
                              int64_t M) {
  int64_t q = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (q >= M) return;
  int64_t b = q / C, c = q - b * C;
  const T* xb = x + b * T_len * C + c;
  for (int64_t n = blockIdx.y; n < N; n += gridDim.y) out[n * M + q] = n < T_len ? to_float(xb[n * C]) : 0.0f;
}

template <typename T>
__global__ void unpad_out_kernel(const float* __restrict__ in, T* __restrict__ y, int64_t T_len, int64_t C, int64_t M) {
  int64_t q = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (q >= M) return;
  int64_t b = q / C, c = q - b * C;
  T* yb = y + b * T_len * C + c;
  for (int64_t n = blockIdx.y; n < T_len; n += gridDim.y) yb[n * C] = from_float<T>(in[n * M + q]);
}

// kpad[n, c] = n < L ? k[c, n] : 0 for n < N (32 x 32 tiles through shared memory).
template <typename T>
__global__ void filter_in_kernel(const T* __restrict__ k, float* __restrict__ kpad, int64_t N, int64_t L, int64_t C) {
  __shared__ float tile[32][33];
  int64_t c0 = int64_t(blockIdx.x) * 32, n0 = int64_t(blockIdx.y) * 32;
  for (int r = threadIdx.y; r < 32; r += blockDim.y) {
    int64_t c = c0 + r, n = n0 + threadIdx.x;
    tile[r][threadIdx.x] = (c < C && n < L) ? to_float(k[c * L + n]) : 0.0f;
  }
  __syncthreads();
  for (int r = threadIdx.y; r < 32; r += blockDim.y) {
    int64_t n = n0 + r, c = c0 + threadIdx.x;
    if (n < N && c < C) kpad[n * C + c] = tile[threadIdx.x][r];
  }
}

// dk[c, s] = dkpad[s, c] for s < L (32 x 32 tiles).
template <typename T>
__global__ void filter_out_kernel(const float* __restrict__ dkpad, T* __restrict__ dk, int64_t L, int64_t C) {
  __shared__ float tile[32][33];
  int64_t c0 = int64_t(blockIdx.x) * 32, s0 = int64_t(blockIdx.y) * 32;
  for (int r = threadIdx.y; r < 32; r += blockDim.y) {
    int64_t s = s0 + r, c = c0 + threadIdx.x;
    tile[r][threadIdx.x] = (s < L && c < C) ? dkpad[s * C + c] : 0.0f;
  }
  __syncthreads();
  for (int r = threadIdx.y; r < 32; r += blockDim.y) {
    int64_t c = c0 + r, s = s0 + threadIdx.x;
    if (c < C && s < L) dk[c * L + s] = from_float<T>(tile[threadIdx.x][r]);
  }
}

// X[f, q] *= (CONJ ? conj(K[f, c]) : K[f, c]) * scale, c = q % C.
template <bool CONJ>
__global__ void spectrum_mul_kernel(float2* __restrict__ X, const float2* __restrict__ K, int64_t F, int64_t C, int64_t M,
                                    float scale) {
  int64_t q = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (q >= M) return;
  int64_t c = q % C;
  for (int64_t f = blockIdx.y; f < F; f += gridDim.y) {
    float2 a = X[f * M + q], k = K[f * C + c];
    if (CONJ) k.y = -k.y;
    X[f * M + q] = make_float2((a.x * k.x - a.y * k.y) * scale, (a.x * k.y + a.y * k.x) * scale);
  }
}

// DK[f, c] = scale * sum_b G[f, b*C + c] * conj(X[f, b*C + c]), b in order.
__global__ void spectrum_corr_kernel(const float2* __restrict__ G, const float2* __restrict__ X, float2* __restrict__ DK,
                                     int64_t F, int64_t B, int64_t C, float scale) {
  int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const int64_t M = B * C;
  for (int64_t f = blockIdx.y; f < F; f += gridDim.y) {
    float re = 0.0f, im = 0.0f;
    for (int64_t b = 0; b < B; ++b) {
      float2 g = G[f * M + b * C + c], x = X[f * M + b * C + c];
      re += g.x * x.x + g.y * x.y;
      im += g.y * x.x - g.x * x.y;
    }
    DK[f * C + c] = make_float2(re * scale, im * scale);
  }
}

dim3 column_grid(int64_t cols, int64_t rows, int threads) {
  int64_t gx = (cols + threads - 1) / threads;
  int64_t gy = std::min<int64_t>(rows, 65535);
  // enough blocks to fill the device, not more rows than exist
  int64_t want = std::max<int64_t>(1, int64_t(sm_count()) * 16 / std::max<int64_t>(gx, 1));
  gy = std::max<int64_t>(1, std::min(gy, want));
  return dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy));
}

constexpr int kThreads = 256;

// x [B, T, C] -> spectrum [F, B*C] (f32 complex); uses `pad` [N, B*C] f32 as scratch.
void forward_spectrum(const Tensor& x, const Tensor& pad, const Tensor& spec, int64_t N) {
  int64_t B = x.size(0), T = x.size(1), C = x.size(2), M = B * C;
  cudaStream_t st = current_stream();
  SEQMIX_CUDA_DISPATCH_FLOAT(x.dtype(), "fft_conv", [&]<typename T_>() {
    pad_in_kernel<T_><<<column_grid(M, N, kThreads), kThreads, 0, st>>>(static_cast<const T_*>(x.data_ptr()), pad.data<float>(),
                                                                        N, T, C, M);
    SEQMIX_CUDA_CHECK_LAUNCH("pad_in_kernel");
  });
  exec_r2c(pad.data<float>(), static_cast<float2*>(spec.data_ptr()), N, M, x.device());
}

// k [C, L] -> spectrum [F, C]; uses `kpad` [N, C] f32 as scratch.
void filter_spectrum(const Tensor& k, const Tensor& kpad, const Tensor& kspec, int64_t N) {
  int64_t C = k.size(0), L = k.size(1);
  cudaStream_t st = current_stream();
  SEQMIX_CUDA_DISPATCH_FLOAT(k.dtype(), "fft_conv", [&]<typename T_>() {
    dim3 grid(static_cast<unsigned>((C + 31) / 32), static_cast<unsigned>((N + 31) / 32));
    filter_in_kernel<T_><<<grid, dim3(32, 8), 0, st>>>(static_cast<const T_*>(k.data_ptr()), kpad.data<float>(), N, L, C);
    SEQMIX_CUDA_CHECK_LAUNCH("filter_in_kernel");
  });
  exec_r2c(kpad.data<float>(), static_cast<float2*>(kspec.data_ptr()), N, C, k.device());
}

// spectrum [F, B*C] -> out [B, T, C] in out's dtype; uses `pad` [N, B*C] as scratch.
void inverse_to(const Tensor& spec, const Tensor& pad, const Tensor& out, int64_t N) {
  int64_t B = out.size(0), T = out.size(1), C = out.size(2), M = B * C;
  cudaStream_t st = current_stream();
  exec_c2r(static_cast<float2*>(spec.data_ptr()), pad.data<float>(), N, M, out.device());
  SEQMIX_CUDA_DISPATCH_FLOAT(out.dtype(), "fft_conv", [&]<typename T_>() {
    unpad_out_kernel<T_><<<column_grid(M, T, kThreads), kThreads, 0, st>>>(pad.data<float>(), static_cast<T_*>(out.data_ptr()),
                                                                           T, C, M);
    SEQMIX_CUDA_CHECK_LAUNCH("unpad_out_kernel");
  });
}

void check_inputs(const Tensor& x, const Tensor& k, const char* op) {
  SEQMIX_CHECK(x.dim() == 3 && k.dim() == 2 && x.size(2) == k.size(0) && k.size(1) <= x.size(1), op,
               ": x must be [B, T, C] and k [C, L] with L <= T; got ", shape_str(x.shape()), " and ", shape_str(k.shape()));
  SEQMIX_CHECK(x.is_cuda() && k.is_cuda() && x.is_contiguous() && k.is_contiguous(), op,
               ": x and k must be contiguous CUDA tensors");
}

}  // namespace

Tensor fft_conv(const Tensor& x, const Tensor& k) {
  check_inputs(x, k, "fft_conv");
  int64_t B = x.size(0), T = x.size(1), C = x.size(2), L = k.size(1);
  Device dev = x.device();
  Tensor y = Tensor::empty(x.shape(), x.dtype(), dev);
  if (y.numel() == 0) return y;
  cudaStream_t st = current_stream();
  if (L == 0) {
    SEQMIX_CUDA_CHECK(cudaMemsetAsync(y.data_ptr(), 0, y.nbytes(), st));
    return y;
  }
  int64_t N = fft_size(T + L - 1), F = N / 2 + 1, M = B * C;
  Tensor kpad = Tensor::empty({N, C}, DType::F32, dev);
  Tensor kspec = Tensor::empty({F, C, 2}, DType::F32, dev);
  filter_spectrum(k, kpad, kspec, N);
  kpad = Tensor();
  Tensor pad = Tensor::empty({N, M}, DType::F32, dev);
  Tensor spec = Tensor::empty({F, M, 2}, DType::F32, dev);
  forward_spectrum(x, pad, spec, N);
  spectrum_mul_kernel<false><<<column_grid(M, F, kThreads), kThreads, 0, st>>>(
      static_cast<float2*>(spec.data_ptr()), static_cast<const float2*>(kspec.data_ptr()), F, C, M, 1.0f / float(N));
  SEQMIX_CUDA_CHECK_LAUNCH("spectrum_mul_kernel");
  inverse_to(spec, pad, y, N);
  return y;
}

void fft_conv_backward(const Tensor& g, const Tensor& x, const Tensor& k, Tensor* dx, Tensor* dk) {
  check_inputs(x, k, "fft_conv_backward");
  SEQMIX_CHECK(g.is_cuda() && g.is_contiguous() && g.shape() == x.shape() && g.dtype() == x.dtype(),
               "fft_conv_backward: grad must be a contiguous CUDA tensor like x ", shape_str(x.shape()));
  int64_t B = x.size(0), T = x.size(1), C = x.size(2), L = k.size(1);
  Device dev = x.device();
  cudaStream_t st = current_stream();
  if (dx) *dx = Tensor::empty(x.shape(), x.dtype(), dev);
  if (dk) *dk = Tensor::empty(k.shape(), k.dtype(), dev);
  if (!dx && !dk) return;
  if (x.numel() == 0 || L == 0) {
    if (dx && dx->numel()) SEQMIX_CUDA_CHECK(cudaMemsetAsync(dx->data_ptr(), 0, dx->nbytes(), st));
    if (dk && dk->numel()) SEQMIX_CUDA_CHECK(cudaMemsetAsync(dk->data_ptr(), 0, dk->nbytes(), st));
    return;
  }
  int64_t N = fft_size(T + L - 1), F = N / 2 + 1, M = B * C;
  Tensor pad = Tensor::empty({N, M}, DType::F32, dev);
  Tensor gspec = Tensor::empty({F, M, 2}, DType::F32, dev);
  forward_spectrum(g, pad, gspec, N);
  const float inv_n = 1.0f / float(N);
  if (dk) {
    Tensor xspec = Tensor::empty({F, M, 2}, DType::F32, dev);
    forward_spectrum(x, pad, xspec, N);
    Tensor dkspec = Tensor::empty({F, C, 2}, DType::F32, dev);
    spectrum_corr_kernel<<<column_grid(C, F, kThreads), kThreads, 0, st>>>(
        static_cast<const float2*>(gspec.data_ptr()), static_cast<const float2*>(xspec.data_ptr()),
        static_cast<float2*>(dkspec.data_ptr()), F, B, C, inv_n);
    SEQMIX_CUDA_CHECK_LAUNCH("spectrum_corr_kernel");
    xspec = Tensor();
    Tensor dkpad = Tensor::empty({N, C}, DType::F32, dev);
    exec_c2r(static_cast<float2*>(dkspec.data_ptr()), dkpad.data<float>(), N, C, dev);
    SEQMIX_CUDA_DISPATCH_FLOAT(k.dtype(), "fft_conv_backward", [&]<typename T_>() {
      dim3 grid(static_cast<unsigned>((C + 31) / 32), static_cast<unsigned>((L + 31) / 32));
      filter_out_kernel<T_><<<grid, dim3(32, 8), 0, st>>>(dkpad.data<float>(), static_cast<T_*>(dk->data_ptr()), L, C);
      SEQMIX_CUDA_CHECK_LAUNCH("filter_out_kernel");
    });
  }
  if (dx) {
    Tensor kpad = Tensor::empty({N, C}, DType::F32, dev);
    Tensor kspec = Tensor::empty({F, C, 2}, DType::F32, dev);
    filter_spectrum(k, kpad, kspec, N);
    kpad = Tensor();
    spectrum_mul_kernel<true><<<column_grid(M, F, kThreads), kThreads, 0, st>>>(
        static_cast<float2*>(gspec.data_ptr()), static_cast<const float2*>(kspec.data_ptr()), F, C, M, inv_n);
    SEQMIX_CUDA_CHECK_LAUNCH("spectrum_mul_kernel");
    inverse_to(gspec, pad, *dx, N);
  }
}

}  // namespace seqmix::cuda
