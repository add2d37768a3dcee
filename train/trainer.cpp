#include "train/trainer.h"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "data/prepare.h"
#include "train/checkpoint.h"
#include "train/distributed/ddp.h"
#include "train/grad_norm.h"
#ifdef SEQMIX_WITH_CUDA
#include "core/cuda/runtime.h"
#endif

namespace fs = std::filesystem;

namespace seqmix::train {

namespace {
// Dropout streams differ between data-parallel processes (rank r xors its key into the seed; rank 0's
// key is 0, so checkpoints hold the rank-independent seed). Ranks that are threads of one process
// share the process-global generator: run them with dropout 0 (as the tests do).
uint64_t rank_seed_key(const dist::Communicator* comm) {
  if (!comm || comm->shares_process()) return 0;
  return uint64_t(comm->rank()) * 0xD1B54A32D192ED03ull;
}

std::string json_number(double v) {
  if (!std::isfinite(v)) return "null";
  std::ostringstream os;
  os.precision(17);  // round-trips a double exactly: resumed runs compare bitwise
  os << v;
  return os.str();
}

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  int64_t s = int64_t(seconds + 0.5);
  std::ostringstream os;
  if (s >= 3600) os << s / 3600 << "h" << (s % 3600) / 60 << "m";
  else if (s >= 60) os << s / 60 << "m" << s % 60 << "s";
  else os << s << "s";
  return os.str();
}

std::string format_rate(double tok_per_s) {
  std::ostringstream os;
  os.precision(3);
  if (tok_per_s >= 1e6) os << tok_per_s / 1e6 << "M";
  else if (tok_per_s >= 1e3) os << tok_per_s / 1e3 << "K";
  else os << tok_per_s;
  return os.str();
}

// Host batch rows [row0, row0 + rows) -> (inputs, targets) tensors [rows, T] on `device`. On the GPU
// through pinned staging buffers and asynchronous copies, so the GPU does not wait for the host.
std::pair<Tensor, Tensor> to_tensors(const data::HostBatch& b, int64_t row0, int64_t rows, Device device) {
  int64_t T = b.seq_len;
#ifdef SEQMIX_WITH_CUDA
  if (device.is_cuda()) {
    Tensor in = Tensor::empty({rows, T}, DType::I32, device), tg = Tensor::empty({rows, T}, DType::I32, device);
    cuda::upload_async(b.inputs() + row0 * T, size_t(rows * T) * 4, in);
    cuda::upload_async(b.targets() + row0 * T, size_t(rows * T) * 4, tg);
    return {in, tg};
  }
#endif
  Tensor in = Tensor::empty({rows, T}, DType::I32);
  Tensor tg = Tensor::empty({rows, T}, DType::I32);
  std::memcpy(in.data<int32_t>(), b.inputs() + row0 * T, size_t(rows * T) * 4);
  std::memcpy(tg.data<int32_t>(), b.targets() + row0 * T, size_t(rows * T) * 4);
  return {in.to(device), tg.to(device)};
}
}  // namespace

Device resolve_device(const std::string& name) {
  if (name == "auto") return cuda_available() ? Device::cuda(0) : Device::cpu();
  Device d = parse_device(name);
  if (d.is_cuda())
    SEQMIX_CHECK(cuda_available(), "device '", name, "' was asked for but ",
                 cuda_built() ? "no CUDA GPU is visible" : "this seqmix was built without CUDA", "; use --device cpu");
  return d;
}

