// A prepared dataset directory, as written by `seqmix prepare`:
//
//   DIR/manifest.json     source, split rule, sizes, tokenizer, shard list with SHA-256 checksums
//   DIR/tokenizer.json    Hugging Face tokenizers format (data/tokenizer.h)
//   DIR/train_000.bin ... token shards (data/shard.h), likewise val_*.bin and test_*.bin
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/loader.h"
#include "data/tokenizer.h"

namespace seqmix::data {

inline constexpr int kManifestVersion = 1;

struct ShardEntry {
  std::string file;  // relative to the dataset directory
  uint64_t tokens = 0;
  std::string sha256;
};

struct SplitEntry {
  std::string name;  // train | val | test
  uint64_t tokens = 0;
  uint64_t bytes = 0;      // text bytes before tokenization
  uint64_t documents = 0;
  int64_t words = 0;       // brown only (0 otherwise)
  std::vector<ShardEntry> shards;
};

class Dataset {
 public:
  // Reads DIR/manifest.json; throws naming the directory and what to do when it is missing or malformed.
  static Dataset open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  const std::string& source() const { return source_; }
  const std::string& tokenizer_kind() const { return tokenizer_kind_; }
  int64_t vocab_size() const { return vocab_size_; }
  const std::vector<SplitEntry>& splits() const { return splits_; }
  const SplitEntry& split_entry(const std::string& name) const;
  // Memory-maps a split's shards (header and payload checks on open).
  std::shared_ptr<TokenSplit> split(const std::string& name) const;
  std::unique_ptr<Tokenizer> tokenizer() const;
  // Recomputes every file's SHA-256 and compares with the manifest; throws naming the first mismatch.
  void verify_checksums() const;
  const std::string& manifest_text() const { return manifest_text_; }

 private:
  std::string dir_, source_, tokenizer_kind_, tokenizer_file_, tokenizer_sha256_, manifest_text_;
  int64_t vocab_size_ = 0;
  std::vector<SplitEntry> splits_;
};

}  // namespace seqmix::data
