#include "train/distributed/ddp.h"

#include <cmath>
#include <map>

#include "autograd/node.h"
#include "core/ops.h"
#include "train/grad_norm.h"

#ifdef SEQMIX_WITH_CUDA
#include "core/cuda/runtime.h"
#endif

namespace seqmix::train::dist {

namespace {
// A flat [n] view of elements [begin, begin + n) of a contiguous tensor (no autograd record).
Tensor flat_view(const Tensor& t, int64_t begin, int64_t n) { return make_view(t, {n}, {1}, t.offset() + begin); }
Tensor shaped_view(const Tensor& t, const Shape& shape, int64_t begin) {
  return make_view(t, shape, contiguous_strides(shape), t.offset() + begin);
}
}  // namespace

DataParallel::DataParallel(Communicator& comm, NamedTensors params, AdamWConfig cfg, DdpOptions opt)
    : comm_(comm), params_(std::move(params)), cfg_(cfg), opt_(opt) {
  autograd::NoGradGuard ng;
  const int R = comm_.world();
  const Device dev = comm_.device();
  SEQMIX_CHECK(opt_.bucket_mb > 0, "train.bucket_mb must be positive, got ", opt_.bucket_mb);
  SEQMIX_CHECK(opt_.reduce_dtype == DType::F32 || opt_.reduce_dtype == DType::BF16, "train.reduce_dtype must be f32 or bf16, got ",
               dtype_name(opt_.reduce_dtype));
  const bool wire16 = opt_.reduce_dtype == DType::BF16;
  for (auto& [name, p] : params_) {
    SEQMIX_CHECK(p.dtype() == DType::F32 && p.is_contiguous(), "data parallel: parameter '", name, "' must be contiguous f32");
    SEQMIX_CHECK(p.device() == dev, "data parallel: parameter '", name, "' is on ", p.device().str(), " but the ",
                 comm_.backend(), " communicator works on ", dev.str());
  }
  // Buckets over the parameters in reverse order.
  const int64_t cap = std::max<int64_t>(1, int64_t(opt_.bucket_mb * 1024 * 1024 / 4));
  bucket_of_.assign(params_.size(), -1);
  slot_of_.assign(params_.size(), -1);
  for (int i = int(params_.size()) - 1; i >= 0; --i) {
    int64_t n = params_[size_t(i)].second.numel();
    if (buckets_.empty() || (buckets_.back().numel > 0 && buckets_.back().numel + n > cap)) buckets_.emplace_back();
    Bucket& b = buckets_.back();
    b.params.push_back(i);
    b.offsets.push_back(b.numel);
    b.numel += n;
    bucket_of_[size_t(i)] = int(buckets_.size()) - 1;
    slot_of_[size_t(i)] = int(b.params.size()) - 1;
  }
  for (Bucket& b : buckets_) {
    b.padded = (b.numel + R - 1) / R * R;
    if (b.padded == 0) b.padded = R;
    b.flat = zeros({b.padded}, DType::F32, dev);
    if (opt_.zero1) b.shard_grad = zeros({b.padded / R}, DType::F32, dev);
    if (wire16) {
      b.wire = zeros({b.padded}, DType::BF16, dev);
      if (opt_.zero1) b.shard_wire = zeros({b.padded / R}, DType::BF16, dev);
    }
    for (size_t k = 0; k < b.params.size(); ++k)
      b.sinks.push_back(shaped_view(wire16 ? b.wire : b.flat, params_[size_t(b.params[k])].second.shape(), b.offsets[k]));
  }
  ready_.assign(params_.size(), false);
  had_grad_.assign(params_.size(), false);

  // Every rank starts from rank 0's parameters.
  if (R > 1) {
    for (Bucket& b : buckets_) {
      for (size_t k = 0; k < b.params.size(); ++k) {
        const Tensor& p = params_[size_t(b.params[k])].second;
        flat_view(b.flat, b.offsets[k], p.numel()).copy_(flat_view(p, 0, p.numel()));
      }
      comm_.broadcast(b.flat, 0);
      for (size_t k = 0; k < b.params.size(); ++k) {
        const Tensor& p = params_[size_t(b.params[k])].second;
        flat_view(p, 0, p.numel()).copy_(flat_view(b.flat, b.offsets[k], p.numel()));
      }
      b.flat.zero_();
    }
  }
  // Reduced in bf16 without ZeRO-1, the gradients live in `wire` only: the f32 buffer served the broadcast.
  if (wire16 && !opt_.zero1)
    for (Bucket& b : buckets_) b.flat = Tensor();

  if (opt_.zero1) {
    NamedTensors seg_params;
    const int r = comm_.rank();
    for (int bi = 0; bi < int(buckets_.size()); ++bi) {
      const Bucket& b = buckets_[size_t(bi)];
      const int64_t c = chunk(b), lo = int64_t(r) * c, hi = lo + c;
      for (size_t k = 0; k < b.params.size(); ++k) {
        const auto& [name, p] = params_[size_t(b.params[k])];
        int64_t a = std::max(lo, b.offsets[k]), e = std::min(hi, b.offsets[k] + p.numel());
        if (e <= a) continue;
        Segment s;
        s.param = b.params[k];
        s.bucket = bi;
        s.param_begin = a - b.offsets[k];
        s.len = e - a;
        s.chunk_begin = a - lo;
        Shape shape = p.dim() >= 2 ? Shape{1, s.len} : Shape{s.len};
        s.view = shaped_view(p, shape, s.param_begin);
        seg_params.emplace_back(name + "@" + std::to_string(s.param_begin), s.view);
        segments_.push_back(std::move(s));
      }
    }
    shard_adamw_ = std::make_unique<AdamW>(std::move(seg_params), cfg_);
  } else {
    adamw_ = std::make_unique<AdamW>(params_, cfg_);
  }

  hook_target_ = std::make_shared<HookTarget>();
  hook_target_->self = this;
  for (size_t i = 0; i < params_.size(); ++i) {
    std::weak_ptr<HookTarget> target = hook_target_;
    Tensor p = params_[i].second;
    p.register_grad_ready_hook([target, i](const Tensor& g) {
      if (auto t = target.lock(); t && t->self) t->self->on_grad_ready(int(i), g);
    });
  }
}

DataParallel::~DataParallel() {
  hook_target_->self = nullptr;
  for (Bucket& b : buckets_) {
    if (b.work) {
      try {
        b.work->wait();
      } catch (...) {
      }
    }
  }
}

int64_t DataParallel::optimizer_state_numel() const {
  int64_t n = 0;
  if (opt_.zero1)
    for (const Segment& s : segments_) n += s.len;
  else
    for (const auto& np : params_) n += np.second.numel();
  return n;
}

namespace {
// The GEMM SM margin of this thread (CUDA only): set while a synchronized backward runs beside NCCL.
void set_gemm_margin(const Communicator& comm, int sms) {
#ifdef SEQMIX_WITH_CUDA
  if (comm.device().is_cuda()) cuda::set_gemm_sm_margin(sms);
#else
  (void)comm;
  (void)sms;
#endif
}
}  // namespace

void DataParallel::prepare_backward(bool sync) {
  sync_ = sync;
  if (!sync) return;
  if (opt_.gemm_sm_margin > 0) set_gemm_margin(comm_, opt_.gemm_sm_margin);
  ready_.assign(params_.size(), false);
  had_grad_.assign(params_.size(), false);
  for (Bucket& b : buckets_) {
    b.pending = int(b.params.size());
    b.launched = false;
    b.work.reset();
  }
  next_launch_ = 0;
  set_sinks(true);
}

void DataParallel::set_sinks(bool on) {
  for (Bucket& b : buckets_)
    for (size_t k = 0; k < b.params.size(); ++k) params_[size_t(b.params[k])].second.set_grad_sink(on ? b.sinks[k] : Tensor());
}

const Tensor& DataParallel::sink_of(int i) const {
  return buckets_[size_t(bucket_of_[size_t(i)])].sinks[size_t(slot_of_[size_t(i)])];
}

void DataParallel::pack_grad(int i, const Tensor& grad) {
  autograd::NoGradGuard ng;
  Tensor dst = sink_of(i);  // the parameter's place in its bucket
  if (grad.defined()) dst.copy_(grad);  // converts to the bucket's dtype
  else dst.zero_();
}

void DataParallel::on_grad_ready(int i, const Tensor& grad) {
  if (!sync_) return;
  SEQMIX_CHECK(!ready_[size_t(i)], "data parallel: parameter '", params_[size_t(i)].second.name(),
               "' received a second gradient in one backward after it was packed for reduction");
  ready_[size_t(i)] = true;
  had_grad_[size_t(i)] = grad.defined();
  pack_grad(i, grad);
  Bucket& b = buckets_[size_t(bucket_of_[size_t(i)])];
  if (--b.pending == 0) launch_ready();
}

void DataParallel::launch_ready() {
  while (next_launch_ < int(buckets_.size()) && buckets_[size_t(next_launch_)].pending == 0) {
    Bucket& b = buckets_[size_t(next_launch_++)];
    b.launched = true;
    Tensor& in = b.wire.defined() ? b.wire : b.flat;
    b.work = opt_.zero1 ? comm_.reduce_scatter_mean_async(in, b.wire.defined() ? b.shard_wire : b.shard_grad)
                        : comm_.all_reduce_mean_async(in);
  }
}

void DataParallel::finish_backward(const Tensor& local_loss) {
  autograd::NoGradGuard ng;
  if (!sync_) prepare_backward(true);  // backward ran without prepare_backward(true): pack everything now
  for (size_t i = 0; i < params_.size(); ++i) {
    if (ready_[i]) continue;
    ready_[i] = true;
    had_grad_[i] = params_[i].second.grad().defined();
    pack_grad(int(i), params_[i].second.grad());
    buckets_[size_t(bucket_of_[i])].pending--;
  }
  launch_ready();
  sync_ = false;
  set_sinks(false);
  if (opt_.gemm_sm_margin > 0) set_gemm_margin(comm_, 0);
  // How many ranks saw a gradient for each parameter (queued after the buckets; tiny): a parameter no rank
  // saw is left without one, so the optimizer skips it as a single process would.
  // The step's loss rides along (one collective for both; the host reads them with the gradient norm).
  const int64_t n = int64_t(params_.size());
  std::vector<double> seen(size_t(n) + 1, 0.0);
  for (int64_t i = 0; i < n; ++i) seen[size_t(i)] = had_grad_[size_t(i)] ? 1.0 : 0.0;
  Tensor seen_t = Tensor::from_vector<double>(seen, {n + 1});
#ifdef SEQMIX_WITH_CUDA
  if (comm_.device().is_cuda()) {  // through pinned staging: the host does not wait for backward to end
    Tensor dev = Tensor::empty({n + 1}, DType::F64, comm_.device());
    cuda::upload_async(seen_t.data_ptr(), seen_t.nbytes(), dev);
    seen_t = dev;
  }
#endif
  if (local_loss.defined()) make_view(seen_t, {1}, {1}, seen_t.offset() + n).copy_(local_loss.reshape({1}));
  has_loss_ = local_loss.defined();
  WorkPtr seen_work = comm_.all_reduce_sum_async(seen_t);
  for (Bucket& b : buckets_) {
    b.work->wait();  // the collective averaged over the ranks
    b.work.reset();
    if (opt_.zero1 && b.wire.defined()) b.shard_grad.copy_(b.shard_wire);  // widen the bf16 reduction to f32
    if (!opt_.zero1) {
      // The gradients are views of the reduced bucket (no copy; bf16 ones when reduced in bf16, which the
      // norm and AdamW read as they are); zero_grad() drops them before the next backward writes the
      // bucket again.
      for (size_t k = 0; k < b.params.size(); ++k) {
        Tensor p = params_[size_t(b.params[k])].second;
        p.set_grad(b.sinks[k]);
      }
    }
  }
  seen_work->wait();
  // Read on the host later, with the gradient norm (one host synchronization for both, and the norm's
  // kernels queue behind the reduction instead of waiting for the host): see resolve_seen().
  seen_pending_ = seen_t;
  if (opt_.zero1) resolve_seen();
}

void DataParallel::resolve_seen(std::vector<double> seen) {
  if (!seen_pending_.defined()) return;
  if (seen.empty()) seen = seen_pending_.cpu().to_vector<double>();
  seen_pending_ = Tensor();
  const int64_t n = int64_t(params_.size());
  mean_loss_ = has_loss_ ? seen[size_t(n)] / double(comm_.world()) : NAN;
  if (opt_.zero1) {
    // The full gradients are no longer needed: the owned chunks hold what the update reads.
    for (auto& np : params_) np.second.set_grad(Tensor());
    for (Segment& s : segments_) {
      const Bucket& b = buckets_[size_t(s.bucket)];
      if (seen[size_t(s.param)] > 0) s.view.set_grad(shaped_view(b.shard_grad, s.view.shape(), s.chunk_begin));
    }
  } else {
    for (size_t i = 0; i < params_.size(); ++i)
      if (seen[i] == 0) params_[i].second.set_grad(Tensor());
  }
}

double DataParallel::clip_grad_norm(double max_norm) {
  double norm;
  if (!opt_.zero1) {
    // Every rank holds the same reduced gradients: the local norm is the global one. A parameter no rank
    // saw still has its bucket's zeros as gradient here, which add nothing.
    std::vector<Tensor> ps;
    for (auto& np : params_) ps.push_back(np.second);
    std::vector<double> seen;
    norm = seen_pending_.defined() ? train::grad_norm(ps, seen_pending_, &seen) : train::grad_norm(ps);
    if (!seen.empty()) resolve_seen(std::move(seen));
  } else {
    std::vector<Tensor> segs;
    for (Segment& s : segments_) segs.push_back(s.view);
    double local = segs.empty() ? 0.0 : train::grad_norm(segs);
    norm = std::sqrt(comm_.all_reduce_sum(local * local));
  }
  grad_scale_ = clip_factor(norm, max_norm);  // applied by step()
  return norm;
}

void DataParallel::step(double lr) {
  resolve_seen();
  const double scale = grad_scale_;
  grad_scale_ = 1.0;
  if (!opt_.zero1) {
    adamw_->step(lr, scale);
    return;
  }
  autograd::NoGradGuard ng;
  shard_adamw_->step(lr, scale);
  // All-gather the updated chunks into every rank's parameters (the bucket buffers are free now).
  const int r = comm_.rank();
  std::vector<Tensor> sends(buckets_.size());
  for (size_t bi = 0; bi < buckets_.size(); ++bi) sends[bi] = zeros({chunk(buckets_[bi])}, DType::F32, comm_.device());
  for (Segment& s : segments_) flat_view(sends[size_t(s.bucket)], s.chunk_begin, s.len).copy_(flat_view(s.view, 0, s.len));
  for (size_t bi = 0; bi < buckets_.size(); ++bi) buckets_[bi].work = comm_.all_gather_async(sends[bi], buckets_[bi].flat);
  (void)r;
  for (Bucket& b : buckets_) {
    b.work->wait();
    b.work.reset();
    for (size_t k = 0; k < b.params.size(); ++k) {
      const Tensor& p = params_[size_t(b.params[k])].second;
      flat_view(p, 0, p.numel()).copy_(flat_view(b.flat, b.offsets[k], p.numel()));
    }
  }
}

void DataParallel::zero_grad() {
  seen_pending_ = Tensor();
  grad_scale_ = 1.0;  // a skipped step must not hand its clipping factor to the next one
  if (adamw_) adamw_->zero_grad();
  if (shard_adamw_) shard_adamw_->zero_grad();
  for (auto& np : params_) np.second.set_grad(Tensor());
}

int64_t DataParallel::steps() const { return adamw_ ? adamw_->steps() : shard_adamw_->steps(); }

void DataParallel::load_state(const NamedTensors& full_state, int64_t steps) {
  if (!opt_.zero1) {
    adamw_->load_state(full_state, steps);
    return;
  }
  autograd::NoGradGuard ng;
  std::map<std::string, Tensor> by_name(full_state.begin(), full_state.end());
  SEQMIX_CHECK(full_state.size() == 2 * params_.size(), "optimizer state has ", full_state.size(), " tensors but ",
               2 * params_.size(), " are expected (exp_avg and exp_avg_sq of every parameter)");
  NamedTensors shard;
  for (const char* kind : {"exp_avg.", "exp_avg_sq."}) {
    for (Segment& s : segments_) {
      const auto& [name, p] = params_[size_t(s.param)];
      auto f = by_name.find(kind + name);
      SEQMIX_CHECK(f != by_name.end(), "optimizer state has no tensor '", kind, name, "'");
      SEQMIX_CHECK(f->second.numel() == p.numel(), "optimizer state '", kind, name, "' has shape ", shape_str(f->second.shape()),
                   " but the parameter has ", shape_str(p.shape()));
      Tensor full = f->second.contiguous().to(DType::F32);
      shard.emplace_back(kind + name + "@" + std::to_string(s.param_begin), shaped_view(full, s.view.shape(), s.param_begin));
    }
  }
  // AdamW::load_state wants exp_avg/exp_avg_sq per segment in any order: names identify them.
  shard_adamw_->load_state(shard, steps);
}

const AdamW& DataParallel::full_optimizer() {
  if (!opt_.zero1) return *adamw_;
  autograd::NoGradGuard ng;
  // Gather exp_avg and exp_avg_sq chunk by chunk into full per-parameter tensors (CPU).
  std::map<std::string, Tensor> shard_state;
  for (auto& [n, t] : shard_adamw_->state_tensors()) shard_state[n] = t;
  NamedTensors placeholders, full_state;
  for (auto& [name, p] : params_) placeholders.emplace_back(name, Tensor::empty(p.shape(), DType::F32));
  for (const char* kind : {"exp_avg.", "exp_avg_sq."}) {
    std::vector<Tensor> gathered(buckets_.size());
    std::vector<WorkPtr> works(buckets_.size());
    for (size_t bi = 0; bi < buckets_.size(); ++bi) {
      Tensor send = zeros({chunk(buckets_[bi])}, DType::F32, comm_.device());
      for (Segment& s : segments_) {
        if (s.bucket != int(bi)) continue;
        const std::string& name = params_[size_t(s.param)].first;
        const Tensor& st = shard_state.at(kind + name + "@" + std::to_string(s.param_begin));
        flat_view(send, s.chunk_begin, s.len).copy_(flat_view(st, 0, s.len));
      }
      gathered[bi] = zeros({buckets_[bi].padded}, DType::F32, comm_.device());
      works[bi] = comm_.all_gather_async(send, gathered[bi]);
      works[bi]->wait();
      Tensor host = gathered[bi].cpu();
      const Bucket& b = buckets_[bi];
      for (size_t k = 0; k < b.params.size(); ++k) {
        const auto& [name, p] = params_[size_t(b.params[k])];
        full_state.emplace_back(kind + name, shaped_view(host, p.shape(), b.offsets[k]).clone());
      }
    }
  }
  full_ = std::make_unique<AdamW>(placeholders, cfg_);
  full_->load_state(full_state, shard_adamw_->steps());
  return *full_;
}

}  // namespace seqmix::train::dist