namespace {
// data.source: task:NAME with its settings in data.task (docs/DATA.md). Only the keys of the chosen task are
// read; a key of another task, or a tokenizer key, is an error that says so.
void read_task_settings(const ConfigNode& data, RunSettings& s) {
  data::TaskDataConfig& t = s.task;
  t.name = s.data_source.substr(5);
  t.seq_len = s.seq_len;
  t.seed = s.seed;
  for (const char* key : {"path", "tokenizer", "vocab_size", "min_count"})
    SEQMIX_CHECK(!data.has(key) || (std::string(key) == "path" && s.data_path.empty()), "data.", key, " (", data.where(key),
                 ") does not apply to a synthetic task source (data.source: ", s.data_source,
                 "): the examples are generated, and the vocabulary is data.task.vocab_size");
  const int32_t default_vocab = data::task_default_vocab(t.name);  // checks the name
  ConfigNode tn = data.child("task");
  std::vector<std::string> keys{"vocab_size", "train_examples", "eval_examples"};
  if (t.name == "mqar") keys.insert(keys.end(), {"num_kv_pairs", "power_a"});
  if (t.name == "selective_copy") keys.insert(keys.end(), {"num_tokens"});
  if (t.name == "passkey") keys.insert(keys.end(), {"digits", "depth"});
  std::string list;
  for (const auto& k : keys) list += (list.empty() ? "" : ", ") + k;
  for (const char* key : {"num_kv_pairs", "power_a", "num_tokens", "digits", "depth"})
    SEQMIX_CHECK(!tn.has(key) || std::find(keys.begin(), keys.end(), key) != keys.end(), "data.task.", key, " (", tn.where(key),
                 ") is not a setting of task ", t.name, "; data.task for ", t.name, " takes: ", list);
  t.vocab_size = tn.get<int32_t>("vocab_size", default_vocab);
  if (t.name == "mqar") {
    t.num_kv_pairs = tn.get<int32_t>("num_kv_pairs", t.num_kv_pairs);
    t.power_a = tn.get<double>("power_a", t.power_a);
  } else if (t.name == "selective_copy") {
    t.num_tokens = tn.get<int32_t>("num_tokens", t.num_tokens);
  } else if (t.name == "passkey") {
    t.digits = tn.get<int32_t>("digits", t.digits);
    t.depth = tn.get<double>("depth", t.depth);
  }
  t.train_examples = tn.get<int64_t>("train_examples", t.train_examples);
  t.eval_examples = tn.get<int64_t>("eval_examples", t.eval_examples);
  data::TaskSource check(t);  // every range check now, before anything is written
}
}  // namespace

RunSettings read_run_settings(Config& cfg, const std::string& config_path) {
  RunSettings s;
  ConfigNode root = cfg.root();
  ConfigNode run = root.child("run"), data = root.child("data"), tr = root.child("train");
  s.name = run.get<std::string>("name", fs::path(config_path).stem().string());
  s.out_dir = run.get<std::string>("out_dir", s.out_dir);
  s.seed = run.get<uint64_t>("seed", s.seed);
  s.device = run.get<std::string>("device", s.device);

  s.data_path = data.get<std::string>("path", "");
  s.data_source = data.get<std::string>("source", "");
  SEQMIX_CHECK(!s.data_path.empty() || !s.data_source.empty(), "the config needs data.path (a prepared dataset directory) or ",
               "data.source (brown, kjv, a text path or task:NAME) in ", cfg.source_name());
  if (s.is_task()) {
    s.seq_len = data.get<int32_t>("seq_len", s.seq_len);
    SEQMIX_CHECK(s.seq_len > 0, "data.seq_len must be positive");
    read_task_settings(data, s);
  } else {
    SEQMIX_CHECK(!data.has("task"), "data.task (", data.where("task"), ") is read only with a synthetic task source ",
                 "(data.source: task:NAME, NAME one of ", data::task_source_names(), "); data.source here is '", s.data_source, "'");
    s.tokenizer = data.get<std::string>("tokenizer", s.tokenizer);
    s.vocab_size = data.get<int64_t>("vocab_size", s.vocab_size);
    s.min_count = data.get<int64_t>("min_count", s.min_count);
    s.seq_len = data.get<int32_t>("seq_len", s.seq_len);
    SEQMIX_CHECK(s.seq_len > 0, "data.seq_len must be positive");
  }

  s.steps = tr.get<int64_t>("steps", s.steps);
  s.batch_size = tr.get<int64_t>("batch_size", s.batch_size);
  s.grad_accum = tr.get<int64_t>("grad_accum", s.grad_accum);
  s.schedule.lr = tr.get<double>("lr", s.schedule.lr);
  s.schedule.min_lr = tr.get<double>("min_lr", s.schedule.lr * 0.1);
  s.schedule.warmup = tr.get<int64_t>("warmup", std::min<int64_t>(100, s.steps / 10));
  s.schedule.kind = tr.get<std::string>("schedule", s.schedule.kind);
  s.schedule.decay_fraction = tr.get<double>("decay_fraction", s.schedule.decay_fraction);
  s.schedule.steps = s.steps;
  s.adamw.weight_decay = tr.get<double>("weight_decay", s.adamw.weight_decay);
  s.adamw.beta1 = tr.get<double>("beta1", s.adamw.beta1);
  s.adamw.beta2 = tr.get<double>("beta2", s.adamw.beta2);
  s.adamw.eps = tr.get<double>("eps", s.adamw.eps);
  s.grad_clip = tr.get<double>("grad_clip", s.grad_clip);
  s.precision = tr.get<std::string>("precision", s.precision);
  s.eval_every = tr.get<int64_t>("eval_every", s.eval_every);
  s.ckpt_every = tr.get<int64_t>("ckpt_every", s.ckpt_every);
  s.keep_last = tr.get<int64_t>("keep_last", s.keep_last);
  s.stop_at = tr.get<int64_t>("stop_at", s.stop_at);
  s.log_every = tr.get<int64_t>("log_every", s.log_every);
  s.max_bad_steps = tr.get<int64_t>("max_bad_steps", s.max_bad_steps);
  s.eval_batch_size = tr.get<int64_t>("eval_batch_size", s.eval_batch_size);
  s.eval_max_tokens = tr.get<int64_t>("eval_max_tokens", s.eval_max_tokens);
  s.dist_timeout = tr.get<double>("dist_timeout", s.dist_timeout);
  s.bucket_mb = tr.get<double>("bucket_mb", s.bucket_mb);
  s.zero1 = tr.get<bool>("zero1", s.zero1);
  s.comm_sm_margin = tr.get<int64_t>("comm_sm_margin", s.comm_sm_margin);
  const std::string reduce = tr.get<std::string>("reduce_dtype", "f32");
  SEQMIX_CHECK(reduce == "f32" || reduce == "bf16", "train.reduce_dtype must be f32 or bf16, got '", reduce, "'");
  s.reduce_dtype = reduce == "bf16" ? DType::BF16 : DType::F32;
  SEQMIX_CHECK(s.comm_sm_margin >= 0 && s.comm_sm_margin < 1024, "train.comm_sm_margin must be in [0, 1024), got ", s.comm_sm_margin);
  SEQMIX_CHECK(s.dist_timeout > 0 && s.bucket_mb > 0, "train.dist_timeout and train.bucket_mb must be positive");
  SEQMIX_CHECK(s.steps > 0 && s.batch_size > 0 && s.grad_accum > 0, "train.steps, train.batch_size and train.grad_accum must be positive");
  validate_schedule(s.schedule);  // before anything is written: a bad schedule fails at once
  validate_adamw_config(s.adamw);
  SEQMIX_CHECK(s.precision == "auto" || s.precision == "f32" || s.precision == "bf16", "train.precision must be auto, f32 or bf16, got '",
               s.precision, "'");
  return s;
}

