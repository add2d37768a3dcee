#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>

#include "core/error.h"
#include "data/corpus.h"
#include "data/dataset.h"
#include "data/prepare.h"
#include "support/test_util.h"

namespace fs = std::filesystem;
using namespace seqmix::data;

namespace {

struct TempDir {
  fs::path path;
  TempDir() {
    static int n = 0;
    path = fs::temp_directory_path() / ("seqmix_prep_" + std::to_string(::getpid()) + "_" + std::to_string(n++));
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

void write(const fs::path& p, const std::string& s) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << s;
}

std::string read(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// A small corpus in the Brown file format: word/TAG tokens, tab-indented lines, blank lines. Word i is
// "w<i % 7>" except a few special tokens; returns the words in corpus (file-name) order.
std::vector<std::string> make_brown(const fs::path& dir, int files, int words_per_file) {
  std::vector<std::string> names;
  for (int f = 0; f < files; ++f) names.push_back(std::string("c") + char('a' + f % 3) + "0" + char('1' + f / 3));
  std::vector<std::string> sorted = names;
  std::sort(sorted.begin(), sorted.end());
  std::map<std::string, std::string> content;
  std::vector<std::string> expected;
  int counter = 0;
  for (const auto& n : sorted) {
    std::string text = "\n\n";
    for (int k = 0; k < words_per_file; ++k, ++counter) {
      std::string w = "w" + std::to_string(counter % 7);
      if (counter % 11 == 0) w = "A/B";           // a slash inside the word: only the final /TAG goes
      if (counter % 13 == 0) w = "''";
      if (counter % 17 == 0) w = "Mr." + std::to_string(counter);  // rare words
      expected.push_back(w);
      text += (k % 8 == 0 ? "\n\t" : " ") + w + "/nn-tl";
    }
    content[n] = text + "\n";
  }
  // Written in a scrambled order: the reader must sort by name.
  for (auto it = names.rbegin(); it != names.rend(); ++it) write(dir / *it, content[*it]);
  write(dir / "README", "not/part of/the corpus\n");
  write(dir / "cats.txt", "ca01 news\n");
  return expected;
}

}  // namespace

TEST(Brown, ReaderStripsTagsAndKeepsFileOrder) {
  TempDir t;
  auto expected = make_brown(t.path, 5, 26);
  auto words = read_brown_words(t.path.string());
  EXPECT_EQ(words, expected);
}

TEST(Brown, SplitByCountAndVocabularyRule) {
  TempDir t;
  auto expected = make_brown(t.path, 5, 26);  // 130 words
  auto r = split_brown_words(read_brown_words(t.path.string()), 80, 20);
  EXPECT_EQ(r.words[0], 80);
  EXPECT_EQ(r.words[1], 20);
  EXPECT_EQ(r.words[2], 30);
  auto join = [&](size_t b, size_t e) {
    std::string s;
    for (size_t i = b; i < e; ++i) s += (i > b ? " " : "") + expected[i];
    return s;
  };
  ASSERT_EQ(r.train.size(), 1u);
  EXPECT_EQ(r.train[0], join(0, 80));
  EXPECT_EQ(r.val[0], join(80, 100));
  EXPECT_EQ(r.test[0], join(100, 130));
  // Words seen <= 3 times in the training part become <unk>.
  std::map<std::string, int64_t> counts;
  for (size_t i = 0; i < 80; ++i) ++counts[expected[i]];
  int64_t kept = 0;
  for (auto& [w, c] : counts) kept += c >= 4;
  auto tok = word_tokenizer_from_counts({counts.begin(), counts.end()}, 4);
  EXPECT_EQ(tok->vocab_size(), kept + 1);
  for (auto& [w, c] : counts) {
    auto ids = tok->encode(w);
    ASSERT_EQ(ids.size(), 1u);
    EXPECT_EQ(ids[0] == 0, c <= 3) << w << " seen " << c;
  }
  EXPECT_THROW(split_brown_words(read_brown_words(t.path.string()), 100, 30), seqmix::Error);
}

// The real corpus, when SEQMIX_BROWN_DIR points at the 500 files (scripts/get_corpus.sh brown).
TEST(Brown, RealCorpusCounts) {
  const char* dir = std::getenv("SEQMIX_BROWN_DIR");
  if (!dir || !*dir) GTEST_SKIP() << "set SEQMIX_BROWN_DIR to the Brown files (data_cache/raw/brown) to run";
  auto r = read_brown(dir);
  EXPECT_EQ(r.words[0] + r.words[1] + r.words[2], 1161192);
  EXPECT_EQ(r.words[0], 800000);
  EXPECT_EQ(r.words[1], 200000);
  EXPECT_EQ(r.words[2], 161192);
  std::unordered_map<std::string, int64_t> counts;
  for (auto& w : r.train_words) ++counts[w];
  auto tok = word_tokenizer_from_counts({counts.begin(), counts.end()}, 4);
  EXPECT_EQ(tok->vocab_size(), 14114);
}

TEST(Corpus, CutDocumentsAtLineStarts) {
  std::string a;
  for (int i = 0; i < 100; ++i) a += "line " + std::to_string(i) + "\n";
  auto r = cut_documents({a});
  std::string joined;
  for (auto* v : {&r.train, &r.val, &r.test})
    for (auto& d : *v) joined += d;
  EXPECT_EQ(joined, a);
  ASSERT_EQ(r.train.size(), 1u);
  ASSERT_EQ(r.val.size(), 1u);
  ASSERT_EQ(r.test.size(), 1u);
  EXPECT_EQ(r.val[0].rfind("line", 0), 0u);  // starts at a line start
  EXPECT_NEAR(double(r.train[0].size()) / a.size(), 0.90, 0.02);
  EXPECT_NEAR(double(r.val[0].size()) / a.size(), 0.05, 0.02);

  std::vector<std::string> docs;
  for (int i = 0; i < 40; ++i) docs.push_back("document " + std::to_string(i));
  auto d = cut_documents(docs);
  EXPECT_EQ(d.train.size() + d.val.size() + d.test.size(), 40u);  // whole documents (no newlines inside)
  EXPECT_FALSE(d.val.empty());
  EXPECT_FALSE(d.test.empty());
}

namespace {
std::string sample_text(int lines) {
  std::mt19937_64 rng(4);
  const char* w[] = {"alpha", "beta", "gamma", "delta", "naïve", "über", "42", "it's", ",", "!", "日本"};
  std::string s;
  for (int i = 0; i < lines; ++i) {
    int n = 3 + rng() % 8;
    for (int k = 0; k < n; ++k) s += std::string(k ? " " : "") + w[rng() % std::size(w)];
    s += "\n";
  }
  return s;
}

std::string decode_split(const Dataset& d, const std::string& name) {
  auto split = d.split(name);
  std::vector<int32_t> ids(split->size());
  split->copy(0, ids.size(), ids.data());
  return d.tokenizer()->decode(ids);
}
}  // namespace

TEST(Prepare, TextFileWithEachTokenizer) {
  TempDir t;
  const std::string text = sample_text(400);
  write(t.path / "corpus.txt", text);
  for (const char* kind : {"byte", "bpe", "word"}) {
    const std::string out = (t.path / (std::string("ds-") + kind)).string();
    std::vector<std::string> args{(t.path / "corpus.txt").string(), "--tokenizer", kind, "--out", out, "--quiet"};
    if (std::string(kind) == "bpe") args.insert(args.end(), {"--vocab-size", "300"});
    if (std::string(kind) == "word") args.insert(args.end(), {"--min-count", "2"});
    ASSERT_EQ(prepare_main(args), 0) << kind;
    Dataset d = Dataset::open(out);
    EXPECT_EQ(d.tokenizer_kind(), kind);
    d.verify_checksums();
    uint64_t total = 0;
    for (const auto& s : d.splits()) total += s.tokens;
    EXPECT_GT(d.split("train")->size(), 8 * total / 10);
    if (std::string(kind) != "word") {
      // Byte-exact: the three splits decode back to the text.
      EXPECT_EQ(decode_split(d, "train") + decode_split(d, "val") + decode_split(d, "test"), text) << kind;
    } else {
      EXPECT_EQ(d.tokenizer()->vocab_size(), d.vocab_size());
    }
    EXPECT_FALSE(fs::exists(out + ".tmp-" + std::to_string(::getpid())));
  }
  // An existing output directory is not overwritten without --force.
  testing::internal::CaptureStderr();
  EXPECT_NE(prepare_main({(t.path / "corpus.txt").string(), "--tokenizer", "byte", "--out",
                          (t.path / "ds-byte").string(), "--quiet"}),
            0);
  EXPECT_NE(testing::internal::GetCapturedStderr().find("already exists"), std::string::npos);
}

TEST(Prepare, JsonlDocumentsAreSeparatedByEndOfText) {
  TempDir t;
  std::string jl;
  for (int i = 0; i < 60; ++i) jl += "{\"id\": " + std::to_string(i) + ", \"body\": \"doc " + std::to_string(i) + " é\\n\"}\n";
  write(t.path / "c.jsonl", jl);
  const std::string out = (t.path / "ds").string();
  ASSERT_EQ(prepare_main({(t.path / "c.jsonl").string(), "--tokenizer", "byte", "--text-field", "body", "--out", out,
                          "--quiet"}),
            0);
  Dataset d = Dataset::open(out);
  const std::string train = decode_split(d, "train");
  EXPECT_EQ(train.rfind("doc 0 é\n<|endoftext|>doc 1 é\n", 0), 0u);
  EXPECT_EQ(d.split_entry("train").documents + d.split_entry("val").documents + d.split_entry("test").documents, 60u);

  testing::internal::CaptureStderr();
  EXPECT_NE(prepare_main({(t.path / "c.jsonl").string(), "--tokenizer", "byte", "--out", (t.path / "x").string(),
                          "--quiet"}),
            0);  // no "text" field
  EXPECT_NE(testing::internal::GetCapturedStderr().find("--text-field"), std::string::npos);
}

TEST(Prepare, BadArgumentsAndCorruptDatasets) {
  TempDir t;
  testing::internal::CaptureStderr();
  EXPECT_NE(prepare_main({}), 0);
  EXPECT_NE(prepare_main({"x.txt", "--tokenizer", "sentencepiece", "--out", "y"}), 0);
  EXPECT_NE(prepare_main({"x.txt", "--tokenizer", "byte", "--bogus", "--out", "y"}), 0);
  EXPECT_NE(prepare_main({(t.path / "missing.txt").string(), "--tokenizer", "byte", "--out", (t.path / "o").string()}), 0);
  EXPECT_NE(prepare_main({"brown", "--tokenizer", "word", "--raw-dir", (t.path / "raw").string(), "--no-fetch",
                          "--out", (t.path / "b").string()}),
            0);
  const std::string err = testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("get_corpus.sh brown"), std::string::npos) << err;
  EXPECT_FALSE(fs::exists(t.path / "o"));

