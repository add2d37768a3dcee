// Tokenizers: byte (256 byte ids + <|endoftext|>), word (whitespace-split words from a training split with a
// minimum count, plus <unk>) and byte-level BPE (GPT-2 pre-tokenization, merges learned from a training split).
//
// All three are saved as a Hugging Face `tokenizers` tokenizer.json (ByteLevel BPE, or WordLevel with a
// WhitespaceSplit pre-tokenizer), which that library loads and which gives the same ids as ours on valid UTF-8.
// Ours also encodes invalid UTF-8: each invalid byte is its own pre-token character, so byte/BPE
// encode->decode reproduces any byte string exactly. The literal text "<|endoftext|>" is encoded as plain
// text by encode(); only the data pipeline inserts the special id (between documents).
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace seqmix::data {

enum class TokenizerKind { Byte, Word, Bpe };
const char* kind_name(TokenizerKind k);                     // "byte", "word", "bpe"
TokenizerKind parse_tokenizer_kind(std::string_view name);  // throws naming the accepted values

inline constexpr const char* kEndOfText = "<|endoftext|>";
inline constexpr const char* kUnknown = "<unk>";

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual TokenizerKind kind() const = 0;
  virtual int32_t vocab_size() const = 0;
  // Appends the ids of `text` to `out`.
  virtual void encode(std::string_view text, std::vector<int32_t>& out) const = 0;
  std::vector<int32_t> encode(std::string_view text) const;
  // Byte and BPE: the exact bytes. Word: the words joined by single spaces (<unk> for the unknown id).
  virtual std::string decode(std::span<const int32_t> ids) const = 0;
  // The id placed between documents, or -1 when this tokenizer has none (word).
  virtual int32_t eot_id() const = 0;
  // The id of unknown words, or -1 (byte and BPE have none: every byte string is encodable).
  virtual int32_t unk_id() const { return -1; }
  // Hugging Face tokenizer.json text.
  virtual std::string to_json() const = 0;
  // Writes to_json() to `path` atomically (temp file + rename).
  void save(const std::string& path) const;
};

// Reads a tokenizer.json written by save() (or a compatible ByteLevel-BPE / WordLevel one).
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path);
std::unique_ptr<Tokenizer> tokenizer_from_json(std::string_view json, const std::string& what);

std::unique_ptr<Tokenizer> make_byte_tokenizer();

// Word vocabulary from whitespace-split training text: a word is kept when it occurs at least `min_count`
// times; id 0 is <unk>, then words by decreasing count, ties in byte order. Brown's rule (words seen <= 3
// times become <unk>) is min_count = 4.
// max_vocab > 0 caps the vocabulary (including <unk>) to the most frequent words.
std::unique_ptr<Tokenizer> train_word_tokenizer(std::span<const std::string_view> texts, int64_t min_count,
                                                int64_t max_vocab = 0);
// The same from word counts (the brown reader yields words).
std::unique_ptr<Tokenizer> word_tokenizer_from_counts(std::vector<std::pair<std::string, int64_t>> counts,
                                                      int64_t min_count, int64_t max_vocab = 0);

struct BpeTrainStats {
  int64_t pretokens = 0;        // pre-tokens in the training text
  int64_t unique_pretokens = 0;
  int32_t merges = 0;           // merges learned (fewer than asked when the text runs out of pairs)
  double seconds = 0;
};
// Byte-level BPE: ids 0..255 are the bytes, 256.. the merges in order, then <|endoftext|> last, so
// vocab_size = 257 + merges (asked: vocab_size - 257 merges). Deterministic: the most frequent pair wins,
// ties go to the smallest (left id, right id).
std::unique_ptr<Tokenizer> train_bpe(std::span<const std::string_view> texts, int32_t vocab_size,
                                     BpeTrainStats* stats = nullptr);

// GPT-2 pre-tokenization of `text` into pieces ('s 't 're 've 'm 'll 'd | ?\p{L}+ | ?\p{N}+ |
// ?[^\s\p{L}\p{N}]+ | \s+(?!\S) | \s+), as byte ranges [begin, end) covering the text exactly.
void pretokenize(std::string_view text, std::vector<std::pair<size_t, size_t>>& pieces);
// The end of the pre-token that starts at byte `pos` (< text.size()).
size_t next_pretoken(std::string_view text, size_t pos);
// Whitespace split (Unicode White_Space) used by the word tokenizer.
void split_words(std::string_view text, std::vector<std::string_view>& words);

// The GPT-2 byte <-> printable character map used in ByteLevel tokenizer.json files.
std::string byte_level_encode(std::string_view bytes);
std::string byte_level_decode(std::string_view chars, const std::string& what);

}  // namespace seqmix::data