namespace {
// An evaluation's sums. Under data parallelism batch i is evaluated by rank i % world only; every rank
// still reads every batch's target count, so all of them stop after the same batch, and the sums are
// then added over the ranks: the same result as one process, in 1/world of the time.
struct EvalSums {
  double total = 0, right = 0, exact = 0;  // loss * targets, correct targets, fully correct examples
  int64_t count = 0, examples = 0;         // scored targets and examples, over all ranks' batches
};

bool owns_batch(const dist::Communicator* comm, int64_t batch_index) {
  return !comm || batch_index % comm->world() == comm->rank();
}

EvalSums sum_over_ranks(dist::Communicator* comm, EvalSums s) {
  if (!comm || comm->world() == 1) return s;
  std::vector<double> v = comm->all_reduce_sum(std::vector<double>{s.total, s.right, s.exact});
  s.total = v[0];
  s.right = v[1];
  s.exact = v[2];
  return s;
}
}  // namespace

EvalResult evaluate_split(LanguageModel& model, const data::Dataset& ds, const std::string& split, int32_t seq_len, int32_t batch_rows,
                          Device device, DType compute, int64_t max_tokens, dist::Communicator* comm) {
  autograd::NoGradGuard ng;
  ComputeDtypeGuard cg(compute);
  bool was_training = model.is_training();
  model.eval();
  data::EvalIterator it(ds.split(split), seq_len, batch_rows);
  data::HostBatch b;
  EvalSums s;
  for (int64_t i = 0; it.next(b);) {
    if (b.rows == 0) continue;
    if (owns_batch(comm, i++)) {
      auto [in, tg] = to_tensors(b, 0, b.rows, device);
      Tensor loss = model.loss(in, tg);
      s.total += loss.item() * double(b.target_count);
    }
    s.count += b.target_count;
    if (max_tokens > 0 && s.count >= max_tokens) break;
  }
  model.train(was_training);
  s = sum_over_ranks(comm, s);
  EvalResult r;
  r.tokens = s.count;
  r.loss = s.count ? s.total / double(s.count) : 0.0;
  r.ppl = std::exp(r.loss);
  return r;
}

