#include "train/cli.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <algorithm>
#include <sstream>
#include <unistd.h>

#include "data/prepare.h"
#include "train/distributed/communicator.h"
#include "train/distributed/launcher.h"
#include "data/tasks.h"
#include "train/generate.h"
#include "train/trainer.h"

namespace seqmix::cli {

namespace {
// Minimal flag parser: positional arguments plus --flag value / --flag=value; repeated --set allowed.
struct Args {
  std::vector<std::string> positional;
  std::multimap<std::string, std::string> flags;
  std::string get(const std::string& k, const std::string& def = "") const {
    auto it = flags.find(k);
    return it == flags.end() ? def : it->second;
  }
  std::vector<std::string> all(const std::string& k) const {
    std::vector<std::string> out;
    auto [a, b] = flags.equal_range(k);
    for (auto it = a; it != b; ++it) out.push_back(it->second);
    return out;
  }
};

Args parse(const std::vector<std::string>& argv, const std::vector<std::string>& known, const std::string& usage) {
  Args a;
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& s = argv[i];
    if (s == "-h" || s == "--help") {
      std::cout << usage;
      std::exit(0);
    }
    if (s.rfind("--", 0) == 0) {
      std::string key = s.substr(2), value;
      size_t eq = key.find('=');
      if (eq != std::string::npos) {
        value = key.substr(eq + 1);
        key = key.substr(0, eq);
      } else {
        SEQMIX_CHECK(i + 1 < argv.size(), "option --", key, " needs a value\n", usage);
        value = argv[++i];
      }
      SEQMIX_CHECK(std::find(known.begin(), known.end(), key) != known.end(), "unknown option --", key, "\n", usage);
      a.flags.emplace(key, value);
    } else {
      a.positional.push_back(s);
    }
  }
  return a;
}

int64_t to_int(const std::string& s, const std::string& what) {
  try {
    size_t pos;
    int64_t v = std::stoll(s, &pos);
    if (pos == s.size()) return v;
  } catch (...) {
  }
  SEQMIX_FAIL("--", what, " expects an integer, got '", s, "'");
}
double to_double(const std::string& s, const std::string& what) {
  try {
    size_t pos;
    double v = std::stod(s, &pos);
    if (pos == s.size()) return v;
  } catch (...) {
  }
  SEQMIX_FAIL("--", what, " expects a number, got '", s, "'");
}
}  // namespace

