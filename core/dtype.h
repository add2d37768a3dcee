// Element types. bf16 and f16 are stored as 16-bit patterns on the host and converted through f32;
// the CUDA kernels use the toolkit's __nv_bfloat16 / __half, which have the same bit layout.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>

#if defined(__CUDACC__)
#define SEQMIX_HD __host__ __device__ __forceinline__
#else
#define SEQMIX_HD inline
#endif

namespace seqmix {

enum class DType : uint8_t { F64, F32, BF16, F16, I64, I32, U8 };

size_t dtype_size(DType t);
const char* dtype_name(DType t);
DType parse_dtype(const std::string& name);  // "f32", "float32", "bf16", ...
inline bool is_floating(DType t) { return t == DType::F64 || t == DType::F32 || t == DType::BF16 || t == DType::F16; }
inline bool is_integral(DType t) { return !is_floating(t); }

// Host-side 16-bit float types: plain bit patterns with conversions (round to nearest even).
struct bf16 {
  uint16_t bits = 0;
  bf16() = default;
  explicit bf16(float f) : bits(from_float(f)) {}
  operator float() const {
    uint32_t u = uint32_t(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  static uint16_t from_float(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return uint16_t(u >> 16);
  }
};

struct f16 {
  uint16_t bits = 0;
  f16() = default;
  explicit f16(float f) : bits(from_float(f)) {}
  operator float() const { return to_float(bits); }
  static uint16_t from_float(float f);
  static float to_float(uint16_t h);
};

template <typename T> struct dtype_of;
template <> struct dtype_of<double> { static constexpr DType value = DType::F64; };
template <> struct dtype_of<float> { static constexpr DType value = DType::F32; };
template <> struct dtype_of<bf16> { static constexpr DType value = DType::BF16; };
template <> struct dtype_of<f16> { static constexpr DType value = DType::F16; };
template <> struct dtype_of<int64_t> { static constexpr DType value = DType::I64; };
template <> struct dtype_of<int32_t> { static constexpr DType value = DType::I32; };
template <> struct dtype_of<uint8_t> { static constexpr DType value = DType::U8; };

}  // namespace seqmix

// SEQMIX_DISPATCH_FLOAT(dtype, "op", [&]<typename T>() {...}): calls the lambda with T = the host type.
#define SEQMIX_DISPATCH_CASE(ENUM, TYPE, ...) \
  case ::seqmix::DType::ENUM: return __VA_ARGS__.template operator()<TYPE>();

#define SEQMIX_DISPATCH_FLOAT(DT, NAME, ...)                                         \
  [&]() {                                                                           \
    switch (DT) {                                                                   \
      SEQMIX_DISPATCH_CASE(F64, double, __VA_ARGS__)                                \
      SEQMIX_DISPATCH_CASE(F32, float, __VA_ARGS__)                                 \
      SEQMIX_DISPATCH_CASE(BF16, ::seqmix::bf16, __VA_ARGS__)                       \
      SEQMIX_DISPATCH_CASE(F16, ::seqmix::f16, __VA_ARGS__)                         \
      default: SEQMIX_FAIL(NAME, ": dtype ", ::seqmix::dtype_name(DT), " is not supported (floating types only)"); \
    }                                                                               \
  }()

#define SEQMIX_DISPATCH_ALL(DT, NAME, ...)                                           \
  [&]() {                                                                           \
    switch (DT) {                                                                   \
      SEQMIX_DISPATCH_CASE(F64, double, __VA_ARGS__)                                \
      SEQMIX_DISPATCH_CASE(F32, float, __VA_ARGS__)                                 \
      SEQMIX_DISPATCH_CASE(BF16, ::seqmix::bf16, __VA_ARGS__)                       \
      SEQMIX_DISPATCH_CASE(F16, ::seqmix::f16, __VA_ARGS__)                         \
      SEQMIX_DISPATCH_CASE(I64, int64_t, __VA_ARGS__)                               \
      SEQMIX_DISPATCH_CASE(I32, int32_t, __VA_ARGS__)                               \
      SEQMIX_DISPATCH_CASE(U8, uint8_t, __VA_ARGS__)                                \
    }                                                                               \
    SEQMIX_FAIL(NAME, ": unknown dtype");                                           \
  }()

#define SEQMIX_DISPATCH_INDEX(DT, NAME, ...)                                         \
  [&]() {                                                                           \
    switch (DT) {                                                                   \
      SEQMIX_DISPATCH_CASE(I64, int64_t, __VA_ARGS__)                               \
      SEQMIX_DISPATCH_CASE(I32, int32_t, __VA_ARGS__)                               \
      default: SEQMIX_FAIL(NAME, ": index tensor must be i64 or i32, got ", ::seqmix::dtype_name(DT)); \
    }                                                                               \
  }()