EvalResult evaluate_task(LanguageModel& model, const data::TaskSource& task, const std::string& split, int32_t batch_rows,
                         Device device, DType compute, int64_t max_tokens, dist::Communicator* comm) {
  SEQMIX_CHECK(batch_rows >= 1, "evaluation batch size must be >= 1");
  autograd::NoGradGuard ng;
  ComputeDtypeGuard cg(compute);
  bool was_training = model.is_training();
  model.eval();
  const int64_t n = task.split_examples(split);
  EvalSums s;
  for (int64_t i = 0; s.examples < n; ++i) {
    const int32_t rows = int32_t(std::min<int64_t>(batch_rows, n - s.examples));
    data::TaskBatch b = task.examples(split, s.examples, rows);
    const int64_t scored = b.scored();
    if (owns_batch(comm, i)) {
      Tensor in = Tensor::from_vector(b.inputs, {rows, b.seq_len}, device);
      Tensor tg = Tensor::from_vector(b.targets, {rows, b.seq_len}, device);
      Tensor logits = model.forward(in);
      s.total += cross_entropy(logits, tg, data::kIgnoreIndex).item() * double(scored);
      Tensor pred = argmax(logits, -1).to(DType::I32).cpu();
      double ex = 0;
      s.right += data::task_accuracy(b, pred.data<int32_t>(), &ex) * double(scored);
      s.exact += ex * rows;
    }
    s.count += scored;
    s.examples += rows;
    if (max_tokens > 0 && s.count >= max_tokens) break;
  }
  model.train(was_training);
  s = sum_over_ranks(comm, s);
  EvalResult r;
  r.tokens = s.count;
  r.examples = s.examples;
  r.loss = s.count ? s.total / double(s.count) : 0.0;
  r.ppl = std::exp(r.loss);
  r.accuracy = s.count ? s.right / double(s.count) : 0.0;
  r.exact = s.examples ? s.exact / double(s.examples) : 0.0;
  return r;
}

Trainer::Trainer(std::unique_ptr<Config> cfg, const std::string& config_path, const std::string& resume, const std::string& device_override,
                 dist::Communicator* comm)
    : cfg_(std::move(cfg)), config_path_(config_path), comm_(comm) {
  s_ = read_run_settings(*cfg_, config_path);
  device_ = resolve_device(device_override.empty() ? s_.device : device_override);
  if (comm_) {
    world_ = comm_->world();
    rank_ = comm_->rank();
    comm_->set_timeout(s_.dist_timeout);
    if (device_.is_cuda()) device_ = Device::cuda(comm_->local_rank());
    SEQMIX_CHECK(device_.is_cuda() == comm_->device().is_cuda(), "rank ", rank_, ": the ", comm_->backend(),
                 " communicator works on ", comm_->device().str(), " but training was asked on ", device_.str());
  }
  bool bf16 = s_.precision == "bf16" || (s_.precision == "auto" && device_.is_cuda());
  compute_dtype_ = bf16 ? DType::BF16 : DType::F32;
  build(resume);
}

Trainer::~Trainer() { spdlog::drop("seqmix"); }

void Trainer::setup_logging() {
  std::vector<spdlog::sink_ptr> sinks;
  sinks.push_back(std::make_shared<spdlog::sinks::stdout_sink_mt>());
  sinks.push_back(std::make_shared<spdlog::sinks::basic_file_sink_mt>((fs::path(run_dir_) / "log.txt").string()));
  spdlog::drop("seqmix");
  auto logger = std::make_shared<spdlog::logger>("seqmix", sinks.begin(), sinks.end());
  logger->set_pattern("[%Y-%m-%d %H:%M:%S] %v");
  logger->flush_on(spdlog::level::info);  // log.txt is complete even if the process dies
  spdlog::set_default_logger(logger);
}