int train_main(const std::vector<std::string>& argv) {
  const std::string usage =
      "usage: seqmix train CONFIG.yaml [--set key.path=value ...] [--resume auto|DIR] [--device cpu|cuda] [--gpus N]\n"
      "  --gpus N   data-parallel training on N local GPUs (N processes). Under torchrun or SLURM the\n"
      "             environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT or SLURM_*) is used.\n";
  Args a = parse(argv, {"set", "resume", "device", "gpus"}, usage);
  SEQMIX_CHECK(a.positional.size() == 1, "seqmix train needs exactly one config file\n", usage);
  namespace dist = train::dist;
  dist::DistEnv env = dist::dist_env_from_environment();
  int64_t gpus = a.get("gpus").empty() ? 0 : to_int(a.get("gpus"), "gpus");
  SEQMIX_CHECK(gpus >= 0, "--gpus must be positive");
  if (gpus > 1 && !env.from_env) {  // the launcher: N children run this command without --gpus
    std::vector<std::string> child{"train"};
    for (size_t i = 0; i < argv.size(); ++i) {
      if (argv[i] == "--gpus") ++i;
      else if (argv[i].rfind("--gpus=", 0) != 0) child.push_back(argv[i]);
    }
    return dist::launch_local(int(gpus), child);
  }
  SEQMIX_CHECK(gpus <= 1 || gpus == env.world, "--gpus ", gpus, " disagrees with WORLD_SIZE/SLURM_NTASKS = ", env.world);
  auto cfg = Config::load(a.positional[0], a.all("set"));
  std::unique_ptr<dist::Communicator> comm;
  if (env.world > 1) {
    double timeout = cfg->root().child("train").get<double>("dist_timeout", 600.0);
    std::string dev = a.get("device").empty() ? cfg->root().child("run").get<std::string>("device", "auto") : a.get("device");
    // One hardware work queue per GPU unless the user chose: beside NCCL's streams, the default 8 queues leave
    // ~0.6 us more between consecutive kernels (2 H200s, GPT-2-124M: 1.89x -> 1.92x one GPU; docs/PERF.md).
    // CUDA reads it when it initializes, which is next (cuda_available).
    if (dev != "cpu" && !std::getenv("CUDA_DEVICE_MAX_CONNECTIONS")) setenv("CUDA_DEVICE_MAX_CONNECTIONS", "1", 1);
    bool on_cpu = dev == "cpu" || (dev == "auto" && !cuda_available());  // CPU processes talk over TCP
    // The GEMMs leave train.comm_sm_margin SMs to NCCL; NCCL's ring kernels take one SM per channel, so
    // unless the user chose otherwise NCCL gets that many channels.
    int64_t margin = cfg->root().child("train").get<int64_t>("comm_sm_margin", 0);
    if (margin > 0 && !std::getenv("NCCL_MAX_NCHANNELS")) setenv("NCCL_MAX_NCHANNELS", std::to_string(margin).c_str(), 1);
    comm = on_cpu ? dist::make_tcp_communicator(env, timeout) : dist::make_nccl_communicator(env, timeout);
  }
  try {
    train::Trainer t(std::move(cfg), a.positional[0], a.get("resume"), a.get("device"), comm.get());
    return t.run();
  } catch (const std::exception& e) {
    if (!comm) throw;
    // Tell the other ranks (they stop naming this one), then leave without waiting for collectives
    // that can no longer complete.
    comm->abort(e.what());
    std::fprintf(stderr, "\nseqmix train: rank %d: error: %s\n", env.rank, e.what());
    std::fflush(stderr);
    std::fflush(stdout);
    ::_exit(dynamic_cast<const dist::PeerFailure*>(&e) ? dist::kPeerFailureExit : 1);
  }
}

namespace {
// `seqmix eval RUN --task NAME`: accuracy at the scored positions of a synthetic task, one line per
// setting (comma-separated values of a task parameter give several settings).
int eval_task(const Args& a, train::LoadedRun& r) {
  std::string task = a.get("task");
  std::map<std::string, std::string> base;
  if (r.task && r.task->config().name == task) {  // a run trained on this task: its settings are the defaults
    const data::TaskDataConfig& t = r.task->config();
    base["vocab_size"] = std::to_string(t.vocab_size);
    base["seq_len"] = std::to_string(t.seq_len);
    if (task == "mqar") base["num_kv_pairs"] = std::to_string(t.num_kv_pairs);
    if (task == "selective_copy") base["num_tokens"] = std::to_string(t.num_tokens);
    if (task == "passkey") base["digits"] = std::to_string(t.digits);
  }
  std::string sweep_key, sweep_values;
  for (const char* key : {"vocab-size", "seq-len", "num-kv-pairs", "power-a", "num-tokens", "digits", "depth"}) {
    std::string v = a.get(key);
    if (v.empty()) continue;
    std::string name = key;
    std::replace(name.begin(), name.end(), '-', '_');
    if (v.find(',') != std::string::npos) {
      SEQMIX_CHECK(sweep_key.empty(), "only one task parameter may list several values");
      sweep_key = name;
      sweep_values = v;
    } else {
      base[name] = v;
    }
  }
  std::vector<std::string> values{""};
  if (!sweep_key.empty()) {
    values.clear();
    std::stringstream ss(sweep_values);
    for (std::string v; std::getline(ss, v, ',');) values.push_back(v);
  }
  int64_t examples = to_int(a.get("examples", "1000"), "examples");
  uint64_t seed = uint64_t(to_int(a.get("seed", "1234"), "seed"));
  const int32_t batch = 32;
  autograd::NoGradGuard ng;
  ComputeDtypeGuard cg(r.compute_dtype);
  r.model->eval();
  for (const std::string& v : values) {
    std::map<std::string, std::string> params = base;
    if (!sweep_key.empty()) params[sweep_key] = v;
    double correct = 0, exact = 0;
    int64_t scored = 0, done = 0;
    int32_t seq_len = 0;
    while (done < examples) {
      int32_t n = int32_t(std::min<int64_t>(batch, examples - done));
      data::TaskBatch tb = data::make_task(task, params, n, seed, done);
      seq_len = tb.seq_len;
      for (int32_t id : tb.inputs)
        SEQMIX_CHECK(id < r.model->config().vocab_size, "task token ", id, " is outside the model's vocabulary of ",
                     r.model->config().vocab_size, ": train the model on this task's vocabulary (or pass a smaller --vocab-size)");
      Tensor in = Tensor::from_vector(tb.inputs, {n, tb.seq_len}, r.device);
      Tensor pred = argmax(r.model->forward(in), -1).to(DType::I32).cpu();
      double ex = 0;
      double acc = data::task_accuracy(tb, pred.data<int32_t>(), &ex);
      correct += acc * double(tb.scored());
      exact += ex * n;
      scored += tb.scored();
      done += n;
    }
    std::string setting;
    for (auto& [k, val] : params) setting += (setting.empty() ? "" : ", ") + k + "=" + val;
    if (!params.count("seq_len")) setting += (setting.empty() ? "" : ", ") + std::string("seq_len=") + std::to_string(seq_len);
    std::printf("%s (%s): accuracy %.4f, exact %.4f over %lld examples (%lld scored tokens)\n", task.c_str(),
                setting.c_str(), scored ? correct / double(scored) : 0.0,
                exact / double(std::max<int64_t>(done, 1)), (long long)done, (long long)scored);
  }
  return 0;
}
}  // namespace

