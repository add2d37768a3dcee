#include "data/tokenizer.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <queue>
#include <sstream>
#include <unordered_map>

#include "core/error.h"
#include "data/json.h"
#include "data/utf8.h"

namespace seqmix::data {

namespace {
struct CodeRange {
  uint32_t lo, hi;
};
#include "data/unicode_tables.inc"

template <size_t N>
bool in_ranges(const CodeRange (&r)[N], uint32_t cp) {
  size_t lo = 0, hi = N;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (r[mid].hi < cp) lo = mid + 1;
    else hi = mid;
  }
  return lo < N && r[lo].lo <= cp;
}

enum Cls : uint8_t { kLetter, kNumber, kSpace, kOther };

struct AsciiTable {
  uint8_t cls[128];
  constexpr AsciiTable() : cls{} {
    for (int c = 0; c < 128; ++c) {
      if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) cls[c] = kLetter;
      else if (c >= '0' && c <= '9') cls[c] = kNumber;
      else if ((c >= 9 && c <= 13) || c == ' ') cls[c] = kSpace;
      else cls[c] = kOther;
    }
  }
};
constexpr AsciiTable kAscii;

inline Cls classify(uint32_t cp) {
  if (cp < 128) return static_cast<Cls>(kAscii.cls[cp]);
  if (cp == utf8::kInvalid) return kOther;
  if (in_ranges(kLetterRanges, cp)) return kLetter;
  if (in_ranges(kNumberRanges, cp)) return kNumber;
  if (in_ranges(kSpaceRanges, cp)) return kSpace;
  return kOther;
}

// Class and length of the character at byte i.
inline Cls char_at(std::string_view s, size_t i, size_t* len) {
  const auto b = static_cast<unsigned char>(s[i]);
  if (b < 128) {
    *len = 1;
    return static_cast<Cls>(kAscii.cls[b]);
  }
  uint32_t cp;
  *len = utf8::decode(s, i, &cp);
  return classify(cp);
}

// End of the run of characters of class `c` starting at byte i.
inline size_t run_end(std::string_view s, size_t i, Cls c) {
  const size_t n = s.size();
  while (i < n) {
    const auto b = static_cast<unsigned char>(s[i]);
    if (b < 128) {
      if (kAscii.cls[b] != c) break;
      ++i;
      continue;
    }
    size_t len;
    if (char_at(s, i, &len) != c) break;
    i += len;
  }
  return i;
}
}  // namespace

size_t next_pretoken(std::string_view s, size_t i) {
  const size_t n = s.size();
  size_t len0;
  const Cls c0 = char_at(s, i, &len0);
  const char ch = s[i];
  if (ch == '\'' && i + 1 < n) {
    const char a = s[i + 1];
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
    if (i + 2 < n) {
      const char b = s[i + 2];
      if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return i + 3;
    }
  }
  if (ch == ' ' && i + 1 < n) {
    size_t len1;
    const Cls c1 = char_at(s, i + 1, &len1);
    if (c1 != kSpace) return run_end(s, i + 1 + len1, c1);
  }
  if (c0 != kSpace) return run_end(s, i + len0, c0);
  // \s+(?!\S) then \s+: a run of white space; when a non-space follows, leave its last character for the
  // next piece (it may prefix a word), unless the run is a single character.
  size_t last = i, j = i + len0;
  while (j < n) {
    size_t len;
    if (char_at(s, j, &len) != kSpace) break;
    last = j;
    j += len;
  }
  if (j == n || last == i) return j;
  return last;
}

void pretokenize(std::string_view text, std::vector<std::pair<size_t, size_t>>& pieces) {
  for (size_t i = 0; i < text.size();) {
    size_t e = next_pretoken(text, i);
    pieces.emplace_back(i, e);
    i = e;
  }
}

void split_words(std::string_view text, std::vector<std::string_view>& words) {
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    size_t len;
    while (i < n && char_at(text, i, &len) == kSpace) i += len;
    if (i >= n) break;
    size_t start = i;
    while (i < n && char_at(text, i, &len) != kSpace) i += len;
    words.push_back(text.substr(start, i - start));
  }
}