void Trainer::build(const std::string& resume) {
  // Data first: the vocabulary size comes from the tokenizer (or the synthetic task).
  int64_t vocab = 0;
  if (s_.is_task()) {
    task_ = std::make_shared<data::TaskSource>(s_.task);
    vocab = task_->vocab_size();
  } else {
    std::string dir = s_.data_path;
    if (dir.empty()) {
      if (comm_ && rank_ != 0) comm_->barrier();  // rank 0 prepares the cache first; the others then find it
      dir = data::ensure_dataset(s_.data_source, s_.tokenizer, s_.vocab_size, s_.min_count);
      if (comm_ && rank_ == 0) comm_->barrier();
    }
    dataset_ = std::make_unique<data::Dataset>(data::Dataset::open(dir));
    vocab = dataset_->vocab_size();
  }
  ModelConfig mc = read_model_config(cfg_->root().child("model"), vocab, s_.seq_len, s_.seed);
  model_ = std::make_shared<LanguageModel>(mc, cfg_->root().child("model"));
  cfg_->check_unused();
  resolved_yaml_ = cfg_->resolved_yaml();

  run_dir_ = (fs::path(s_.out_dir) / s_.name).string();
  std::string ckpt = resolve_resume(resume, run_dir_);
  if (resume.empty() && fs::exists(fs::path(run_dir_) / "checkpoints") && !list_checkpoints(run_dir_).empty())
    SEQMIX_FAIL("run directory ", run_dir_, " already has checkpoints: pass --resume auto to continue it, or choose another ",
                "name with --set run.name=NAME");
  fs::create_directories(run_dir_);
  if (ckpt.empty() && rank_ == 0) {
    std::ofstream(fs::path(run_dir_) / "metrics.jsonl", std::ios::trunc);
  }
  if (rank_ == 0) {
    std::ofstream out(fs::path(run_dir_) / "config.yaml");
    out << resolved_yaml_;
  }
  if (rank_ == 0) setup_logging();
  else if (!comm_->shares_process()) spdlog::set_level(spdlog::level::warn);
  model_->to(device_);
  if (comm_) ddp_ = std::make_unique<dist::DataParallel>(*comm_, model_->named_parameters(), s_.adamw, dist::DdpOptions{s_.bucket_mb, s_.zero1, int(s_.comm_sm_margin), s_.reduce_dtype});
  else opt_ = std::make_unique<AdamW>(model_->named_parameters(), s_.adamw);

  int64_t global_batch = s_.batch_size * s_.grad_accum * world_;
  data::TrainLoaderConfig lc;
  lc.seq_len = s_.seq_len;
  lc.global_batch = int32_t(global_batch);
  lc.seed = s_.seed;
  lc.rank = rank_;
  lc.world = world_;
  if (task_) loader_ = std::make_shared<data::TaskTrainLoader>(task_, lc);
  else loader_ = std::make_shared<data::TrainLoader>(dataset_->split("train"), lc);
  manual_seed(s_.seed ^ 0x9E3779B97F4A7C15ull ^ rank_seed_key(comm_));  // dropout stream

  if (!ckpt.empty()) {
    LoadedCheckpoint lc2 = load_checkpoint(ckpt);
    auto params = model_->named_parameters();
    SEQMIX_CHECK(params.size() == lc2.model.size(), "checkpoint ", ckpt, " has ", lc2.model.size(), " tensors but the model has ",
                 params.size(), ": was the model config changed?");
    std::map<std::string, Tensor> by_name(lc2.model.begin(), lc2.model.end());
    for (auto& [name, p] : params) {
      auto f = by_name.find(name);
      SEQMIX_CHECK(f != by_name.end(), "checkpoint ", ckpt, " has no tensor '", name, "': was the model config changed?");
      SEQMIX_CHECK(f->second.shape() == p.shape(), "checkpoint tensor '", name, "' has shape ", shape_str(f->second.shape()),
                   " but the model expects ", shape_str(p.shape()));
      autograd::NoGradGuard ng;
      p.copy_(f->second);
    }
    if (ddp_) ddp_->load_state(lc2.optimizer, lc2.state.optimizer_steps);
    else opt_->load_state(lc2.optimizer, lc2.state.optimizer_steps);
    step_ = lc2.state.step;
    tokens_seen_ = lc2.state.tokens_seen;
    elapsed_ = lc2.state.elapsed_seconds;
    default_generator().seed = lc2.state.rng_seed ^ rank_seed_key(comm_);
    default_generator().offset = lc2.state.rng_offset;
    spdlog::info("resumed from {} at step {}", ckpt, step_);
  }
  std::string data_desc = task_ ? "task " + task_->describe()
                                : std::to_string(dataset_->split("train")->size()) + " train tokens";
  spdlog::info("run {} on {} ({}), {} parameters ({} non-embedding), vocabulary {}, {}", run_dir_, device_.str(),
               dtype_name(compute_dtype_), model_->num_parameters(), model_->non_embedding_parameters(), vocab, data_desc);
  if (comm_) {
    const char* queues = std::getenv("CUDA_DEVICE_MAX_CONNECTIONS");
    spdlog::info("data parallel: {} ranks ({}), {} gradient buckets{}{}", world_, comm_->backend(), ddp_->num_buckets(),
                 s_.zero1 ? ", ZeRO-1 optimizer state sharding" : "",
                 device_.is_cuda() && queues ? fmt::format(", CUDA_DEVICE_MAX_CONNECTIONS={}", queues) : "");
    comm_->barrier();
  }
}

