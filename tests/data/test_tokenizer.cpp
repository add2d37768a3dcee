#include <gtest/gtest.h>

#include <random>

#include "core/error.h"
#include <map>

#include "data/json.h"
#include "data/tokenizer.h"
#include "data/utf8.h"

using namespace seqmix::data;

namespace {

std::vector<std::string> pieces_of(std::string_view s) {
  std::vector<std::pair<size_t, size_t>> p;
  pretokenize(s, p);
  std::vector<std::string> out;
  for (auto [a, b] : p) out.emplace_back(s.substr(a, b - a));
  return out;
}

// Random valid UTF-8 mixing ASCII words, spaces, digits, punctuation, accented letters, CJK and emoji.
std::string random_utf8(std::mt19937_64& rng, size_t n_chars) {
  static const uint32_t pool[] = {'a', 'b', 'e', 't', 'h', 'Z', ' ', ' ', ' ', '\n', '\t', '0', '7', '.', ',',
                                  '\'', 's', '"', '!', 0xE9, 0xFC, 0x3B1, 0x4E2D, 0x6587, 0x1F600, 0x2003,
                                  0xA0, 0x661, 0x2167, 0x300, 0xFFFD, 0x10FFFF};
  std::string s;
  for (size_t i = 0; i < n_chars; ++i) utf8::append(s, pool[rng() % std::size(pool)]);
  return s;
}

std::string random_bytes(std::mt19937_64& rng, size_t n) {
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng() & 0xFF);
  return s;
}

std::string training_text() {
  std::string t;
  std::mt19937_64 rng(7);
  const char* words[] = {"the", "cat", "sat", "on", "mat", "and", "then", "they're", "running", "1999", "café",
                         "naïve", "über", "x", "  ", "!!", "don't"};
  for (int i = 0; i < 3000; ++i) {
    t += words[rng() % std::size(words)];
    t += (rng() % 7 == 0) ? "\n" : " ";
  }
  return t;
}

}  // namespace

TEST(Pretokenize, Gpt2Pattern) {
  EXPECT_EQ(pieces_of("Hello world"), (std::vector<std::string>{"Hello", " world"}));
  EXPECT_EQ(pieces_of("don't stop"), (std::vector<std::string>{"don", "'t", " stop"}));
  EXPECT_EQ(pieces_of("a  b"), (std::vector<std::string>{"a", " ", " b"}));
  EXPECT_EQ(pieces_of("a\nb"), (std::vector<std::string>{"a", "\n", "b"}));
  EXPECT_EQ(pieces_of("x   "), (std::vector<std::string>{"x", "   "}));
  EXPECT_EQ(pieces_of("abc123 45!?"), (std::vector<std::string>{"abc", "123", " 45", "!?"}));
  EXPECT_EQ(pieces_of("''s"), (std::vector<std::string>{"''", "s"}));
  EXPECT_EQ(pieces_of(" 's"), (std::vector<std::string>{" '", "s"}));
  EXPECT_EQ(pieces_of("we'll WE'LL"), (std::vector<std::string>{"we", "'ll", " WE", "'", "LL"}));
  EXPECT_EQ(pieces_of("naïve café"), (std::vector<std::string>{"naïve", " café"}));
  EXPECT_EQ(pieces_of("\n\n  x"), (std::vector<std::string>{"\n\n ", " x"}));
}

TEST(ByteTokenizer, RoundTripsRandomBytes) {
  auto tok = make_byte_tokenizer();
  EXPECT_EQ(tok->vocab_size(), 257);
  EXPECT_EQ(tok->eot_id(), 256);
  std::mt19937_64 rng(1);
  for (int i = 0; i < 50; ++i) {
    std::string s = random_bytes(rng, rng() % 300);
    auto ids = tok->encode(s);
    ASSERT_EQ(ids.size(), s.size());
    EXPECT_EQ(tok->decode(ids), s);
  }
}

TEST(BpeTokenizer, RoundTripsRandomUtf8AndBytes) {
  std::string text = training_text();
  std::vector<std::string_view> texts{text};
  auto tok = train_bpe(texts, 400);
  EXPECT_GT(tok->vocab_size(), 300);
  std::mt19937_64 rng(2);
  for (int i = 0; i < 100; ++i) {
    std::string s = (i % 2) ? random_utf8(rng, rng() % 400) : random_bytes(rng, rng() % 400);
    if (i % 5 == 0) s += text.substr(rng() % 1000, 500);
    auto ids = tok->encode(s);
    for (int32_t id : ids) ASSERT_TRUE(id >= 0 && id < tok->vocab_size());
    ASSERT_EQ(tok->decode(ids), s) << "case " << i;
  }
  // Long pieces (the heap path) agree with the round trip too.
  std::string spaces(5000, ' ');
  spaces += "x";
  EXPECT_EQ(tok->decode(tok->encode(spaces)), spaces);
  // Compression on in-distribution text.
  EXPECT_LT(tok->encode(text).size(), text.size() / 2);
}

