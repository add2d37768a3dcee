// Data-parallel training: a bucketed gradient reducer driven by the autograd grad-ready hooks, and
// optional ZeRO-1 (optimizer state sharded over the ranks).
//
// Buckets: the parameters, in reverse registration order (roughly the order backward finishes them),
// are packed into flat f32 buckets of about `bucket_mb` MiB. During the backward of the last
// micro-batch of a step (prepare_backward(true)) backward writes each parameter's gradient straight
// into its bucket (a grad sink: no per-parameter tensor, no copy afterwards), and the parameter's
// hook counts it; when a bucket is full it is launched asynchronously (all-reduce, or
// reduce-scatter under ZeRO-1), so communication overlaps the rest of backward. Buckets launch in
// index order only, so every rank issues the same collectives in the same order. finish_backward()
// launches what is left (a parameter that got no gradient contributes zeros) and waits; the collectives
// average (ncclAvg on the GPU), and the parameters' gradients become views of the reduced buckets:
// the gradient of the mean loss over the global batch, with no copy.
//
// ZeRO-1: bucket b (padded to a multiple of R elements) is split into R equal chunks; rank r owns chunk
// r of every bucket. Gradients are reduce-scattered, rank r updates only its chunks with an AdamW over
// views of the parameters (the "segments": each piece of a parameter inside an owned chunk, shaped
// [1, n] for matrices so weight decay applies exactly as it would to the whole tensor), then the
// parameters are all-gathered. The update is elementwise, so the result equals plain data parallel.
//
// Checkpoints stay world-size independent: full_optimizer() gathers the shards into the full state
// (named as AdamW::state_tensors() names it), and load_state() takes a full state and keeps this
// rank's part, for any world size.
//
// reduce_dtype bf16 (opt-in): gradients are rounded to bf16 before the reduction, which is summed in
// bf16 (half the bytes on the wire); the parameters' gradients are then bf16 views of the reduced
// bucket, which the norm and AdamW read directly (ZeRO-1 widens its chunk to f32): a rounding of the
// gradients (relative 2^-9 per rank), so runs then match f32 reduction only approximately.
//
// A parameter that got no gradient on any rank in a step is left without one (a small all-reduce of
// per-parameter flags), so AdamW skips it as a single process would; one that got a gradient on some
// ranks only is averaged with zeros from the others, as accumulation over those micro-batches would be.
#pragma once
#include <memory>
#include <vector>

#include "train/distributed/communicator.h"
#include "train/optimizer.h"

namespace seqmix::train::dist {

struct DdpOptions {
  double bucket_mb = 25;  // train.bucket_mb
  bool zero1 = false;     // train.zero1
  int gemm_sm_margin = 0; // train.comm_sm_margin: SMs the GEMMs leave free while buckets are reduced
  DType reduce_dtype = DType::F32;  // train.reduce_dtype: f32, or bf16 (half the bytes, gradients rounded)
};

class DataParallel {
 public:
  // `params` must already be on comm.device(); rank 0's values are broadcast to every rank.
  DataParallel(Communicator& comm, NamedTensors params, AdamWConfig cfg, DdpOptions opt = {});
  ~DataParallel();
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  // Before each backward: `sync` for the last micro-batch of a step (its gradients are reduced as they
  // become ready); the others only accumulate locally.
  void prepare_backward(bool sync);
  // After the last backward of a step: every gradient is reduced and averaged over the ranks.
  // `local_loss` (optional, a scalar tensor on any device): this rank's loss, whose mean over the ranks
  // mean_loss() then returns (reduced with the per-parameter gradient flags, no extra collective).
  void finish_backward(const Tensor& local_loss = Tensor());
  double mean_loss() {
    resolve_seen();
    return mean_loss_;
  }
  // The global gradient norm (every rank gets the same value); clips to max_norm when > 0
  // (as train::clip_grad_norm, through the factor the next step() applies inside AdamW).
  double clip_grad_norm(double max_norm);
  void step(double lr);
  void zero_grad();
  int64_t steps() const;
  // A full (unsharded) optimizer state, as saved by save_checkpoint.
  void load_state(const NamedTensors& full_state, int64_t steps);
  // Collective (every rank must call it): an AdamW holding the full state, for save_checkpoint.
  const AdamW& full_optimizer();

  Communicator& comm() { return comm_; }
  bool zero1() const { return opt_.zero1; }
  int num_buckets() const { return int(buckets_.size()); }
  // Buckets launched so far in the current synchronized backward (all of them, before
  // finish_backward, when the hooks did their job).
  int buckets_launched() const { return next_launch_; }
  // Elements of optimizer state (exp_avg) this rank holds: all parameters, or its ZeRO-1 shard.
  int64_t optimizer_state_numel() const;

 private:
  struct Bucket {
    std::vector<int> params;
    std::vector<int64_t> offsets;  // of each parameter in the bucket
    std::vector<Tensor> sinks;     // each parameter's place in `wire` (bf16) or `flat`, shaped as the parameter
    int64_t numel = 0, padded = 0;
    Tensor flat;        // padded, gradients (and the all-gathered parameters under ZeRO-1)
    Tensor shard_grad;  // ZeRO-1: padded / R, this rank's reduced chunk
    Tensor wire, shard_wire;  // reduce_dtype bf16: what the collectives carry (flat / shard_grad rounded)
    int pending = 0;
    bool launched = false;
    WorkPtr work;
  };
  struct Segment {
    int param, bucket;
    int64_t param_begin, len, chunk_begin;  // element ranges: in the parameter, in this rank's chunk
    Tensor view;                            // of the parameter's storage
  };
  struct HookTarget {
    DataParallel* self = nullptr;
  };

  // Applies the reduced per-parameter flags and loss of finish_backward (read from the device unless given):
  // the mean loss, and no gradient for a parameter no rank saw.
  void resolve_seen(std::vector<double> seen = {});
  void on_grad_ready(int param, const Tensor& grad);
  void pack_grad(int param, const Tensor& grad);
  void set_sinks(bool on);
  const Tensor& sink_of(int param) const;
  void launch_ready();
  int64_t chunk(const Bucket& b) const { return b.padded / comm_.world(); }

  Communicator& comm_;
  NamedTensors params_;
  AdamWConfig cfg_;
  DdpOptions opt_;
  std::vector<Bucket> buckets_;
  std::vector<int> bucket_of_;  // each parameter's bucket
  std::vector<int> slot_of_;    // and its index in that bucket's params / offsets / sinks
  std::vector<bool> ready_;
  double mean_loss_ = 0;
  Tensor seen_pending_;    // finish_backward's reduced flags and loss, not yet read (resolve_seen)
  bool has_loss_ = false;
  double grad_scale_ = 1.0;  // the clipping factor of clip_grad_norm, for the next step()
  std::vector<bool> had_grad_;  // this rank produced a gradient for the parameter in this step
  int next_launch_ = 0;
  bool sync_ = false;
  std::shared_ptr<HookTarget> hook_target_;
  std::unique_ptr<AdamW> adamw_;       // plain data parallel: over the whole parameters
  std::vector<Segment> segments_;      // ZeRO-1
  std::unique_ptr<AdamW> shard_adamw_; // ZeRO-1: over the segments
  std::unique_ptr<AdamW> full_;        // full_optimizer()'s gathered copy (CPU)
};

}  // namespace seqmix::train::dist