double Trainer::train_step(const data::HostBatch& batch, double lr, double* grad_norm_out) {
  ComputeDtypeGuard cg(compute_dtype_);
  model_->train();
  profiler_.start(device_.is_cuda());
  Tensor loss_sum;
  for (int64_t micro = 0; micro < s_.grad_accum; ++micro) {
    auto [in, tg] = to_tensors(batch, micro * s_.batch_size, s_.batch_size, device_);
    Tensor loss = model_->loss(in, tg);
    Tensor scaled = s_.grad_accum > 1 ? loss * (1.0 / double(s_.grad_accum)) : loss;
    profiler_.mark(StepProfiler::kForward);
    if (ddp_) ddp_->prepare_backward(micro + 1 == s_.grad_accum);
    scaled.backward();
    profiler_.mark(StepProfiler::kBackward);
    Tensor l = scaled.detach();
    loss_sum = loss_sum.defined() ? add(loss_sum, l) : l;
  }
  if (ddp_) {  // gradients averaged over the ranks, the same norm and loss on every rank
    ddp_->finish_backward(loss_sum);
    profiler_.mark(StepProfiler::kReduceWait);
    double gn = ddp_->clip_grad_norm(s_.grad_clip);
    double loss = ddp_->mean_loss();
    *grad_norm_out = gn;
    profiler_.mark(StepProfiler::kNormLoss);
    if (std::isfinite(loss) && std::isfinite(gn)) ddp_->step(lr);
    ddp_->zero_grad();
    profiler_.mark(StepProfiler::kOptimizer);
    profiler_.end_step();
    return loss;
  }
  std::vector<Tensor> params = model_->parameters();
  double gn = grad_norm(params);  // clipping: folded into the update (no pass over the gradients)
  double loss = loss_sum.item();
  *grad_norm_out = gn;
  profiler_.mark(StepProfiler::kNormLoss);
  if (!std::isfinite(loss) || !std::isfinite(gn)) {
    opt_->zero_grad();
    return loss;
  }
  opt_->step(lr, clip_factor(gn, s_.grad_clip));
  opt_->zero_grad();
  profiler_.mark(StepProfiler::kOptimizer);
  profiler_.end_step();
  return loss;
}

void Trainer::log_metrics(const std::string& json) {
  if (rank_ != 0) return;
  std::ofstream out(fs::path(run_dir_) / "metrics.jsonl", std::ios::app);
  out << json << "\n";
}

void Trainer::save(bool final_save) {
  TrainerState st;
  st.step = step_;
  st.tokens_seen = tokens_seen_;
  st.data_seed = s_.seed;
  st.rng_seed = default_generator().seed;
  st.rng_offset = default_generator().offset;
  st.optimizer_steps = ddp_ ? ddp_->steps() : opt_->steps();
  st.world_size = world_;
  st.elapsed_seconds = elapsed_;
  const AdamW& opt = ddp_ ? ddp_->full_optimizer() : *opt_;  // collective: ZeRO-1 shards are gathered
  if (rank_ == 0) {
    std::string dir = save_checkpoint(run_dir_, st, model_->named_parameters(), opt, int(s_.keep_last));
    spdlog::info("{}checkpoint {}", final_save ? "final " : "", dir);
  }
  if (comm_) comm_->barrier();  // the checkpoint is on disk before any rank goes on (or exits)
}

EvalResult Trainer::evaluate(const std::string& split, bool whole_split) {
  int32_t rows = int32_t(s_.eval_batch_size > 0 ? s_.eval_batch_size : s_.batch_size);
  const int64_t max_tokens = whole_split ? 0 : s_.eval_max_tokens;
  if (task_) return evaluate_task(*model_, *task_, split, rows, device_, compute_dtype_, max_tokens, comm_);
  return evaluate_split(*model_, *dataset_, split, s_.seq_len, rows, device_, compute_dtype_, max_tokens, comm_);
}

