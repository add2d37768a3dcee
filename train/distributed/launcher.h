// `seqmix train CONFIG --gpus N`: starts N local processes of this binary, one per GPU, and waits.
#pragma once
#include <string>
#include <vector>

namespace seqmix::train::dist {

// Exit status of a rank that stopped because another rank failed (it names that rank on stderr).
inline constexpr int kPeerFailureExit = 3;
// The least time the ranks are given to meet at start-up (seconds), whatever train.dist_timeout says.
inline constexpr double kStartupTimeout = 300;

// Re-executes /proc/self/exe with `args` (argv after the program name, e.g. {"train", "cfg.yaml"}) as
// `nprocs` children with RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR=127.0.0.1 and
// MASTER_PORT (kept from the environment, else a free port) set. When a child fails, the others get
// SIGTERM (SIGKILL after `grace_s`), a message names the failed rank, and its status is returned;
// 0 when all succeed. SIGINT/SIGTERM to the launcher are passed to the children.
int launch_local(int nprocs, const std::vector<std::string>& args, double grace_s = 10);

}  // namespace seqmix::train::dist
