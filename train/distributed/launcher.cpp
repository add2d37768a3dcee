#include "train/distributed/launcher.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "core/error.h"
#include "train/distributed/rendezvous.h"

namespace seqmix::train::dist {

namespace {
volatile sig_atomic_t g_signal = 0;
void on_signal(int sig) { g_signal = sig; }

std::string describe(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return std::string("was killed by signal ") + std::to_string(WTERMSIG(status)) + " (" + strsignal(WTERMSIG(status)) + ")";
  return "stopped";
}
}  // namespace

int launch_local(int nprocs, const std::vector<std::string>& args, double grace_s) {
  SEQMIX_CHECK(nprocs >= 1, "--gpus must be at least 1, got ", nprocs);
  char exe[4096];
  ssize_t n = ::readlink("/proc/self/exe", exe, sizeof exe - 1);
  SEQMIX_CHECK(n > 0, "cannot find this program's path (/proc/self/exe): ", std::strerror(errno));
  exe[n] = '\0';
  const char* port_env = std::getenv("MASTER_PORT");
  std::string port = port_env && *port_env ? port_env : std::to_string(find_free_port());

  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);

  std::vector<pid_t> pids(size_t(nprocs), -1);
  for (int r = 0; r < nprocs; ++r) {
    pid_t pid = ::fork();
    SEQMIX_CHECK(pid >= 0, "fork() failed for rank ", r, ": ", std::strerror(errno));
    if (pid == 0) {
      signal(SIGINT, SIG_DFL);
      signal(SIGTERM, SIG_DFL);
      setenv("RANK", std::to_string(r).c_str(), 1);
      setenv("LOCAL_RANK", std::to_string(r).c_str(), 1);
      setenv("WORLD_SIZE", std::to_string(nprocs).c_str(), 1);
      setenv("LOCAL_WORLD_SIZE", std::to_string(nprocs).c_str(), 1);
      setenv("MASTER_ADDR", "127.0.0.1", 1);
      setenv("MASTER_PORT", port.c_str(), 1);
      std::vector<char*> argv{exe};
      for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      ::execv(exe, argv.data());
      std::fprintf(stderr, "seqmix: rank %d: cannot run %s: %s\n", r, exe, std::strerror(errno));
      ::_exit(127);
    }
    pids[size_t(r)] = pid;
  }
  std::fprintf(stderr, "seqmix: started %d ranks (MASTER_ADDR=127.0.0.1 MASTER_PORT=%s)\n", nprocs, port.c_str());

  auto rank_of = [&](pid_t pid) {
    for (int r = 0; r < nprocs; ++r)
      if (pids[size_t(r)] == pid) return r;
    return -1;
  };
  int alive = nprocs, result = 0, noticer = -1;
  std::chrono::steady_clock::time_point noticed_until;
  bool stopping = false;
  std::chrono::steady_clock::time_point kill_at;
  auto stop_all = [&](int sig) {
    for (pid_t p : pids)
      if (p > 0) ::kill(p, sig);
  };
  while (alive > 0) {
    int status = 0;
    pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid > 0) {
      int r = rank_of(pid);
      if (r < 0) continue;
      pids[size_t(r)] = -1;
      --alive;
      bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
      bool noticed = WIFEXITED(status) && WEXITSTATUS(status) == kPeerFailureExit;
      if (!ok && !stopping) {
        if (noticed && noticer < 0) {
          // This rank stopped because another failed: give the culprit a moment to exit, and blame it.
          noticer = r;
          noticed_until = std::chrono::steady_clock::now() + std::chrono::seconds(3);
          continue;
        }
        if (noticed) continue;
        stopping = true;
        result = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        std::fprintf(stderr, "seqmix: rank %d %s; stopping the other ranks\n", r, describe(status).c_str());
        stop_all(SIGTERM);
        kill_at = std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                                          std::chrono::duration<double>(grace_s));
      }
      continue;
    }
    if (noticer >= 0 && !stopping && (alive == 0 || std::chrono::steady_clock::now() > noticed_until)) {
      stopping = true;
      result = kPeerFailureExit;
      std::fprintf(stderr, "seqmix: rank %d stopped because another rank failed (its message above names it); stopping the others\n",
                   noticer);
      stop_all(SIGTERM);
      kill_at = std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                                        std::chrono::duration<double>(grace_s));
    }
    if (g_signal && !stopping) {
      stopping = true;
      result = 128 + g_signal;
      std::fprintf(stderr, "seqmix: interrupted; stopping the ranks\n");
      stop_all(g_signal);
      kill_at = std::chrono::steady_clock::now() + std::chrono::seconds(int(grace_s));
    }
    if (stopping && std::chrono::steady_clock::now() > kill_at) stop_all(SIGKILL);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (noticer >= 0 && !stopping) {
    result = kPeerFailureExit;
    std::fprintf(stderr, "seqmix: rank %d stopped because another rank failed (its message above names it)\n", noticer);
  }
  return result;
}

}  // namespace seqmix::train::dist
