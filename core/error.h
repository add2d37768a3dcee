// Errors: every failure a user or a library can cause becomes a seqmix::Error whose message names what
// went wrong and where. Library code throws; it never aborts the process.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace seqmix {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  ((os << args), ...);
  return os.str();
}
[[noreturn]] void throw_error(const char* file, int line, const std::string& msg);
}  // namespace detail

}  // namespace seqmix

// SEQMIX_CHECK(cond, parts...): throws seqmix::Error("parts... (at file:line)") when cond is false.
#define SEQMIX_CHECK(cond, ...)                                                      \
  do {                                                                               \
    if (!(cond)) ::seqmix::detail::throw_error(__FILE__, __LINE__,                   \
                                               ::seqmix::detail::concat(__VA_ARGS__)); \
  } while (0)

#define SEQMIX_FAIL(...) \
  ::seqmix::detail::throw_error(__FILE__, __LINE__, ::seqmix::detail::concat(__VA_ARGS__))
