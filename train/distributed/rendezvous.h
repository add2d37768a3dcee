// Rendezvous and liveness over TCP: rank 0 serves at MASTER_ADDR:MASTER_PORT, every other rank
// connects (retrying until the timeout, so the start order does not matter).
//
// 1. share(): rank 0's payload (the NCCL unique id) is delivered to every rank.
// 2. start_monitor(): the connections stay open. Every rank sends a heartbeat with its progress (the
//    number of collectives it has issued) twice a second; rank 0 answers with the table of everyone's
//    progress. A connection that closes without a goodbye means that rank's process died: rank 0 names
//    it to the others and every rank's on_failure is called with a message naming it (if rank 0 dies,
//    the others name rank 0). progress_table() lets a rank stuck in a collective name the ranks that
//    never reached it (hung rather than dead).
// 3. goodbye(): a clean end; closing afterwards is not a failure.
#pragma once
#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace seqmix::train::dist {

class Rendezvous {
 public:
  // Blocks until all `world` ranks are connected; throws (naming the missing ranks) after timeout_s.
  Rendezvous(int rank, int world, const std::string& master_addr, int master_port, double timeout_s);
  ~Rendezvous();
  Rendezvous(const Rendezvous&) = delete;
  Rendezvous& operator=(const Rendezvous&) = delete;

  // Rank 0's `payload` on every rank (the argument is ignored elsewhere). Waits up to the timeout.
  std::string share(const std::string& payload);

  // Starts the heartbeat thread (after share(): from then on it alone reads the connections).
  // on_failure runs at most once, on that thread.
  void start_monitor(std::function<int64_t()> progress, std::function<void(const std::string&)> on_failure);
  // Each rank's last known progress and the seconds since it was heard from (rank 0's view, relayed).
  struct PeerStatus {
    int64_t progress = -1;
    double silent_s = 0;
  };
  std::vector<PeerStatus> progress_table();
  // A clean shutdown: peers will not report this rank's disconnect as a failure.
  void goodbye();
  // This rank failed: every other rank's on_failure gets "rank R failed: why".
  void report_failure(const std::string& why);

  int rank() const { return rank_; }
  int world() const { return world_; }

 private:
  void server_loop();
  void client_loop();
  void fail(const std::string& msg);

  int rank_, world_;
  double timeout_s_;
  int listen_fd_ = -1;
  std::vector<int> peers_;  // rank 0: socket of each rank (-1 for itself); others: peers_[0] = server
  std::function<int64_t()> progress_;
  std::function<void(const std::string&)> on_failure_;
  std::mutex mu_;
  std::vector<PeerStatus> table_;
  std::vector<double> last_heard_;  // steady-clock seconds
  std::vector<bool> said_bye_;
  std::atomic<bool> stop_{false}, failed_{false}, bye_{false};
  std::thread thread_;
};

// A free TCP port on 127.0.0.1 (for `seqmix train --gpus N` without MASTER_PORT).
int find_free_port();

// Blocking socket helpers with a timeout (seconds); false when the peer closed or time ran out.
namespace net {
bool send_all(int fd, const void* data, size_t n, double timeout_s);
bool recv_all(int fd, void* data, size_t n, double timeout_s);
// A listening socket on all interfaces at `port` (0: any free port; *bound gets the port).
int listen_on(int port, int backlog, int* bound);
// Connects to addr:port, retrying until timeout_s; throws naming `what` on failure.
int connect_to(const std::string& addr, int port, double timeout_s, const std::string& what);
}  // namespace net

}  // namespace seqmix::train::dist
