// Synthetic recall tasks. Each generator is deterministic per (seed, example index) and returns int32
// inputs and targets of shape [batch, seq_len]; targets hold kIgnoreIndex (-100) except at the positions to
// be scored, where target[p] is what the model must output at input position p (the next-token convention:
// the model reads inputs[.. p] and predicts target[p]). Score = accuracy at the scored positions.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "data/loader.h"
#include "data/tokenizer.h"

namespace seqmix::data {

struct TaskBatch {
  int32_t batch = 0;
  int32_t seq_len = 0;
  std::vector<int32_t> inputs;   // [batch, seq_len]
  std::vector<int32_t> targets;  // [batch, seq_len]
  int64_t scored() const;        // targets that are not kIgnoreIndex
};

// Multi-query associative recall as defined by Zoology (Arora et al. 2023): num_kv_pairs key-value pairs
// first (keys drawn without replacement from [1, vocab/2), values from [vocab/2, vocab)), then each key
// queried once at a gap g drawn without replacement from [0, (seq_len - 2*kv)/2) with probability
// proportional to (g+1)^(power_a - 1); the key sits at input position 2*kv + 2*g and its value is the target
// there. Other positions hold random tokens from [0, vocab) (Zoology's random_non_queries). Needs seq_len
// even, vocab > seq_len and 4 * num_kv_pairs <= seq_len.
struct MqarConfig {
  int32_t vocab_size = 8192;
  int32_t seq_len = 256;
  int32_t num_kv_pairs = 16;
  double power_a = 0.01;
  bool random_non_queries = true;
};
TaskBatch make_mqar(const MqarConfig& cfg, int32_t batch, uint64_t seed, int64_t first_example = 0);

// Selective copying (Mamba, Gu & Dao 2023): num_tokens data tokens from [2, vocab) at random positions of
// a region of length seq_len - num_tokens filled with the blank token 0, then num_tokens marker tokens (1);
// at the j-th marker the target is the j-th data token.
struct SelectiveCopyConfig {
  int32_t vocab_size = 16;
  int32_t seq_len = 256;
  int32_t num_tokens = 16;
};
TaskBatch make_selective_copy(const SelectiveCopyConfig& cfg, int32_t batch, uint64_t seed,
                              int64_t first_example = 0);

// Induction heads (Olsson et al. 2022; H3): random tokens from [0, vocab - 1); the trigger token vocab - 1
// appears once at a random position followed by a token x, and again at the last position, where the
// target is x.
struct InductionConfig {
  int32_t vocab_size = 64;
  int32_t seq_len = 256;
};
TaskBatch make_induction(const InductionConfig& cfg, int32_t batch, uint64_t seed, int64_t first_example = 0);

// Passkey / needle retrieval at a chosen context length, in token space: filler tokens from [12, vocab);
// the needle [0 (key marker), d1 .. dk] (digit d is token 2 + d) at relative depth `depth` (in [0, 1]; < 0 =
// uniform per example); the sequence ends with [1 (query marker), d1 .. d(k-1)], and the targets there are
// d1 .. dk (teacher forced).
struct PasskeyConfig {
  int32_t vocab_size = 256;
  int32_t seq_len = 1024;
  int32_t digits = 5;
  double depth = -1.0;
};
TaskBatch make_passkey(const PasskeyConfig& cfg, int32_t batch, uint64_t seed, int64_t first_example = 0);

// The same task in text, for a model trained on a real tokenizer: repeated filler sentences (" The grass is
// green. The sky is blue. ..."), the needle " The pass key is NNNNN. Remember it. NNNNN is the pass key." at
// `depth`, and the question " What is the pass key? The pass key is"; the targets are the answer's tokens
// (" NNNNN"). The filler is trimmed so each example is exactly seq_len tokens. Throws if the tokenizer maps
// the answer to its unknown id.
TaskBatch make_passkey_text(const Tokenizer& tok, int32_t seq_len, int32_t batch, uint64_t seed, double depth = -1.0,
                            int32_t digits = 5, int64_t first_example = 0);

// Accuracy at the scored positions given the model's predicted ids ([batch, seq_len], e.g. argmax); also
// the fraction of examples whose scored positions are all right (`exact`, optional).
double task_accuracy(const TaskBatch& b, const int32_t* predictions, double* exact = nullptr);

// By name, for the CLI (`seqmix eval --task NAME --key value ...`): mqar | selective_copy | induction |
// passkey, with params vocab_size, seq_len, num_kv_pairs, power_a, num_tokens, digits, depth (others are
// an error naming them).
TaskBatch make_task(const std::string& name, const std::map<std::string, std::string>& params, int32_t batch,
                    uint64_t seed, int64_t first_example = 0);

}  // namespace seqmix::data
