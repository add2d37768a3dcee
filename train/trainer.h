// The trainer: reads a config, prepares data, builds the model, trains with AdamW (bf16 mixed
// precision on the GPU), evaluates exact perplexity, checkpoints and resumes exactly.
#pragma once
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "data/loader.h"
#include "data/task_source.h"
#include "models/lm.h"
#include "train/config.h"
#include "train/optimizer.h"
#include "train/step_profile.h"
#include "train/schedule.h"

namespace seqmix::train {

namespace dist {
class Communicator;
class DataParallel;
}  // namespace dist

struct RunSettings {
  // run:
  std::string name, out_dir = "runs";
  uint64_t seed = 0;
  std::string device = "auto";
  // data:
  std::string data_path, data_source, tokenizer = "word";
  int64_t vocab_size = 0, min_count = 4;
  int32_t seq_len = 128;
  data::TaskDataConfig task;  // data.source: task:NAME (data.task: its settings)
  bool is_task() const { return data::is_task_source(data_source); }
  // train:
  int64_t steps = 1000, batch_size = 16, grad_accum = 1;
  ScheduleConfig schedule;
  AdamWConfig adamw;
  double grad_clip = 1.0;
  std::string precision = "auto";  // auto | f32 | bf16
  int64_t eval_every = 0, ckpt_every = 0, keep_last = 2, stop_at = 0, log_every = 10, max_bad_steps = 5;
  int64_t eval_batch_size = 0;  // 0: batch_size
  int64_t eval_max_tokens = 0;  // 0: the whole split (exact); else the first N targets
  // data parallel (train/distributed/): collective timeout in seconds, gradient bucket size, ZeRO-1
  double dist_timeout = 600, bucket_mb = 25;
  bool zero1 = false;
  int64_t comm_sm_margin = 0;  // SMs the GEMMs of a reducing backward leave to NCCL (0: all)
  DType reduce_dtype = DType::F32;  // dtype of the gradient reduction: f32 or bf16
};

// Reads run:, data: and train: (model: is read by read_model_config). Defaults fill the gaps.
RunSettings read_run_settings(Config& cfg, const std::string& config_path);

struct EvalResult {
  double loss = 0, ppl = 0;
  int64_t tokens = 0;  // scored targets
  // Synthetic task sources only (NaN otherwise): accuracy at the scored positions (argmax), the fraction
  // of examples with every scored position right, and the number of examples.
  double accuracy = NAN, exact = NAN;
  int64_t examples = 0;
};

class Trainer {
 public:
  // `resume`: "" (fresh), "auto", a run directory or a checkpoint directory.
  // `comm` (optional, not owned): data-parallel training over comm->world() ranks, this Trainer being
  // rank comm->rank(); the global batch is batch_size * grad_accum * world. Only rank 0 logs and writes.
  Trainer(std::unique_ptr<Config> cfg, const std::string& config_path, const std::string& resume, const std::string& device_override,
          dist::Communicator* comm = nullptr);
  ~Trainer();
  // Trains until train.steps (or train.stop_at); returns 0 on success.
  int run();
  // Exact perplexity over the whole split, or over its first train.eval_max_tokens targets; on a task
  // source over the split's held-out examples, with the task accuracy.
  EvalResult evaluate(const std::string& split, bool whole_split = false);
  const std::string& run_dir() const { return run_dir_; }
  LanguageModel& model() { return *model_; }

 private:
  void setup_logging();
  void build(const std::string& resume);
  double train_step(const data::HostBatch& batch, double lr, double* grad_norm);
  void save(bool final_save);
  void log_metrics(const std::string& json);

  std::unique_ptr<Config> cfg_;
  RunSettings s_;
  std::string config_path_, run_dir_, resolved_yaml_;
  Device device_;
  DType compute_dtype_ = DType::F32;
  std::unique_ptr<data::Dataset> dataset_;     // token data (null on a task source)
  std::shared_ptr<data::TaskSource> task_;     // synthetic task data (null on token data)
  std::shared_ptr<data::BatchSource> loader_;
  std::shared_ptr<LanguageModel> model_;
  std::unique_ptr<AdamW> opt_;
  int64_t step_ = 0, tokens_seen_ = 0, bad_steps_ = 0;
  double elapsed_ = 0;
  int world_ = 1, rank_ = 0;
  dist::Communicator* comm_ = nullptr;
  std::unique_ptr<dist::DataParallel> ddp_;  // set when comm_ is; then opt_ is null
  StepProfiler profiler_;                    // SEQMIX_STEP_PROFILE=1 only
};

// Builds a model from a run directory's config.yaml and loads a checkpoint's weights into it.
struct LoadedRun {
  std::unique_ptr<Config> cfg;
  RunSettings settings;
  std::unique_ptr<data::Dataset> dataset;  // null for a run trained on a synthetic task
  std::shared_ptr<data::TaskSource> task;  // set for such a run
  std::shared_ptr<LanguageModel> model;
  std::string checkpoint_dir;
  Device device;
  DType compute_dtype = DType::F32;
};
LoadedRun load_run(const std::string& run_or_checkpoint, const std::string& device_override);
// Loss over a split (all of it when max_tokens is 0, else until max_tokens targets are scored). With a
// communicator (data parallel) the ranks share the batches and every rank gets the whole split's result.
EvalResult evaluate_split(LanguageModel& model, const data::Dataset& ds, const std::string& split, int32_t seq_len,
                          int32_t batch_rows, Device device, DType compute, int64_t max_tokens = 0,
                          dist::Communicator* comm = nullptr);
// Loss and accuracy over the first examples of a task split (all of them when max_tokens is 0, else until
// max_tokens targets are scored); ranks share the batches as above.
EvalResult evaluate_task(LanguageModel& model, const data::TaskSource& task, const std::string& split, int32_t batch_rows,
                         Device device, DType compute, int64_t max_tokens = 0, dist::Communicator* comm = nullptr);
Device resolve_device(const std::string& name);

}  // namespace seqmix::train
