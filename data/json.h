// A small JSON reader and string escaper for the data layer's own files (tokenizer.json, manifest.json,
// JSONL corpora). Not a general-purpose library: numbers are kept as double, objects keep key order.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace seqmix::data::json {

struct Value {
  enum class Kind { Null, Bool, Number, String, Array, Object };
  Kind kind = Kind::Null;
  bool b = false;
  double num = 0.0;
  std::string str;
  std::vector<Value> arr;
  std::vector<std::pair<std::string, Value>> obj;  // in file order

  bool is_null() const { return kind == Kind::Null; }
  bool is_string() const { return kind == Kind::String; }
  bool is_number() const { return kind == Kind::Number; }
  bool is_array() const { return kind == Kind::Array; }
  bool is_object() const { return kind == Kind::Object; }
  // Member lookup; nullptr when absent or when this is not an object.
  const Value* find(std::string_view key) const;
  // Member lookup that throws a seqmix::Error naming `what` (e.g. the file) when absent.
  const Value& at(std::string_view key, std::string_view what) const;
};

// Parses one JSON document; throws seqmix::Error naming `what` and the byte offset on a syntax error.
Value parse(std::string_view text, std::string_view what);

// Appends `s` as a quoted JSON string. Bytes that are not valid UTF-8 are written as \u00XX escapes of
// their byte value (so every byte string can be written; such strings do not read back identically).
void append_quoted(std::string& out, std::string_view s);
std::string quoted(std::string_view s);

}  // namespace seqmix::data::json
