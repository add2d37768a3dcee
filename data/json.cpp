#include "data/json.h"

#include <charconv>
#include <cstdlib>

#include "core/error.h"
#include "data/utf8.h"

namespace seqmix::data::json {

const Value* Value::find(std::string_view key) const {
  if (kind != Kind::Object) return nullptr;
  for (const auto& [k, v] : obj)
    if (k == key) return &v;
  return nullptr;
}

const Value& Value::at(std::string_view key, std::string_view what) const {
  const Value* v = find(key);
  SEQMIX_CHECK(v != nullptr, what, ": missing key \"", key, "\"; the file is not in the expected format, ",
               "re-create it (seqmix prepare)");
  return *v;
}

namespace {

struct Parser {
  std::string_view s;
  std::string_view what;
  size_t i = 0;

  [[noreturn]] void fail(std::string_view msg) {
    SEQMIX_FAIL(what, ": invalid JSON at byte ", i, ": ", msg);
  }
  void ws() {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) ++i;
  }
  char peek() {
    ws();
    if (i >= s.size()) fail("unexpected end of input");
    return s[i];
  }
  void expect(char c) {
    if (peek() != c) fail(std::string("expected '") + c + "'");
    ++i;
  }
  uint32_t hex4() {
    if (i + 4 > s.size()) fail("truncated \\u escape");
    uint32_t v = 0;
    for (int k = 0; k < 4; ++k) {
      char c = s[i++];
      v <<= 4;
      if (c >= '0' && c <= '9') v |= c - '0';
      else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
      else fail("bad hex digit in \\u escape");
    }
    return v;
  }
  std::string string() {
    expect('"');
    std::string out;
    while (true) {
      if (i >= s.size()) fail("unterminated string");
      char c = s[i++];
      if (c == '"') break;
      if (c != '\\') {
        out.push_back(c);
        continue;
      }
      if (i >= s.size()) fail("unterminated escape");
      char e = s[i++];
      switch (e) {
        case '"': out.push_back('"'); break;
        case '\\': out.push_back('\\'); break;
        case '/': out.push_back('/'); break;
        case 'b': out.push_back('\b'); break;
        case 'f': out.push_back('\f'); break;
        case 'n': out.push_back('\n'); break;
        case 'r': out.push_back('\r'); break;
        case 't': out.push_back('\t'); break;
        case 'u': {
          uint32_t cp = hex4();
          if (cp >= 0xD800 && cp <= 0xDBFF && i + 6 <= s.size() && s[i] == '\\' && s[i + 1] == 'u') {
            size_t save = i;
            i += 2;
            uint32_t lo = hex4();
            if (lo >= 0xDC00 && lo <= 0xDFFF) cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            else i = save;
          }
          if (cp >= 0xD800 && cp <= 0xDFFF) cp = 0xFFFD;  // lone surrogate
          utf8::append(out, cp);
          break;
        }
        default: fail("unknown escape");
      }
    }
    return out;
  }
  Value value(int depth) {
    if (depth > 200) fail("nesting too deep");
    Value v;
    char c = peek();
    if (c == '{') {
      ++i;
      v.kind = Value::Kind::Object;
      if (peek() == '}') { ++i; return v; }
      while (true) {
        std::string k = string();
        expect(':');
        v.obj.emplace_back(std::move(k), value(depth + 1));
        char d = peek();
        ++i;
        if (d == '}') break;
        if (d != ',') fail("expected ',' or '}'");
      }
    } else if (c == '[') {
      ++i;
      v.kind = Value::Kind::Array;
      if (peek() == ']') { ++i; return v; }
      while (true) {
        v.arr.push_back(value(depth + 1));
        char d = peek();
        ++i;
        if (d == ']') break;
        if (d != ',') fail("expected ',' or ']'");
      }
    } else if (c == '"') {
      v.kind = Value::Kind::String;
      v.str = string();
    } else if (s.substr(i, 4) == "true") {
      i += 4; v.kind = Value::Kind::Bool; v.b = true;
    } else if (s.substr(i, 5) == "false") {
      i += 5; v.kind = Value::Kind::Bool; v.b = false;
    } else if (s.substr(i, 4) == "null") {
      i += 4;
    } else if (c == '-' || (c >= '0' && c <= '9')) {
      size_t start = i;
      while (i < s.size() && (std::string_view("+-.eE0123456789").find(s[i]) != std::string_view::npos)) ++i;
      std::string num(s.substr(start, i - start));
      char* end = nullptr;
      v.kind = Value::Kind::Number;
      v.num = std::strtod(num.c_str(), &end);
      if (end != num.c_str() + num.size()) fail("bad number");
    } else {
      fail(std::string("unexpected character '") + c + "'");
    }
    return v;
  }
};

}  // namespace

Value parse(std::string_view text, std::string_view what) {
  Parser p{text, what};
  Value v = p.value(0);
  p.ws();
  if (p.i != text.size()) p.fail("trailing characters after the JSON value");
  return v;
}

void append_quoted(std::string& out, std::string_view s) {
  static const char* hex = "0123456789abcdef";
  out.push_back('"');
  for (size_t i = 0; i < s.size();) {
    uint32_t cp;
    size_t n = utf8::decode(s, i, &cp);
    auto b = static_cast<unsigned char>(s[i]);
    if (cp == utf8::kInvalid || b < 0x20) {
      if (b == '\n') out += "\\n";
      else if (b == '\t') out += "\\t";
      else if (b == '\r') out += "\\r";
      else {
        out += "\\u00";
        out.push_back(hex[b >> 4]);
        out.push_back(hex[b & 15]);
      }
    } else if (b == '"') {
      out += "\\\"";
    } else if (b == '\\') {
      out += "\\\\";
    } else {
      out.append(s.substr(i, n));
    }
    i += n;
  }
  out.push_back('"');
}

std::string quoted(std::string_view s) {
  std::string out;
  append_quoted(out, s);
  return out;
}

}  // namespace seqmix::data::json