  write(t.path / "c.txt", sample_text(200));
  const std::string out = (t.path / "ds").string();
  ASSERT_EQ(prepare_main({(t.path / "c.txt").string(), "--tokenizer", "byte", "--out", out, "--quiet"}), 0);
  // Flip one byte of the val shard: opening the split refuses it, and the manifest checksums disagree.
  const fs::path shard = fs::path(out) / "val_000.bin";
  std::string bytes = read(shard);
  bytes[bytes.size() / 2] ^= 1;
  write(shard, bytes);
  Dataset d = Dataset::open(out);
  EXPECT_THROW(d.split("val"), seqmix::Error);
  EXPECT_THROW(d.verify_checksums(), seqmix::Error);
  EXPECT_NO_THROW(d.split("train"));
  EXPECT_THROW(Dataset::open((t.path / "nothing").string()), seqmix::Error);
}

TEST(Prepare, EnsureDatasetCachesAndNoticesChanges) {
  TempDir t;
  write(t.path / "src" / "a.txt", sample_text(100));
  write(t.path / "src" / "b.txt", sample_text(50));
  seqmix::testing::ScopedEnv cache_env("SEQMIX_DATA_CACHE", (t.path / "cache").string().c_str());
  testing::internal::CaptureStderr();
  const std::string dir = ensure_dataset((t.path / "src").string(), "bpe", 300);
  EXPECT_EQ(fs::path(dir).parent_path(), t.path / "cache");
  EXPECT_NE(fs::path(dir).filename().string().find("-bpe-300"), std::string::npos);
  const auto when = fs::last_write_time(fs::path(dir) / "manifest.json");
  EXPECT_EQ(ensure_dataset((t.path / "src").string(), "bpe", 300), dir);  // cached
  EXPECT_EQ(fs::last_write_time(fs::path(dir) / "manifest.json"), when);
  write(t.path / "src" / "b.txt", sample_text(60));  // changed: prepared again
  EXPECT_EQ(ensure_dataset((t.path / "src").string(), "bpe", 300), dir);
  testing::internal::GetCapturedStderr();
  const Dataset d = Dataset::open(dir);
  EXPECT_NE(d.manifest_text().find("source_fingerprint"), std::string::npos);
  EXPECT_EQ(d.split("train")->size() + d.split("val")->size() + d.split("test")->size(),
            d.split_entry("train").tokens + d.split_entry("val").tokens + d.split_entry("test").tokens);
}

TEST(Prepare, TokenizerFileReusesAnExistingTokenizer) {
  TempDir t;
  write(t.path / "c.txt", sample_text(300));
  const std::string a = (t.path / "a").string(), b = (t.path / "b").string();
  ASSERT_EQ(prepare_main({(t.path / "c.txt").string(), "--tokenizer", "bpe", "--vocab-size", "320", "--out", a, "--quiet"}), 0);
  ASSERT_EQ(prepare_main({(t.path / "c.txt").string(), "--tokenizer-file", a + "/tokenizer.json", "--out", b, "--quiet"}), 0);
  const Dataset da = Dataset::open(a), db = Dataset::open(b);
  EXPECT_EQ(db.tokenizer_kind(), "bpe");
  EXPECT_EQ(read(fs::path(a) / "tokenizer.json"), read(fs::path(b) / "tokenizer.json"));
  for (const char* s : {"train", "val", "test"}) EXPECT_EQ(read(fs::path(a) / (std::string(s) + "_000.bin")),
                                                           read(fs::path(b) / (std::string(s) + "_000.bin")));
}

TEST(Prepare, OutputWithTrailingSlash) {
  TempDir t;
  write(t.path / "c.txt", sample_text(50));
  const std::string out = (t.path / "ds").string() + "/";
  ASSERT_EQ(prepare_main({(t.path / "c.txt").string(), "--tokenizer", "byte", "--out", out, "--quiet"}), 0);
  EXPECT_TRUE(fs::exists(t.path / "ds" / "manifest.json"));
  EXPECT_EQ(std::distance(fs::directory_iterator(t.path), fs::directory_iterator()), 2);  // c.txt and ds
}
