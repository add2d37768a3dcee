#include "core/ops.h"

namespace seqmix {

Generator& default_generator() {
  static Generator gen(0);
  return gen;
}
void manual_seed(uint64_t seed) { default_generator() = Generator(seed); }

Tensor empty(const Shape& shape, DType dtype, Device device) { return Tensor::empty(shape, dtype, device); }

Tensor full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = Tensor::empty(shape, dtype, device);
  kernels::fill(t, value);
  return t;
}
Tensor zeros(const Shape& shape, DType dtype, Device device) { return full(shape, 0.0, dtype, device); }
Tensor ones(const Shape& shape, DType dtype, Device device) { return full(shape, 1.0, dtype, device); }
Tensor scalar_tensor(double value, DType dtype, Device device) { return full({}, value, dtype, device); }
Tensor zeros_like(const Tensor& t) { return zeros(t.shape(), t.dtype(), t.device()); }
Tensor ones_like(const Tensor& t) { return ones(t.shape(), t.dtype(), t.device()); }

Tensor arange(int64_t n, DType dtype, Device device) {
  Tensor t = Tensor::empty({n}, DType::F64, Device::cpu());
  double* p = t.data<double>();
  for (int64_t i = 0; i < n; ++i) p[i] = double(i);
  return t.to(dtype).to(device);
}

Tensor& uniform_(Tensor& t, Generator& gen, double lo, double hi) {
  uint64_t offset = gen.take((uint64_t(t.numel()) + 3) / 4);
  kernels::uniform_(t, gen.seed, offset, lo, hi);
  return t;
}

Tensor& normal_(Tensor& t, Generator& gen, double mean, double std) {
  uint64_t offset = gen.take((uint64_t(t.numel()) + 1) / 2);
  kernels::normal_(t, gen.seed, offset, mean, std);
  return t;
}

Tensor rand(const Shape& shape, Generator& gen, DType dtype, Device device) {
  Tensor t = Tensor::empty(shape, dtype, device);
  return uniform_(t, gen);
}

Tensor randn(const Shape& shape, Generator& gen, DType dtype, Device device) {
  Tensor t = Tensor::empty(shape, dtype, device);
  return normal_(t, gen);
}

}  // namespace seqmix