// ---- byte <-> printable character map (GPT-2's ByteLevel alphabet) ----
namespace {
struct ByteMap {
  uint32_t to_cp[256];
  std::string to_str[256];
  std::unordered_map<uint32_t, uint8_t> from_cp;
  ByteMap() {
    bool printable[256] = {};
    for (int b = '!'; b <= '~'; ++b) printable[b] = true;
    for (int b = 0xA1; b <= 0xAC; ++b) printable[b] = true;
    for (int b = 0xAE; b <= 0xFF; ++b) printable[b] = true;
    uint32_t extra = 256;
    for (int b = 0; b < 256; ++b) {
      to_cp[b] = printable[b] ? static_cast<uint32_t>(b) : extra++;
      utf8::append(to_str[b], to_cp[b]);
      from_cp[to_cp[b]] = static_cast<uint8_t>(b);
    }
  }
};
const ByteMap& byte_map() {
  static const ByteMap m;
  return m;
}
}  // namespace

std::string byte_level_encode(std::string_view bytes) {
  const ByteMap& m = byte_map();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char b : bytes) out += m.to_str[b];
  return out;
}

std::string byte_level_decode(std::string_view chars, const std::string& what) {
  const ByteMap& m = byte_map();
  std::string out;
  for (size_t i = 0; i < chars.size();) {
    uint32_t cp;
    i += utf8::decode(chars, i, &cp);
    auto it = m.from_cp.find(cp);
    SEQMIX_CHECK(it != m.from_cp.end(), what, ": token \"", chars,
                 "\" has a character outside the ByteLevel alphabet; this is not a byte-level BPE tokenizer.json");
    out.push_back(static_cast<char>(it->second));
  }
  return out;
}

// ---- helpers ----
const char* kind_name(TokenizerKind k) {
  switch (k) {
    case TokenizerKind::Byte: return "byte";
    case TokenizerKind::Word: return "word";
    case TokenizerKind::Bpe: return "bpe";
  }
  return "?";
}

TokenizerKind parse_tokenizer_kind(std::string_view name) {
  if (name == "byte") return TokenizerKind::Byte;
  if (name == "word") return TokenizerKind::Word;
  if (name == "bpe") return TokenizerKind::Bpe;
  SEQMIX_FAIL("unknown tokenizer \"", name, "\"; use one of: byte, word, bpe");
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  std::vector<int32_t> out;
  encode(text, out);
  return out;
}

void Tokenizer::save(const std::string& path) const {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    SEQMIX_CHECK(f.good(), "cannot write ", tmp, "; check that the directory exists and is writable");
    const std::string j = to_json();
    f.write(j.data(), static_cast<std::streamsize>(j.size()));
    f.flush();
    SEQMIX_CHECK(f.good(), "writing ", tmp, " failed (disk full?)");
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  SEQMIX_CHECK(!ec, "cannot rename ", tmp, " to ", path, ": ", ec.message());
}

