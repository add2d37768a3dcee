// Helpers shared by the test suites.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <optional>
#include <string>

#include "core/ops.h"

namespace seqmix::testing {

// max |a - b| / max(max |b|, tiny): one relative error for a whole tensor.
inline double rel_error(const Tensor& a, const Tensor& b) {
  std::vector<double> va = a.to_vector<double>(), vb = b.to_vector<double>();
  EXPECT_EQ(va.size(), vb.size());
  double num = 0, den = 1e-12;
  for (size_t i = 0; i < va.size() && i < vb.size(); ++i) {
    if (std::isnan(va[i]) || std::isnan(vb[i])) return INFINITY;
    num = std::max(num, std::abs(va[i] - vb[i]));
    den = std::max(den, std::abs(vb[i]));
  }
  return num / den;
}

inline Tensor random_f64(const Shape& shape, uint64_t seed, bool requires_grad = true) {
  Generator g(seed);
  Tensor t = randn(shape, g, DType::F64);
  if (requires_grad) t.requires_grad_(true);
  return t;
}

// Sets (or, with nullptr, unsets) an environment variable for its lifetime and restores the former value
// (or its absence) when destroyed, also when an ASSERT leaves the test early. set() changes it again.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    set(value);
  }
  ~ScopedEnv() { set(old_ ? old_->c_str() : nullptr); }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;
  void set(const char* value) {
    if (value) ::setenv(name_.c_str(), value, 1);
    else ::unsetenv(name_.c_str());
  }

 private:
  std::string name_;
  std::optional<std::string> old_;
};

// Asserts that `fn` throws seqmix::Error whose message contains `needle`.
template <typename F>
void expect_error_contains(F fn, const std::string& needle) {
  try {
    fn();
    ADD_FAILURE() << "expected an error containing '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << "message was: " << e.what();
  }
}

}  // namespace seqmix::testing
