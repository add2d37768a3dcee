// Helpers for the CPU backend: compute types, strided iteration with broadcasting, row views.
#pragma once
#include <array>
#include <type_traits>

#include "core/tensor.h"

namespace seqmix::cpu {

// Arithmetic type for a storage type: double for f64, float for everything narrower.
template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <typename T, typename V>
inline T store_as(V v) {
  if constexpr (std::is_same_v<T, bf16> || std::is_same_v<T, f16>) return T(float(v));
  else return static_cast<T>(v);
}
template <typename A, typename T>
inline A load_as(T v) {
  if constexpr (std::is_same_v<T, bf16> || std::is_same_v<T, f16>) return A(float(v));
  else return static_cast<A>(v);
}

// Strides of `t` seen at `out_shape` (numpy broadcasting): 0 where t is broadcast.
Shape broadcast_strides(const Tensor& t, const Shape& out_shape);

// Calls f(i, offsets) for every element i (row-major over `shape`), where offsets[k] is the element
// offset into input k given its strides. Runs serially (a fast contiguous path is the caller's job).
template <size_t N, typename F>
void strided_for_each(const Shape& shape, const std::array<Shape, N>& strides, F f) {
  int nd = int(shape.size());
  int64_t total = shape_numel(shape);
  if (total == 0) return;
  std::vector<int64_t> idx(nd, 0);
  std::array<int64_t, N> off{};
  for (int64_t i = 0; i < total; ++i) {
    f(i, off);
    for (int d = nd - 1; d >= 0; --d) {
      if (++idx[d] < shape[d]) {
        for (size_t k = 0; k < N; ++k) off[k] += strides[k][d];
        break;
      }
      for (size_t k = 0; k < N; ++k) off[k] -= strides[k][d] * (shape[d] - 1);
      idx[d] = 0;
    }
  }
}

// [outer, n, inner] decomposition of a contiguous tensor around `dim`.
struct Around {
  int64_t outer = 1, n = 1, inner = 1;
};
inline Around around(const Shape& s, int dim) {
  Around a;
  for (int i = 0; i < dim; ++i) a.outer *= s[i];
  a.n = s[dim];
  for (int i = dim + 1; i < int(s.size()); ++i) a.inner *= s[i];
  return a;
}

}  // namespace seqmix::cpu