TEST(BpeTokenizer, DeterministicAndSaveLoadSameIds) {
  std::string text = training_text();
  std::vector<std::string_view> texts{text};
  auto a = train_bpe(texts, 350);
  auto b = train_bpe(texts, 350);
  EXPECT_EQ(a->to_json(), b->to_json());
  auto c = tokenizer_from_json(a->to_json(), "test");
  EXPECT_EQ(c->kind(), TokenizerKind::Bpe);
  EXPECT_EQ(c->vocab_size(), a->vocab_size());
  EXPECT_EQ(c->eot_id(), a->eot_id());
  std::mt19937_64 rng(3);
  for (int i = 0; i < 20; ++i) {
    std::string s = random_utf8(rng, 200) + text.substr(rng() % 1000, 300);
    EXPECT_EQ(a->encode(s), c->encode(s));
  }
  EXPECT_EQ(c->to_json(), a->to_json());
}

TEST(WordTokenizer, MinCountRuleAndUnknown) {
  std::string text = "a a a a b b b b c c c d\n e e e e e";
  std::vector<std::string_view> texts{text};
  auto tok = train_word_tokenizer(texts, 4);  // c (3 times) and d (once) become <unk>
  EXPECT_EQ(tok->vocab_size(), 4);            // <unk>, e, a, b
  EXPECT_EQ(tok->unk_id(), 0);
  EXPECT_EQ(tok->encode("e a b c zz"), (std::vector<int32_t>{1, 2, 3, 0, 0}));
  EXPECT_EQ(tok->decode(tok->encode("a  b\te")), "a b e");
  auto c = tokenizer_from_json(tok->to_json(), "test");
  EXPECT_EQ(c->kind(), TokenizerKind::Word);
  EXPECT_EQ(c->encode("e a b c zz"), tok->encode("e a b c zz"));
}

TEST(Tokenizer, BadJsonIsRefusedClearly) {
  EXPECT_THROW(tokenizer_from_json("{\"model\": {\"type\": \"Unigram\", \"vocab\": {}}}", "x.json"), seqmix::Error);
  EXPECT_THROW(tokenizer_from_json("{not json", "x.json"), seqmix::Error);
  EXPECT_THROW(parse_tokenizer_kind("sentencepiece"), seqmix::Error);
}

// An independent, plain GPT-2 BPE over byte strings, driven by the merges in the tokenizer.json, checks the
// encoder (both its short-piece and long-piece paths) and what a Hugging Face reader of the file would do.
TEST(BpeTokenizer, MatchesPlainReferenceFromJson) {
  std::string text = training_text();
  std::vector<std::string_view> texts{text};
  auto tok = train_bpe(texts, 420);
  auto root = seqmix::data::json::parse(tok->to_json(), "t");
  const auto& model = root.at("model", "t");
  std::map<std::pair<std::string, std::string>, int> rank;
  for (size_t r = 0; r < model.at("merges", "t").arr.size(); ++r) {
    const std::string& m = model.at("merges", "t").arr[r].str;
    auto sp = m.find(' ');
    rank[{byte_level_decode(m.substr(0, sp), "t"), byte_level_decode(m.substr(sp + 1), "t")}] = int(r);
  }
  std::map<std::string, int32_t> id;
  for (const auto& [k, v] : model.at("vocab", "t").obj)
    if (k != kEndOfText) id[byte_level_decode(k, "t")] = int32_t(v.num);
  auto reference = [&](std::string_view s) {
    std::vector<int32_t> out;
    std::vector<std::pair<size_t, size_t>> pieces;
    pretokenize(s, pieces);
    for (auto [b, e] : pieces) {
      std::vector<std::string> parts;
      for (size_t i = b; i < e; ++i) parts.emplace_back(1, s[i]);
      while (parts.size() > 1) {
        int best = INT32_MAX;
        size_t at = 0;
        for (size_t i = 0; i + 1 < parts.size(); ++i) {
          auto it = rank.find({parts[i], parts[i + 1]});
          if (it != rank.end() && it->second < best) best = it->second, at = i;
        }
        if (best == INT32_MAX) break;
        parts[at] += parts[at + 1];
        parts.erase(parts.begin() + at + 1);
      }
      for (auto& p : parts) out.push_back(id.at(p));
    }
    return out;
  };
  std::mt19937_64 rng(5);
  std::string long_piece;
  for (int i = 0; i < 40; ++i) long_piece += "thecat";
  std::vector<std::string> cases{long_piece, " " + long_piece + "  ", std::string(200, ' ') + "x",
                                 text.substr(0, 3000)};
  for (int i = 0; i < 30; ++i) cases.push_back(random_utf8(rng, 300));
  for (const auto& c : cases) EXPECT_EQ(tok->encode(c), reference(c)) << c.substr(0, 40);
}