int Trainer::run() {
  const int64_t end = s_.stop_at > 0 ? std::min(s_.stop_at, s_.steps) : s_.steps;
  const int64_t tokens_per_step = s_.batch_size * s_.grad_accum * world_ * s_.seq_len;
  const bool tty = rank_ == 0 && isatty(fileno(stdout));
  auto prefetch = std::make_unique<data::Prefetcher>(loader_, step_, 2);
  auto window_start = std::chrono::steady_clock::now();
  int64_t window_tokens = 0;
  double last_loss = NAN;
  spdlog::info("training steps {}..{} of {}, {} tokens per step", step_, end, s_.steps, tokens_per_step);
  KernelTraceWindow kernel_trace(rank_, device_.is_cuda());  // SEQMIX_KERNEL_TRACE only
  while (step_ < end) {
    data::HostBatch batch = prefetch->next();
    kernel_trace.before_step();
    double lr = lr_at(s_.schedule, step_);
    double gn = 0;
    auto t0 = std::chrono::steady_clock::now();
    double loss = train_step(batch, lr, &gn);
    auto t1 = std::chrono::steady_clock::now();
    double dt = std::chrono::duration<double>(t1 - t0).count();
    elapsed_ += dt;
    step_++;
    tokens_seen_ += tokens_per_step;
    window_tokens += tokens_per_step;
    bool bad = !std::isfinite(loss) || !std::isfinite(gn);
    if (bad) {
      bad_steps_++;
      spdlog::warn("step {}: non-finite {} (loss {}, grad norm {}); update skipped ({} in a row)", step_,
                   std::isfinite(loss) ? "gradient norm" : "loss", loss, gn, bad_steps_);
      SEQMIX_CHECK(bad_steps_ < s_.max_bad_steps, "training stopped: ", bad_steps_, " consecutive steps had a non-finite loss or ",
                   "gradient (train.max_bad_steps). Lower train.lr, raise warmup, or check the data; the last good checkpoint is ",
                   "in ", run_dir_, "/checkpoints");
    } else {
      bad_steps_ = 0;
      last_loss = loss;
    }
    bool eval_now = s_.eval_every > 0 && step_ % s_.eval_every == 0 && step_ < s_.steps;
    bool log_now = step_ % std::max<int64_t>(s_.log_every, 1) == 0 || eval_now || step_ == end;
    if (log_now || tty) {
      double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - window_start).count();
      double tps = wall > 0 ? double(window_tokens) / wall : 0;
      double eta = tps > 0 ? double(end - step_) * double(tokens_per_step) / tps : NAN;
      std::ostringstream line;
      line << "step " << step_ << "/" << s_.steps << " | loss " << json_number(loss) << " | lr " << lr << " | "
           << format_rate(tps) << " tok/s | ETA " << format_duration(eta);
      if (tty) {
        std::printf("\r%-100s", line.str().c_str());
        std::fflush(stdout);
      }
      if (log_now) {
        std::string metrics = "{\"step\": " + std::to_string(step_) + ", \"tokens\": " + std::to_string(tokens_seen_) +
                              ", \"loss\": " + json_number(loss) + ", \"lr\": " + json_number(lr) + ", \"grad_norm\": " +
                              json_number(gn) + ", \"tok_per_s\": " + json_number(tps);
        if (eval_now) {
          if (tty) std::printf("\n");
          EvalResult ev = evaluate("val");
          metrics += ", \"val_loss\": " + json_number(ev.loss) + ", \"val_ppl\": " + json_number(ev.ppl);
          if (task_) metrics += ", \"val_acc\": " + json_number(ev.accuracy) + ", \"val_exact\": " + json_number(ev.exact);
          spdlog::info("step {}: val loss {:.4f}, val perplexity {:.2f} ({} tokens){}", step_, ev.loss, ev.ppl, ev.tokens,
                       task_ ? fmt::format(", val accuracy {:.4f} ({} examples)", ev.accuracy, ev.examples) : "");
        } else if (!tty) {
          spdlog::info("{}", line.str());
        }
        log_metrics(metrics + "}");
        window_start = std::chrono::steady_clock::now();
        window_tokens = 0;
      }
    }
    if (s_.ckpt_every > 0 && step_ % s_.ckpt_every == 0 && step_ < end) save(false);
  }
  if (tty) std::printf("\n");
  kernel_trace.finish();
  prefetch.reset();
  save(true);
  if (step_ < s_.steps) {
    spdlog::info("stopped at step {} as asked (train.stop_at); resume with --resume auto", step_);
    return 0;
  }
  EvalResult val = evaluate("val", true);
  EvalResult test = evaluate("test", true);
  std::string accs;
  if (task_)
    accs = ", \"val_acc\": " + json_number(val.accuracy) + ", \"val_exact\": " + json_number(val.exact) + ", \"test_acc\": " +
           json_number(test.accuracy) + ", \"test_exact\": " + json_number(test.exact);
  log_metrics("{\"step\": " + std::to_string(step_) + ", \"tokens\": " + std::to_string(tokens_seen_) + ", \"loss\": " +
              json_number(last_loss) + ", \"val_loss\": " + json_number(val.loss) + ", \"val_ppl\": " + json_number(val.ppl) +
              ", \"test_loss\": " + json_number(test.loss) + ", \"test_ppl\": " + json_number(test.ppl) + accs + "}");
  spdlog::info("done: {} steps, {:.1f} s training, last train loss {:.4f}", step_, elapsed_, last_loss);
  spdlog::info("validation perplexity {:.2f} (loss {:.4f}, {} tokens)", val.ppl, val.loss, val.tokens);
  spdlog::info("test perplexity {:.2f} (loss {:.4f}, {} tokens)", test.ppl, test.loss, test.tokens);
  if (task_) {
    spdlog::info("validation accuracy {:.4f} (exact {:.4f}, {} examples)", val.accuracy, val.exact, val.examples);
    spdlog::info("test accuracy {:.4f} (exact {:.4f}, {} examples)", test.accuracy, test.exact, test.examples);
  }
  return 0;
}

