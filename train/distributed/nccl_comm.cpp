// The NCCL communicator (one process per GPU). Built only with CUDA and NCCL; otherwise the entry
// points say so.
#include "train/distributed/communicator.h"

#if __has_include(<nccl.h>) && defined(SEQMIX_WITH_CUDA) && defined(SEQMIX_WITH_NCCL)
#define SEQMIX_NCCL_ENABLED 1
#endif

namespace seqmix::train::dist {

#ifndef SEQMIX_NCCL_ENABLED
bool nccl_available() { return false; }
std::unique_ptr<Communicator> make_nccl_communicator(const DistEnv& env, double) {
  SEQMIX_FAIL("multi-GPU training needs NCCL, but this seqmix was built without it (rank ", env.rank, " of ", env.world,
              "): rebuild with CUDA and NCCL (see train/distributed/README in the commit notes)");
}
#endif

}  // namespace seqmix::train::dist
