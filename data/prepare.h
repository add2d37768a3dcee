// `seqmix prepare` and the on-the-fly preparation the trainer uses for `data.source`.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "data/tokenizer.h"

namespace seqmix::data {

struct PrepareOptions {
  std::string source;                        // brown | kjv | a path (file, directory, JSONL)
  TokenizerKind tokenizer = TokenizerKind::Byte;
  int64_t vocab_size = 0;                    // bpe: total vocabulary (default 8192); word: an optional cap
  int64_t min_count = 4;                     // word: keep words seen at least this often in train
  std::string out;                           // output directory (must not exist unless force)
  std::string raw_dir;                       // where brown/kjv raw data lives (default: raw_data_dir())
  std::string text_field = "text";           // JSONL field holding the text
  std::string tokenizer_file;                // use this tokenizer.json instead of training one (kind from file)
  uint64_t shard_tokens = uint64_t(1) << 28;  // tokens per shard at most
  bool force = false;                        // replace an existing output directory
  bool fetch = true;                         // run scripts/get_corpus.sh when brown/kjv raw data is missing
  bool quiet = false;
};

// Prepares a dataset directory (written to a temporary directory, then renamed: never left half-written).
// Returns the output directory.
std::string prepare_dataset(const PrepareOptions& opts);

// CLI: seqmix prepare SOURCE --tokenizer byte|word|bpe [--vocab-size N] [--min-count N] --out DIR
//      [--tokenizer-file PATH] [--raw-dir DIR] [--text-field NAME] [--shard-tokens N] [--force] [--no-fetch]
//      [--quiet]
// (--tokenizer-file encodes with an existing tokenizer.json, e.g. another dataset's, instead of training one.)
// `args` exclude the program and subcommand names. Returns 0 on success; prints errors to stderr and
// returns non-zero otherwise.
int prepare_main(const std::vector<std::string>& args);

// The dataset directory for a config's data.source (brown | kjv | a path) + tokenizer (+ vocab_size; 0 =
// the default), preparing it first when missing, into <cache>/<name>-<tokenizer>[-<vocab>]. The cache is
// $SEQMIX_DATA_CACHE, else ./data_cache. A path source is re-prepared when its files changed (size or
// modification time). Missing brown/kjv raw data is fetched with scripts/get_corpus.sh (looked up next to
// the executable and in the current directory); if that cannot run, the error gives the exact command.
std::string ensure_dataset(const std::string& source, const std::string& tokenizer, int64_t vocab_size = 0,
                           int64_t min_count = 4);

// $SEQMIX_DATA_CACHE or "data_cache".
std::string data_cache_dir();
// Where brown/kjv raw files live: <cache>/raw.
std::string raw_data_dir();
// Path of scripts/get_corpus.sh, or "" when it cannot be found.
std::string find_corpus_script();
// Makes sure <raw_dir>/brown (or <raw_dir>/kjv/kjv.txt) exists, running the script when allowed.
// Returns the path of the raw data (directory for brown, file for kjv).
std::string ensure_raw_corpus(const std::string& name, const std::string& raw_dir, bool fetch);

}  // namespace seqmix::data