LoadedRun load_run(const std::string& arg, const std::string& device_override) {
  LoadedRun r;
  fs::path p(arg);
  std::string run_dir, ckpt;
  if (fs::exists(p / "config.yaml")) {
    run_dir = p.string();
    ckpt = resolve_resume("auto", run_dir);
    SEQMIX_CHECK(!ckpt.empty(), "run directory ", run_dir, " has no valid checkpoint yet");
  } else if (fs::exists(p / "model.safetensors")) {
    ckpt = p.string();
    run_dir = p.parent_path().parent_path().string();
  } else {
    SEQMIX_FAIL("'", arg, "' is neither a run directory (with config.yaml) nor a checkpoint directory (with model.safetensors)");
  }
  std::string cfg_path = (fs::path(run_dir) / "config.yaml").string();
  r.cfg = Config::load(cfg_path);
  r.settings = read_run_settings(*r.cfg, cfg_path);
  r.device = resolve_device(device_override.empty() ? r.settings.device : device_override);
  r.compute_dtype = (r.settings.precision == "bf16" || (r.settings.precision == "auto" && r.device.is_cuda())) ? DType::BF16 : DType::F32;
  int64_t vocab = 0;
  if (r.settings.is_task()) {
    r.task = std::make_shared<data::TaskSource>(r.settings.task);
    vocab = r.task->vocab_size();
  } else {
    std::string dir = r.settings.data_path;
    if (dir.empty()) dir = data::ensure_dataset(r.settings.data_source, r.settings.tokenizer, r.settings.vocab_size, r.settings.min_count);
    r.dataset = std::make_unique<data::Dataset>(data::Dataset::open(dir));
    vocab = r.dataset->vocab_size();
  }
  ModelConfig mc = read_model_config(r.cfg->root().child("model"), vocab, r.settings.seq_len, r.settings.seed);
  r.model = std::make_shared<LanguageModel>(mc, r.cfg->root().child("model"));
  LoadedCheckpoint lc = load_checkpoint(ckpt);
  std::map<std::string, Tensor> by_name(lc.model.begin(), lc.model.end());
  for (auto& [name, t] : r.model->named_parameters()) {
    auto f = by_name.find(name);
    SEQMIX_CHECK(f != by_name.end(), "checkpoint ", ckpt, " has no tensor '", name, "'");
    autograd::NoGradGuard ng;
    Tensor dst = t;
    dst.copy_(f->second);
  }
  r.model->to(r.device);
  r.checkpoint_dir = ckpt;
  return r;
}

}  // namespace seqmix::train