int eval_main(const std::vector<std::string>& argv) {
  const std::string usage =
      "usage: seqmix eval RUN_OR_CHECKPOINT [--split val|test|train] [--device cpu|cuda] [--batch-size N] [--max-tokens N]\n"
      "       seqmix eval RUN_OR_CHECKPOINT --task mqar|selective_copy|induction|passkey [--vocab-size V] [--seq-len T]\n"
      "                   [--num-kv-pairs K[,K2,...]] [--num-tokens N] [--digits D] [--depth F] [--examples N] [--seed S]\n";
  Args a = parse(argv, {"split", "device", "batch-size", "max-tokens", "task", "vocab-size", "seq-len", "num-kv-pairs", "power-a",
                        "num-tokens", "digits", "depth", "examples", "seed"},
                 usage);
  SEQMIX_CHECK(a.positional.size() == 1, "seqmix eval needs a run or checkpoint directory\n", usage);
  train::LoadedRun r = train::load_run(a.positional[0], a.get("device"));
  if (!a.get("task").empty()) return eval_task(a, r);
  std::string split = a.get("split", "val");
  int32_t rows = int32_t(to_int(a.get("batch-size", std::to_string(r.settings.batch_size)), "batch-size"));
  int64_t max_tokens = to_int(a.get("max-tokens", "0"), "max-tokens");
  if (r.task) {  // a run trained on a synthetic task: its held-out examples
    SEQMIX_CHECK(split == "val" || split == "test", "a run trained on a task has the held-out splits val and test, not '", split, "'");
    train::EvalResult ev = train::evaluate_task(*r.model, *r.task, split, rows, r.device, r.compute_dtype, max_tokens);
    std::printf("%s: %s loss %.4f, accuracy %.4f, exact %.4f over %lld examples (%lld scored tokens; checkpoint %s)\n",
                a.positional[0].c_str(), split.c_str(), ev.loss, ev.accuracy, ev.exact, (long long)ev.examples,
                (long long)ev.tokens, r.checkpoint_dir.c_str());
    return 0;
  }
  train::EvalResult ev =
      train::evaluate_split(*r.model, *r.dataset, split, r.settings.seq_len, rows, r.device, r.compute_dtype, max_tokens);
  std::printf("%s: %s loss %.4f, perplexity %.2f over %lld tokens (checkpoint %s)\n", a.positional[0].c_str(), split.c_str(),
              ev.loss, ev.ppl, (long long)ev.tokens, r.checkpoint_dir.c_str());
  return 0;
}

