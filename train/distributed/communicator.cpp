#include "train/distributed/communicator.h"

#include <cstdlib>
#include <string>

#include "core/ops.h"

namespace seqmix::train::dist {

double Communicator::all_reduce_sum(double v) { return all_reduce_sum(std::vector<double>{v})[0]; }

std::vector<double> Communicator::all_reduce_sum(const std::vector<double>& v) {
  Tensor t = Tensor::from_vector<double>(v, {int64_t(v.size())});
  if (!device().is_cpu()) t = t.to(device());
  all_reduce_sum(t);
  return t.cpu().to_vector<double>();
}

namespace {
// Completes a sum, then divides the result by the world size in place (once).
class MeanWork : public Work {
 public:
  MeanWork(WorkPtr sum, Tensor t, int world) : sum_(std::move(sum)), t_(std::move(t)), world_(world) {}
  void wait() override {
    sum_->wait();
    if (scaled_ || world_ == 1) return;
    t_.copy_(t_ * (1.0 / double(world_)));
    scaled_ = true;
  }

 private:
  WorkPtr sum_;
  Tensor t_;
  int world_;
  bool scaled_ = false;
};
}  // namespace

WorkPtr Communicator::all_reduce_mean_async(Tensor& t) {
  return std::make_shared<MeanWork>(all_reduce_sum_async(t), t, world());
}

WorkPtr Communicator::reduce_scatter_mean_async(const Tensor& in, Tensor& out) {
  return std::make_shared<MeanWork>(reduce_scatter_sum_async(in, out), out, world());
}

namespace {
bool env_int(const char* name, int* out) {
  const char* v = std::getenv(name);
  if (!v || !*v) return false;
  char* end = nullptr;
  long x = std::strtol(v, &end, 10);
  SEQMIX_CHECK(end && *end == '\0' && x >= 0, "environment variable ", name, "='", v, "' is not a non-negative integer");
  *out = int(x);
  return true;
}
}  // namespace

DistEnv dist_env_from_environment() {
  DistEnv e;
  bool r = env_int("RANK", &e.rank), w = env_int("WORLD_SIZE", &e.world);
  if (!r && !w) {
    r = env_int("SLURM_PROCID", &e.rank);
    w = env_int("SLURM_NTASKS", &e.world);
    if (!env_int("SLURM_LOCALID", &e.local_rank)) e.local_rank = e.rank;
  } else if (!env_int("LOCAL_RANK", &e.local_rank)) {
    e.local_rank = e.rank;
  }
  e.from_env = r || w;
  SEQMIX_CHECK(e.world >= 1, "WORLD_SIZE must be at least 1");
  SEQMIX_CHECK(e.rank < e.world, "RANK ", e.rank, " is not below WORLD_SIZE ", e.world);
  if (const char* a = std::getenv("MASTER_ADDR"); a && *a) e.master_addr = a;
  int port = 0;
  if (env_int("MASTER_PORT", &port)) {
    SEQMIX_CHECK(port > 0 && port < 65536, "MASTER_PORT must be in 1..65535, got ", port);
    e.master_port = port;
  }
  // Under torchrun the agent's own store already listens on MASTER_PORT: meet on the next port.
  if (const char* t = std::getenv("TORCHELASTIC_USE_AGENT_STORE"); t && std::string(t) == "True") e.master_port += 1;
  if (int p = 0; env_int("SEQMIX_RDZV_PORT", &p)) e.master_port = p;  // explicit override
  return e;
}

}  // namespace seqmix::train::dist
