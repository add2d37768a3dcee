// UTF-8 helpers shared by the tokenizers and the JSON reader.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace seqmix::data::utf8 {

// Decodes the code point starting at s[i]. Returns its length in bytes (1..4) and stores the code point
// in *cp. A byte that does not start a valid, shortest-form sequence (or a surrogate) has length 1 and
// *cp = kInvalid, so a scan always advances and covers every byte exactly once.
inline constexpr uint32_t kInvalid = 0xFFFFFFFFu;
inline size_t decode(std::string_view s, size_t i, uint32_t* cp) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) { *cp = b0; return 1; }
  size_t n;
  uint32_t c, min;
  if ((b0 & 0xE0) == 0xC0) { n = 2; c = b0 & 0x1F; min = 0x80; }
  else if ((b0 & 0xF0) == 0xE0) { n = 3; c = b0 & 0x0F; min = 0x800; }
  else if ((b0 & 0xF8) == 0xF0) { n = 4; c = b0 & 0x07; min = 0x10000; }
  else { *cp = kInvalid; return 1; }
  if (i + n > s.size()) { *cp = kInvalid; return 1; }
  for (size_t k = 1; k < n; ++k) {
    const auto b = static_cast<unsigned char>(s[i + k]);
    if ((b & 0xC0) != 0x80) { *cp = kInvalid; return 1; }
    c = (c << 6) | (b & 0x3F);
  }
  if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) { *cp = kInvalid; return 1; }
  *cp = c;
  return n;
}

inline void append(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

inline bool valid(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    uint32_t cp;
    i += decode(s, i, &cp);
    if (cp == kInvalid) return false;
  }
  return true;
}

}  // namespace seqmix::data::utf8