int generate_main(const std::vector<std::string>& argv) {
  const std::string usage =
      "usage: seqmix generate RUN_OR_CHECKPOINT --prompt TEXT [--max-new-tokens N] [--temperature T] [--top-k K] [--top-p P]\n"
      "                       [--seed S] [--device cpu|cuda]\n";
  Args a = parse(argv, {"prompt", "max-new-tokens", "temperature", "top-k", "top-p", "seed", "device"}, usage);
  SEQMIX_CHECK(a.positional.size() == 1, "seqmix generate needs a run or checkpoint directory\n", usage);
  train::LoadedRun r = train::load_run(a.positional[0], a.get("device"));
  SEQMIX_CHECK(r.dataset, a.positional[0], " was trained on a synthetic task (data.source: ", r.settings.data_source,
               ") and has no tokenizer to generate text with; score it with `seqmix eval ", a.positional[0], "`");
  auto tok = r.dataset->tokenizer();
  std::string prompt = a.get("prompt");
  std::vector<int32_t> ids = tok->encode(prompt);
  if (ids.empty()) ids.push_back(tok->eot_id());
  int64_t max_new = to_int(a.get("max-new-tokens", "50"), "max-new-tokens");
  double temperature = to_double(a.get("temperature", "1.0"), "temperature");
  int64_t top_k = to_int(a.get("top-k", "0"), "top-k");
  double top_p = to_double(a.get("top-p", "1.0"), "top-p");
  uint64_t seed = uint64_t(to_int(a.get("seed", "0"), "seed"));
  SEQMIX_CHECK(temperature >= 0, "--temperature must be >= 0");
  SEQMIX_CHECK(top_p > 0 && top_p <= 1, "--top-p must be in (0, 1]");

  ComputeDtypeGuard cg(r.compute_dtype);
  r.model->eval();
  train::SamplingOptions opt{max_new, temperature, top_k, top_p, seed};
  std::vector<int32_t> out = train::generate(*r.model, ids, opt, r.device);
  std::string continuation = tok->decode(out);
  // word-level text is rebuilt with spaces between words, so the continuation starts with one
  if (tok->kind() == data::TokenizerKind::Word && !continuation.empty() && continuation[0] != ' ') continuation = " " + continuation;
  std::printf("%s%s\n", prompt.c_str(), continuation.c_str());
  return 0;
}

int info_main(const std::vector<std::string>& argv) {
  const std::string usage = "usage: seqmix info CONFIG.yaml [--set key.path=value ...] [--seq-len N]\n";
  Args a = parse(argv, {"set", "seq-len"}, usage);
  SEQMIX_CHECK(a.positional.size() == 1, "seqmix info needs a config file\n", usage);
  auto cfg = Config::load(a.positional[0], a.all("set"));
  train::RunSettings s = train::read_run_settings(*cfg, a.positional[0]);
  int64_t vocab = s.is_task() ? s.task.vocab_size : s.vocab_size;
  if (!s.is_task() && s.tokenizer == "byte" && vocab == 0) vocab = 257;
  if (vocab == 0) {
    std::string dir = s.data_path.empty() ? data::ensure_dataset(s.data_source, s.tokenizer, s.vocab_size, s.min_count) : s.data_path;
    vocab = data::Dataset::open(dir).vocab_size();
  }
  ModelConfig mc = read_model_config(cfg->root().child("model"), vocab, s.seq_len, s.seed);
  LanguageModel m(mc, cfg->root().child("model"));
  cfg->check_unused();
  int64_t T = a.get("seq-len").empty() ? s.seq_len : to_int(a.get("seq-len"), "seq-len");
  double fpt = m.flops_per_token(T);
  std::printf("config            %s\n", a.positional[0].c_str());
  std::printf("layers            %d (", mc.n_layers);
  for (int i = 0; i < mc.n_layers; ++i) std::printf("%s%s", i ? ", " : "", mc.mixers[i].c_str());
  std::printf(")\n");
  std::printf("parameters        %lld (%lld non-embedding)\n", (long long)m.num_parameters(), (long long)m.non_embedding_parameters());
  std::printf("vocabulary        %lld\n", (long long)vocab);
  std::printf("FLOPs per token   %.4g forward, %.4g training (3x) at context %lld\n", fpt, 3 * fpt, (long long)T);
  std::printf("state per seq     %lld bytes at bf16 after %lld tokens (KV cache / recurrent state)\n",
              (long long)m.state_bytes(T, 2), (long long)T);
  return 0;
}

}  // namespace seqmix::cli
