// The language model assembled from the config's `model:` block:
//   embedding (+ learned positions) -> [norm -> mixer -> residual -> norm -> MLP -> residual] x n_layers
//   -> final norm -> LM head (tied to the embedding or separate).
// The mixer of each layer comes from `mixers` (a list with one name per layer, or a shorter pattern
// repeated), each configured by the block of the same name (model.attention: {...}).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "layers/layers.h"
#include "layers/mixers/mixer.h"
#include "train/config.h"

namespace seqmix {

struct ModelConfig {
  int64_t vocab_size = 0;
  int64_t d_model = 256;
  int n_layers = 4;
  std::vector<std::string> mixers{"attention"};  // per layer (expanded from a pattern)
  std::string mlp = "swiglu";
  int64_t mlp_hidden = 0;  // 0: 4 * d_model (gelu) or 8/3 * d_model rounded to 64 (swiglu)
  std::string norm = "rmsnorm";
  double norm_eps = 1e-5;
  bool tie_embeddings = true;
  std::string pos_embedding = "none";  // none | learned
  int64_t max_seq_len = 1024;
  double dropout = 0.0;      // on the embedding output and each residual branch
  double init_std = 0.02;
  uint64_t init_seed = 0;
};

// Reads and validates model:, expanding the mixer pattern; vocab_size comes from the data.
ModelConfig read_model_config(const ConfigNode& model, int64_t vocab_size, int64_t seq_len, uint64_t seed);

class Block : public Module {
 public:
  Block(const ModelConfig& cfg, int index, std::shared_ptr<Mixer> mixer, Generator& gen);
  std::string type_name() const override { return "Block"; }
  Tensor forward(const Tensor& x, Generator& dropout_gen) const;
  Tensor step(const Tensor& x, MixerState& state) const;
  std::shared_ptr<Norm> norm1, norm2;
  std::shared_ptr<Mixer> mixer;
  std::shared_ptr<MLP> mlp;  // null for mixers that replace the MLP

 private:
  double dropout_;
};

struct GenerationState {
  std::vector<std::unique_ptr<MixerState>> layers;
  int64_t position = 0;
};

class LanguageModel : public Module {
 public:
  // `mixer_blocks` is the `model:` node, whose per-mixer blocks configure each mixer.
  LanguageModel(const ModelConfig& cfg, const ConfigNode& mixer_blocks);
  std::string type_name() const override { return "LanguageModel"; }
  const ModelConfig& config() const { return cfg_; }

  // ids [B, T] -> logits [B, T, V] (compute dtype)
  Tensor forward(const Tensor& ids) const;
  // mean cross-entropy over targets != ignore_index
  Tensor loss(const Tensor& ids, const Tensor& targets) const;
  // Generation: feeds ids [B, T_new] through the incremental forms; returns logits of the last position [B, V].
  GenerationState init_generation(int64_t batch, int64_t max_len) const;
  Tensor step(const Tensor& ids, GenerationState& st) const;

  // Parameters excluding embeddings, FLOPs per token (forward; training = 3x), state bytes per sequence.
  int64_t non_embedding_parameters() const;
  double flops_per_token(int64_t seq_len) const;
  int64_t state_bytes(int64_t seq_len, int64_t dtype_bytes) const;

  std::shared_ptr<Embedding> embed, pos_embed;
  std::vector<std::shared_ptr<Block>> blocks;
  std::shared_ptr<Norm> final_norm;
  std::shared_ptr<Linear> head;  // null when tied

 private:
  Tensor hidden(const Tensor& ids) const;
  Tensor logits_of(const Tensor& h) const;
  ModelConfig cfg_;
};

// Every built-in mixer registered (models/registry.cpp: the one list to extend).
void register_builtin_mixers();

}  // namespace seqmix