namespace {

struct StrHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using StrMap = std::unordered_map<std::string, int32_t, StrHash, std::equal_to<>>;

// Open-addressing map from a pair of ids to (rank, result id).
class PairTable {
 public:
  void build(const std::vector<std::pair<int32_t, int32_t>>& pairs, const std::vector<int32_t>& results) {
    size_t cap = 16;
    while (cap < pairs.size() * 2 + 16) cap <<= 1;
    keys_.assign(cap, kEmpty);
    vals_.assign(cap, {0, 0});
    mask_ = cap - 1;
    for (size_t r = 0; r < pairs.size(); ++r) {
      uint64_t k = key(pairs[r].first, pairs[r].second);
      size_t h = slot(k);
      while (keys_[h] != kEmpty && keys_[h] != k) h = (h + 1) & mask_;
      if (keys_[h] == k) continue;  // a repeated merge: the first (lowest rank) wins
      keys_[h] = k;
      vals_[h] = {static_cast<int32_t>(r), results[r]};
    }
  }
  // Returns false when the pair has no merge.
  inline bool find(int32_t a, int32_t b, int32_t* rank, int32_t* result) const {
    if (keys_.empty()) return false;
    uint64_t k = key(a, b);
    size_t h = slot(k);
    while (true) {
      uint64_t kk = keys_[h];
      if (kk == k) {
        *rank = vals_[h].first;
        *result = vals_[h].second;
        return true;
      }
      if (kk == kEmpty) return false;
      h = (h + 1) & mask_;
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~0ull;
  static uint64_t key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  size_t slot(uint64_t k) const { return static_cast<size_t>((k * 0x9E3779B97F4A7C15ull) >> 20) & mask_; }
  std::vector<uint64_t> keys_;
  std::vector<std::pair<int32_t, int32_t>> vals_;
  size_t mask_ = 0;
};

void append_added_token(std::string& j, int32_t id, const std::string& content) {
  j += "    {\"id\": " + std::to_string(id) + ", \"content\": " + json::quoted(content) +
       ", \"single_word\": false, \"lstrip\": false, \"rstrip\": false, \"normalized\": false, \"special\": true}";
}

// ---------------------------------------------------------------------------------------------------------
// Byte-level BPE (the byte tokenizer is the same with no merges).
class BpeTokenizer final : public Tokenizer {
 public:
  // merges[r] = (left id, right id) creating results[r]; token_bytes[id] = the bytes of each id;
  // byte_ids[b] = id of byte b; eot = id of <|endoftext|> (or -1).
  BpeTokenizer(std::vector<std::string> token_bytes, std::array<int32_t, 256> byte_ids,
               std::vector<std::pair<int32_t, int32_t>> merges, std::vector<int32_t> results, int32_t eot,
               bool byte_kind)
      : tokens_(std::move(token_bytes)),
        byte_ids_(byte_ids),
        merges_(std::move(merges)),
        results_(std::move(results)),
        eot_(eot),
        byte_kind_(byte_kind) {
    table_.build(merges_, results_);
  }

  TokenizerKind kind() const override { return byte_kind_ ? TokenizerKind::Byte : TokenizerKind::Bpe; }
  int32_t vocab_size() const override { return static_cast<int32_t>(tokens_.size()); }
  int32_t eot_id() const override { return eot_; }

  void encode(std::string_view text, std::vector<int32_t>& out) const override {
    if (merges_.empty()) {
      const size_t base = out.size();
      out.resize(base + text.size());
      for (size_t i = 0; i < text.size(); ++i) out[base + i] = byte_ids_[static_cast<unsigned char>(text[i])];
      return;
    }
    // Pieces repeat a lot in text: cache each piece's ids for the duration of this call.
    std::unordered_map<std::string, std::pair<uint32_t, uint32_t>, StrHash, std::equal_to<>> cache;
    std::vector<int32_t> cache_ids;
    std::vector<int32_t> sym;
    Scratch scratch;
    for (size_t i = 0; i < text.size();) {
      const size_t e = next_pretoken(text, i);
      const std::string_view piece = text.substr(i, e - i);
      i = e;
      if (piece.size() == 1) {
        out.push_back(byte_ids_[static_cast<unsigned char>(piece[0])]);
        continue;
      }
      auto it = cache.find(piece);
      if (it != cache.end()) {
        out.insert(out.end(), cache_ids.begin() + it->second.first,
                   cache_ids.begin() + it->second.first + it->second.second);
        continue;
      }
      sym.clear();
      for (unsigned char b : piece) sym.push_back(byte_ids_[b]);
      merge_word(sym, scratch);
      out.insert(out.end(), sym.begin(), sym.end());
      if (cache.size() < (1u << 20)) {
        cache.emplace(std::string(piece),
                      std::make_pair(static_cast<uint32_t>(cache_ids.size()), static_cast<uint32_t>(sym.size())));
        cache_ids.insert(cache_ids.end(), sym.begin(), sym.end());
      }
    }
  }

  std::string decode(std::span<const int32_t> ids) const override {
    std::string out;
    for (int32_t id : ids) {
      SEQMIX_CHECK(id >= 0 && id < vocab_size(), "decode: token id ", id, " is outside the vocabulary [0, ",
                   vocab_size(), ")");
      out += tokens_[id];
    }
    return out;
  }

  std::string to_json() const override {
    std::string j;
    j.reserve(64 * tokens_.size() + 1024);
    j += "{\n  \"version\": \"1.0\",\n  \"truncation\": null,\n  \"padding\": null,\n  \"added_tokens\": [\n";
    if (eot_ >= 0) append_added_token(j, eot_, tokens_[eot_]);
    j += "\n  ],\n  \"normalizer\": null,\n";
    j += "  \"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"trim_offsets\": true, "
         "\"use_regex\": true},\n";
    j += "  \"post_processor\": null,\n";
    j += "  \"decoder\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"trim_offsets\": true, "
         "\"use_regex\": true},\n";
    j += "  \"model\": {\n    \"type\": \"BPE\",\n    \"dropout\": null,\n    \"unk_token\": null,\n"
         "    \"continuing_subword_prefix\": null,\n    \"end_of_word_suffix\": null,\n"
         "    \"fuse_unk\": false,\n    \"byte_fallback\": false,\n    \"vocab\": {";
    for (size_t id = 0; id < tokens_.size(); ++id) {
      j += id ? ",\n      " : "\n      ";
      const bool special = static_cast<int32_t>(id) == eot_;
      json::append_quoted(j, special ? tokens_[id] : byte_level_encode(tokens_[id]));
      j += ": " + std::to_string(id);
    }
    j += "\n    },\n    \"merges\": [";
    for (size_t r = 0; r < merges_.size(); ++r) {
      j += r ? ",\n      " : "\n      ";
      json::append_quoted(j, byte_level_encode(tokens_[merges_[r].first]) + " " +
                                 byte_level_encode(tokens_[merges_[r].second]));
    }
    j += "\n    ]\n  }\n}\n";
    return j;
  }

  const std::vector<std::pair<int32_t, int32_t>>& merges() const { return merges_; }

 private:
  struct Scratch {
    std::vector<int32_t> prev, next;
    struct Entry {
      int32_t rank, pos, a, b, res;
      bool operator>(const Entry& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::vector<Entry> heap;
  };

  // Applies merges to one piece: repeatedly the lowest-ranked adjacent pair, leftmost first (the order of
  // GPT-2 and of Hugging Face's BPE model).
  void merge_word(std::vector<int32_t>& sym, Scratch& s) const {
    if (sym.size() < 48) {
      while (sym.size() > 1) {
        int32_t best_rank = INT32_MAX, best_res = -1;
        size_t best_pos = 0;
        for (size_t p = 0; p + 1 < sym.size(); ++p) {
          int32_t r, res;
          if (table_.find(sym[p], sym[p + 1], &r, &res) && r < best_rank) {
            best_rank = r;
            best_res = res;
            best_pos = p;
          }
        }
        if (best_res < 0) break;
        sym[best_pos] = best_res;
        sym.erase(sym.begin() + best_pos + 1);
      }
      return;
    }
    // Long pieces: a linked list of symbols and a heap of candidate merges (rank, position).
    const int32_t n = static_cast<int32_t>(sym.size());
    s.prev.resize(n);
    s.next.resize(n);
    for (int32_t p = 0; p < n; ++p) {
      s.prev[p] = p - 1;
      s.next[p] = p + 1 < n ? p + 1 : -1;
    }
    auto cmp = [](const Scratch::Entry& x, const Scratch::Entry& y) { return x > y; };
    s.heap.clear();
    auto push = [&](int32_t p) {
      if (p < 0 || s.next[p] < 0) return;
      int32_t r, res;
      if (table_.find(sym[p], sym[s.next[p]], &r, &res)) {
        s.heap.push_back({r, p, sym[p], sym[s.next[p]], res});
        std::push_heap(s.heap.begin(), s.heap.end(), cmp);
      }
    };
    for (int32_t p = 0; p + 1 < n; ++p) push(p);
    std::vector<char> alive(n, 1);
    while (!s.heap.empty()) {
      std::pop_heap(s.heap.begin(), s.heap.end(), cmp);
      const Scratch::Entry e = s.heap.back();
      s.heap.pop_back();
      const int32_t q = s.next[e.pos];
      if (!alive[e.pos] || q < 0 || sym[e.pos] != e.a || sym[q] != e.b) continue;
      sym[e.pos] = e.res;
      alive[q] = 0;
      s.next[e.pos] = s.next[q];
      if (s.next[q] >= 0) s.prev[s.next[q]] = e.pos;
      push(s.prev[e.pos]);
      push(e.pos);
    }
    size_t w = 0;
    for (int32_t p = 0; p >= 0 && p < n; p = s.next[p]) sym[w++] = sym[p];
    sym.resize(w);
  }

  std::vector<std::string> tokens_;
  std::array<int32_t, 256> byte_ids_;
  std::vector<std::pair<int32_t, int32_t>> merges_;
  std::vector<int32_t> results_;
  int32_t eot_;
  bool byte_kind_;
  PairTable table_;
};

std::unique_ptr<Tokenizer> make_bpe(std::vector<std::pair<int32_t, int32_t>> merges, bool byte_kind) {
  std::vector<std::string> tokens(256);
  std::array<int32_t, 256> byte_ids;
  for (int b = 0; b < 256; ++b) {
    tokens[b] = std::string(1, static_cast<char>(b));
    byte_ids[b] = b;
  }
  std::vector<int32_t> results;
  for (auto [a, b] : merges) {
    results.push_back(static_cast<int32_t>(tokens.size()));
    tokens.push_back(tokens[a] + tokens[b]);
  }
  const int32_t eot = static_cast<int32_t>(tokens.size());
  tokens.emplace_back(kEndOfText);
  return std::make_unique<BpeTokenizer>(std::move(tokens), byte_ids, std::move(merges), std::move(results), eot,
                                        byte_kind);
}

// ---------------------------------------------------------------------------------------------------------
class WordTokenizer final : public Tokenizer {
 public:
  explicit WordTokenizer(std::vector<std::string> vocab) : vocab_(std::move(vocab)) {
    index_.reserve(vocab_.size() * 2);
    for (size_t i = 0; i < vocab_.size(); ++i) index_.emplace(vocab_[i], static_cast<int32_t>(i));
  }
  TokenizerKind kind() const override { return TokenizerKind::Word; }
  int32_t vocab_size() const override { return static_cast<int32_t>(vocab_.size()); }
  int32_t eot_id() const override { return -1; }
  int32_t unk_id() const override { return 0; }

  void encode(std::string_view text, std::vector<int32_t>& out) const override {
    std::vector<std::string_view> words;
    split_words(text, words);
    out.reserve(out.size() + words.size());
    for (std::string_view w : words) {
      auto it = index_.find(w);
      out.push_back(it == index_.end() ? 0 : it->second);
    }
  }

  std::string decode(std::span<const int32_t> ids) const override {
    std::string out;
    for (size_t i = 0; i < ids.size(); ++i) {
      SEQMIX_CHECK(ids[i] >= 0 && ids[i] < vocab_size(), "decode: token id ", ids[i],
                   " is outside the vocabulary [0, ", vocab_size(), ")");
      if (i) out.push_back(' ');
      out += vocab_[ids[i]];
    }
    return out;
  }

  std::string to_json() const override {
    std::string j;
    j += "{\n  \"version\": \"1.0\",\n  \"truncation\": null,\n  \"padding\": null,\n  \"added_tokens\": [],\n";
    j += "  \"normalizer\": null,\n  \"pre_tokenizer\": {\"type\": \"WhitespaceSplit\"},\n";
    j += "  \"post_processor\": null,\n  \"decoder\": null,\n";
    j += "  \"model\": {\n    \"type\": \"WordLevel\",\n    \"unk_token\": ";
    json::append_quoted(j, kUnknown);
    j += ",\n    \"vocab\": {";
    for (size_t id = 0; id < vocab_.size(); ++id) {
      j += id ? ",\n      " : "\n      ";
      json::append_quoted(j, vocab_[id]);
      j += ": " + std::to_string(id);
    }
    j += "\n    }\n  }\n}\n";
    return j;
  }

 private:
  std::vector<std::string> vocab_;
  StrMap index_;
};

}  // namespace

std::unique_ptr<Tokenizer> make_byte_tokenizer() { return make_bpe({}, /*byte_kind=*/true); }

std::unique_ptr<Tokenizer> word_tokenizer_from_counts(std::vector<std::pair<std::string, int64_t>> counts,
                                                      int64_t min_count, int64_t max_vocab) {
  SEQMIX_CHECK(min_count >= 1, "word tokenizer: min_count must be >= 1, got ", min_count);
  std::vector<std::pair<std::string, int64_t>> kept;
  for (auto& [w, c] : counts)
    if (c >= min_count && w != kUnknown && utf8::valid(w)) kept.emplace_back(std::move(w), c);
  std::sort(kept.begin(), kept.end(), [](const auto& x, const auto& y) {
    return x.second != y.second ? x.second > y.second : x.first < y.first;
  });
  if (max_vocab > 0 && static_cast<int64_t>(kept.size()) + 1 > max_vocab) kept.resize(std::max<int64_t>(max_vocab - 1, 0));
  std::vector<std::string> vocab;
  vocab.reserve(kept.size() + 1);
  vocab.emplace_back(kUnknown);
  for (auto& [w, c] : kept) vocab.push_back(std::move(w));
  return std::make_unique<WordTokenizer>(std::move(vocab));
}

std::unique_ptr<Tokenizer> train_word_tokenizer(std::span<const std::string_view> texts, int64_t min_count,
                                                int64_t max_vocab) {
  std::unordered_map<std::string, int64_t, StrHash, std::equal_to<>> counts;
  std::vector<std::string_view> words;
  for (std::string_view t : texts) {
    words.clear();
    split_words(t, words);
    for (std::string_view w : words) {
      auto it = counts.find(w);
      if (it == counts.end()) counts.emplace(std::string(w), 1);
      else ++it->second;
    }
  }
  std::vector<std::pair<std::string, int64_t>> v(counts.begin(), counts.end());
  return word_tokenizer_from_counts(std::move(v), min_count, max_vocab);
}

// ---------------------------------------------------------------------------------------------------------
// BPE training. Unique pre-tokens with their counts; pair counts updated incrementally per merge, with an
// index from each pair to the words that contain it, and a lazy max-heap of (count, pair).
std::unique_ptr<Tokenizer> train_bpe(std::span<const std::string_view> texts, int32_t vocab_size,
                                     BpeTrainStats* stats) {
  const auto t0 = std::chrono::steady_clock::now();
  SEQMIX_CHECK(vocab_size >= 257, "bpe: vocab_size must be at least 257 (256 bytes + <|endoftext|>), got ",
               vocab_size);
  const int32_t want_merges = vocab_size - 257;

  std::unordered_map<std::string_view, int64_t> piece_counts;
  int64_t n_pieces = 0;
  for (std::string_view t : texts) {
    for (size_t i = 0; i < t.size();) {
      size_t e = next_pretoken(t, i);
      ++piece_counts[t.substr(i, e - i)];
      ++n_pieces;
      i = e;
    }
  }
  // Sorted for determinism (hash-map order must not leak into the result).
  std::vector<std::pair<std::string_view, int64_t>> uniq(piece_counts.begin(), piece_counts.end());
  piece_counts.clear();
  std::sort(uniq.begin(), uniq.end());

  std::vector<std::vector<int32_t>> words;
  std::vector<int64_t> wcount;
  words.reserve(uniq.size());
  for (auto& [p, c] : uniq) {
    if (p.size() < 2) continue;  // a single byte never takes part in a merge
    std::vector<int32_t> w(p.size());
    for (size_t k = 0; k < p.size(); ++k) w[k] = static_cast<unsigned char>(p[k]);
    words.push_back(std::move(w));
    wcount.push_back(c);
  }

  auto key = [](int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  };
  std::unordered_map<uint64_t, int64_t> pair_count;
  std::unordered_map<uint64_t, std::vector<int32_t>> where;
  pair_count.reserve(1 << 16);
  for (size_t wi = 0; wi < words.size(); ++wi) {
    const auto& w = words[wi];
    for (size_t k = 0; k + 1 < w.size(); ++k) {
      uint64_t kk = key(w[k], w[k + 1]);
      pair_count[kk] += wcount[wi];
      auto& lst = where[kk];
      if (lst.empty() || lst.back() != static_cast<int32_t>(wi)) lst.push_back(static_cast<int32_t>(wi));
    }
  }
  struct HeapItem {
    int64_t count;
    uint64_t pair;
    bool operator<(const HeapItem& o) const { return count != o.count ? count < o.count : pair > o.pair; }
  };
  std::priority_queue<HeapItem> heap;
  for (auto& [k, c] : pair_count) heap.push({c, k});

  // Tokens as bytes; a merge whose bytes already exist (reached by another route) reuses that id.
  std::vector<std::string> tokens(256);
  for (int x = 0; x < 256; ++x) tokens[x] = std::string(1, static_cast<char>(x));
  std::unordered_map<std::string, int32_t> token_id;
  for (int x = 0; x < 256; ++x) token_id[tokens[x]] = x;
  std::unordered_map<uint64_t, int32_t> merged;  // pairs already recorded
  std::vector<std::pair<int32_t, int32_t>> merges;
  std::vector<int32_t> results;
  std::vector<std::pair<uint64_t, int64_t>> delta;
  std::vector<int32_t> neww;
  while (static_cast<int32_t>(tokens.size()) - 256 < want_merges && !heap.empty()) {
    const HeapItem top = heap.top();
    heap.pop();
    auto pc = pair_count.find(top.pair);
    if (pc == pair_count.end() || pc->second != top.count || top.count <= 0) continue;  // stale
    const int32_t a = static_cast<int32_t>(top.pair >> 32), b = static_cast<int32_t>(top.pair & 0xFFFFFFFFu);
    int32_t nid;
    if (auto m = merged.find(top.pair); m != merged.end()) {
      nid = m->second;  // the pair formed again after an id was reused: apply it, record nothing new
    } else {
      std::string bytes = tokens[a] + tokens[b];
      auto ex = token_id.find(bytes);
      if (ex != token_id.end()) {
        nid = ex->second;
      } else {
        nid = static_cast<int32_t>(tokens.size());
        token_id.emplace(bytes, nid);
        tokens.push_back(std::move(bytes));
      }
      merged.emplace(top.pair, nid);
      merges.emplace_back(a, b);
      results.push_back(nid);
    }
    std::vector<int32_t> wl = std::move(where[top.pair]);
    where.erase(top.pair);
    pair_count.erase(pc);
    std::sort(wl.begin(), wl.end());
    wl.erase(std::unique(wl.begin(), wl.end()), wl.end());
    delta.clear();
    for (int32_t wi : wl) {
      auto& w = words[wi];
      bool found = false;
      for (size_t k = 0; k + 1 < w.size(); ++k)
        if (w[k] == a && w[k + 1] == b) { found = true; break; }
      if (!found) continue;
      const int64_t c = wcount[wi];
      neww.clear();
      for (size_t k = 0; k < w.size();) {
        if (k + 1 < w.size() && w[k] == a && w[k + 1] == b) {
          neww.push_back(nid);
          k += 2;
        } else {
          neww.push_back(w[k]);
          ++k;
        }
      }
      for (size_t k = 0; k + 1 < w.size(); ++k) {
        uint64_t kk = key(w[k], w[k + 1]);
        if (kk != top.pair) delta.emplace_back(kk, -c);
      }
      for (size_t k = 0; k + 1 < neww.size(); ++k) {
        uint64_t kk = key(neww[k], neww[k + 1]);
        delta.emplace_back(kk, c);
        if (neww[k] == nid || neww[k + 1] == nid) {
          auto& lst = where[kk];
          if (lst.empty() || lst.back() != wi) lst.push_back(wi);
        }
      }
      w.swap(neww);
    }
    std::sort(delta.begin(), delta.end());
    for (size_t k = 0; k < delta.size();) {
      uint64_t kk = delta[k].first;
      int64_t d = 0;
      for (; k < delta.size() && delta[k].first == kk; ++k) d += delta[k].second;
      if (d == 0) continue;
      int64_t& cur = pair_count[kk];
      cur += d;
      if (cur > 0) heap.push({cur, kk});
      else {
        pair_count.erase(kk);
        where.erase(kk);
      }
    }
  }
  if (stats) {
    stats->pretokens = n_pieces;
    stats->unique_pretokens = static_cast<int64_t>(uniq.size());
    stats->merges = static_cast<int32_t>(merges.size());
    stats->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  std::array<int32_t, 256> byte_ids;
  for (int x = 0; x < 256; ++x) byte_ids[x] = x;
  const int32_t eot = static_cast<int32_t>(tokens.size());
  tokens.emplace_back(kEndOfText);
  return std::make_unique<BpeTokenizer>(std::move(tokens), byte_ids, std::move(merges), std::move(results), eot,
                                        /*byte_kind=*/false);
}

// ---------------------------------------------------------------------------------------------------------
std::unique_ptr<Tokenizer> tokenizer_from_json(std::string_view text, const std::string& what) {
  const json::Value root = json::parse(text, what);
  const json::Value& model = root.at("model", what);
  const json::Value& type = model.at("type", what);
  SEQMIX_CHECK(type.is_string(), what, ": model.type must be a string");
  const json::Value& vocab = model.at("vocab", what);
  SEQMIX_CHECK(vocab.is_object(), what, ": model.vocab must be an object of token -> id");

  // Added (special) tokens: content is literal, not byte-level encoded.
  std::unordered_map<std::string, int32_t> added;
  if (const json::Value* at = root.find("added_tokens"); at && at->is_array())
    for (const auto& t : at->arr) added[t.at("content", what).str] = static_cast<int32_t>(t.at("id", what).num);

  const int32_t n = static_cast<int32_t>(vocab.obj.size());
  auto check_id = [&](double id, const std::string& tok) {
    SEQMIX_CHECK(id >= 0 && id < n && id == static_cast<int32_t>(id), what, ": token ", json::quoted(tok),
                 " has id ", id, " outside [0, ", n, "); ids must be dense");
    return static_cast<int32_t>(id);
  };

  if (type.str == "WordLevel") {
    std::vector<std::string> words(n);
    std::vector<char> seen(n, 0);
    for (const auto& [tok, id] : vocab.obj) {
      int32_t i = check_id(id.num, tok);
      SEQMIX_CHECK(!seen[i], what, ": id ", i, " appears twice in model.vocab");
      seen[i] = 1;
      words[i] = tok;
    }
    SEQMIX_CHECK(n > 0 && words[0] == kUnknown, what, ": a word tokenizer must have ", kUnknown, " as id 0");
    return std::make_unique<WordTokenizer>(std::move(words));
  }
  SEQMIX_CHECK(type.str == "BPE", what, ": model.type \"", type.str,
               "\" is not supported; seqmix reads BPE (byte-level) and WordLevel tokenizers");

  std::vector<std::string> tokens(n);
  std::vector<char> seen(n, 0);
  std::unordered_map<std::string, int32_t> by_bytes;
  int32_t eot = -1;
  for (const auto& [tok, id] : vocab.obj) {
    int32_t i = check_id(id.num, tok);
    SEQMIX_CHECK(!seen[i], what, ": id ", i, " appears twice in model.vocab");
    seen[i] = 1;
    auto ad = added.find(tok);
    if (ad != added.end()) {
      tokens[i] = tok;
      if (tok == kEndOfText) eot = i;
      continue;
    }
    tokens[i] = byte_level_decode(tok, what);
    by_bytes[tokens[i]] = i;
  }
  std::array<int32_t, 256> byte_ids;
  for (int b = 0; b < 256; ++b) {
    auto it = by_bytes.find(std::string(1, static_cast<char>(b)));
    SEQMIX_CHECK(it != by_bytes.end(), what, ": byte ", b, " has no token; a byte-level BPE needs all 256");
    byte_ids[b] = it->second;
  }
  std::vector<std::pair<int32_t, int32_t>> merges;
  std::vector<int32_t> results;
  const json::Value& mv = model.at("merges", what);
  SEQMIX_CHECK(mv.is_array(), what, ": model.merges must be an array");
  for (const auto& m : mv.arr) {
    std::string l, r;
    if (m.is_string()) {
      size_t sp = m.str.find(' ');
      SEQMIX_CHECK(sp != std::string::npos, what, ": merge ", json::quoted(m.str), " is not \"left right\"");
      l = m.str.substr(0, sp);
      r = m.str.substr(sp + 1);
    } else {
      SEQMIX_CHECK(m.is_array() && m.arr.size() == 2, what, ": a merge must be \"left right\" or [left, right]");
      l = m.arr[0].str;
      r = m.arr[1].str;
    }
    auto find_tok = [&](const std::string& s) {
      std::string bytes = byte_level_decode(s, what);
      auto it = by_bytes.find(bytes);
      SEQMIX_CHECK(it != by_bytes.end(), what, ": merge part ", json::quoted(s), " is not in the vocabulary");
      return std::make_pair(it->second, bytes);
    };
    auto [li, lb] = find_tok(l);
    auto [ri, rb] = find_tok(r);
    auto res = by_bytes.find(lb + rb);
    SEQMIX_CHECK(res != by_bytes.end(), what, ": the result of merge ", json::quoted(l + " " + r),
                 " is not in the vocabulary");
    merges.emplace_back(li, ri);
    results.push_back(res->second);
  }
  const bool byte_kind = merges.empty();
  return std::make_unique<BpeTokenizer>(std::move(tokens), byte_ids, std::move(merges), std::move(results), eot,
                                        byte_kind);
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  SEQMIX_CHECK(f.good(), "cannot open tokenizer file ", path,
               "; prepare the dataset first (seqmix prepare SOURCE --tokenizer ... --out DIR)");
  std::stringstream ss;
  ss << f.rdbuf();
  return tokenizer_from_json(ss.str(), path);
}

}  // namespace seqmix::data
