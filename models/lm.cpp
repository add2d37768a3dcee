#include "models/lm.h"

#include <cmath>

namespace seqmix {

ModelConfig read_model_config(const ConfigNode& m, int64_t vocab_size, int64_t seq_len, uint64_t seed) {
  register_builtin_mixers();
  ModelConfig c;
  c.vocab_size = vocab_size;
  c.d_model = m.get<int64_t>("d_model", c.d_model);
  c.n_layers = m.get<int>("n_layers", c.n_layers);
  std::vector<std::string> pattern = m.has("mixers") ? m.list("mixers") : std::vector<std::string>{"attention"};
  if (!m.has("mixers")) m.get<std::string>("mixers", "attention");
  SEQMIX_CHECK(c.n_layers > 0, "model.n_layers must be positive, got ", c.n_layers);
  SEQMIX_CHECK(!pattern.empty(), "model.mixers is empty (", m.where("mixers"), ")");
  SEQMIX_CHECK(c.n_layers % int(pattern.size()) == 0, "model.mixers (", m.where("mixers"), ") lists ", pattern.size(),
               " mixers, which does not divide n_layers = ", c.n_layers, ": give one per layer or a repeating pattern");
  c.mixers.clear();
  for (int i = 0; i < c.n_layers; ++i) c.mixers.push_back(pattern[i % pattern.size()]);
  for (const std::string& name : pattern)
    SEQMIX_CHECK(mixer_registered(name), "unknown mixer '", name, "' in model.mixers (", m.where("mixers"), ")");
  c.mlp = m.get<std::string>("mlp", c.mlp);
  c.mlp_hidden = m.get<int64_t>("mlp_hidden", c.mlp_hidden);
  c.norm = m.get<std::string>("norm", c.norm);
  c.norm_eps = m.get<double>("norm_eps", c.norm_eps);
  c.tie_embeddings = m.get<bool>("tie_embeddings", c.tie_embeddings);
  c.pos_embedding = m.get<std::string>("pos_embedding", c.pos_embedding);
  c.max_seq_len = m.get<int64_t>("max_seq_len", std::max<int64_t>(seq_len, 1));
  c.dropout = m.get<double>("dropout", c.dropout);
  c.init_std = m.get<double>("init_std", c.init_std);
  c.init_seed = seed;
  if (c.mlp_hidden == 0) {
    c.mlp_hidden = c.mlp == "swiglu" ? (c.d_model * 8 / 3 + 63) / 64 * 64 : 4 * c.d_model;
  }
  MLP::parse(c.mlp);
  Norm::parse(c.norm);
  SEQMIX_CHECK(c.pos_embedding == "none" || c.pos_embedding == "learned", "model.pos_embedding (", m.where("pos_embedding"),
               ") must be none or learned, got '", c.pos_embedding, "'");
  SEQMIX_CHECK(c.dropout >= 0 && c.dropout < 1, "model.dropout must be in [0, 1)");
  return c;
}

Block::Block(const ModelConfig& cfg, int index, std::shared_ptr<Mixer> m, Generator& gen) : dropout_(cfg.dropout) {
  Norm::Kind nk = Norm::parse(cfg.norm);
  norm1 = register_module("norm1", std::make_shared<Norm>(nk, cfg.d_model, cfg.norm_eps));
  mixer = register_module("mixer", std::move(m));
  if (mixer->uses_mlp()) {
    norm2 = register_module("norm2", std::make_shared<Norm>(nk, cfg.d_model, cfg.norm_eps));
    double out_std = cfg.init_std / std::sqrt(2.0 * cfg.n_layers);
    mlp = register_module("mlp", std::make_shared<MLP>(MLP::parse(cfg.mlp), cfg.d_model, cfg.mlp_hidden, gen, out_std));
  }
  (void)index;
}

Tensor Block::forward(const Tensor& x, Generator& dropout_gen) const {
  bool train = is_training();
  Tensor h = add(x, dropout(mixer->forward(norm1->forward(x)), dropout_, train, dropout_gen));
  if (mlp) h = add(h, dropout(mlp->forward(norm2->forward(h)), dropout_, train, dropout_gen));
  return h;
}

Tensor Block::step(const Tensor& x, MixerState& state) const {
  Tensor h = add(x, mixer->step(norm1->forward(x), state));
  if (mlp) h = add(h, mlp->forward(norm2->forward(h)));
  return h;
}

LanguageModel::LanguageModel(const ModelConfig& cfg, const ConfigNode& model_node) : cfg_(cfg) {
  register_builtin_mixers();
  Generator gen(cfg.init_seed);
  embed = register_module("embed", std::make_shared<Embedding>(cfg.vocab_size, cfg.d_model, gen, cfg.init_std));
  if (cfg.pos_embedding == "learned")
    pos_embed = register_module("pos_embed", std::make_shared<Embedding>(cfg.max_seq_len, cfg.d_model, gen, cfg.init_std * 0.5));
  double out_std = cfg.init_std / std::sqrt(2.0 * cfg.n_layers);
  for (int i = 0; i < cfg.n_layers; ++i) {
    MixerContext ctx;
    ctx.d_model = cfg.d_model;
    ctx.layer_index = i;
    ctx.n_layers = cfg.n_layers;
    ctx.max_seq_len = cfg.max_seq_len;
    ctx.init_std = cfg.init_std;
    ctx.out_std = out_std;
    ctx.gen = &gen;
    auto mixer = make_mixer(cfg.mixers[i], ctx, model_node.child(cfg.mixers[i]));
    blocks.push_back(register_module("layers." + std::to_string(i), std::make_shared<Block>(cfg, i, mixer, gen)));
  }
  final_norm = register_module("final_norm", std::make_shared<Norm>(Norm::parse(cfg.norm), cfg.d_model, cfg.norm_eps));
  if (!cfg.tie_embeddings) head = register_module("head", std::make_shared<Linear>(cfg.d_model, cfg.vocab_size, false, gen, cfg.init_std));
}

Tensor LanguageModel::hidden(const Tensor& ids) const {
  int64_t T = ids.size(1);
  SEQMIX_CHECK(T <= cfg_.max_seq_len || !pos_embed, "sequence of ", T, " tokens is longer than model.max_seq_len = ", cfg_.max_seq_len);
  Tensor h = embed->forward(ids);
  if (pos_embed) h = add(h, pos_embed->forward(arange(T, DType::I64, ids.device())));
  h = dropout(h, cfg_.dropout, is_training(), default_generator());
  for (const auto& b : blocks) h = b->forward(h, default_generator());
  return final_norm->forward(h);
}

Tensor LanguageModel::logits_of(const Tensor& h) const {
  if (head) return head->forward(h);
  return linear(h, cast(embed->weight, h.dtype()));
}

Tensor LanguageModel::forward(const Tensor& ids) const { return logits_of(hidden(ids)); }

Tensor LanguageModel::loss(const Tensor& ids, const Tensor& targets) const {
  return cross_entropy(forward(ids), targets, -100);
}

GenerationState LanguageModel::init_generation(int64_t batch, int64_t max_len) const {
  GenerationState st;
  for (const auto& b : blocks) st.layers.push_back(b->mixer->init_state(batch, max_len, device(), compute_dtype()));
  return st;
}

Tensor LanguageModel::step(const Tensor& ids, GenerationState& st) const {
  int64_t T = ids.size(1);
  Tensor h = embed->forward(ids);
  if (pos_embed) {
    SEQMIX_CHECK(st.position + T <= cfg_.max_seq_len, "generation past model.max_seq_len = ", cfg_.max_seq_len,
                 " with learned positions");
    Tensor pos = add(arange(T, DType::I64, ids.device()), full({}, double(st.position), DType::I64, ids.device()));
    h = add(h, pos_embed->forward(pos));
  }
  for (size_t i = 0; i < blocks.size(); ++i) h = blocks[i]->step(h, *st.layers[i]);
  st.position += T;
  Tensor last = final_norm->forward(h.narrow(1, T - 1, 1)).squeeze(1);
  return logits_of(last);
}

int64_t LanguageModel::non_embedding_parameters() const {
  int64_t n = num_parameters() - embed->weight.numel();
  if (pos_embed) n -= pos_embed->weight.numel();
  return n;
}

double LanguageModel::flops_per_token(int64_t seq_len) const {
  double f = 0;
  for (const auto& b : blocks) {
    f += b->mixer->flops_per_token(seq_len);
    if (b->mlp) f += 2.0 * double(cfg_.d_model) * double(cfg_.mlp_hidden) * (cfg_.mlp == "swiglu" ? 3 : 2);
  }
  f += 2.0 * double(cfg_.d_model) * double(cfg_.vocab_size);  // LM head
  return f;
}

int64_t LanguageModel::state_bytes(int64_t seq_len, int64_t dtype_bytes) const {
  int64_t n = 0;
  for (const auto& b : blocks) n += b->mixer->state_bytes(seq_len, dtype_bytes);
  return n;
}

}  // namespace seqmix
