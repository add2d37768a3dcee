#include "train/distributed/rendezvous.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <sstream>

#include "core/error.h"

namespace seqmix::train::dist {

namespace {

enum : uint32_t { kHello = 0x53514D01, kShare, kHeartbeat, kTable, kFail, kBye };

struct Header {
  uint32_t type = 0;
  int32_t rank = 0;
  int64_t value = 0;
  uint32_t len = 0;
  uint32_t pad = 0;
};

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// Waits until fd is readable (or writable); false on timeout.
bool wait_fd(int fd, short events, double timeout_s) {
  pollfd p{fd, events, 0};
  int ms = timeout_s < 0 ? -1 : int(timeout_s * 1000);
  for (;;) {
    int r = ::poll(&p, 1, ms);
    if (r < 0 && errno == EINTR) continue;
    return r > 0;
  }
}

using net::recv_all;
using net::send_all;

bool send_frame(int fd, uint32_t type, int32_t rank, int64_t value, const std::string& payload, double timeout_s) {
  Header h;
  h.type = type;
  h.rank = rank;
  h.value = value;
  h.len = uint32_t(payload.size());
  std::string buf(reinterpret_cast<const char*>(&h), sizeof h);
  buf += payload;
  return send_all(fd, buf.data(), buf.size(), timeout_s);
}
bool recv_frame(int fd, Header& h, std::string& payload, double timeout_s) {
  if (!recv_all(fd, &h, sizeof h, timeout_s)) return false;
  if (h.type < kHello || h.type > kBye || h.len > (1u << 24)) return false;
  payload.resize(h.len);
  return h.len == 0 || recv_all(fd, payload.data(), h.len, timeout_s);
}

void set_nodelay(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

std::string missing_ranks(const std::vector<int>& fds) {
  std::ostringstream os;
  int n = 0;
  for (size_t r = 1; r < fds.size(); ++r)
    if (fds[r] < 0) os << (n++ ? ", " : "") << r;
  return os.str();
}

}  // namespace

namespace net {
bool send_all(int fd, const void* data, size_t n, double timeout_s) {
  const char* p = static_cast<const char*>(data);
  double deadline = now_s() + timeout_s;
  while (n > 0) {
    if (!wait_fd(fd, POLLOUT, deadline - now_s())) return false;
    ssize_t k = ::send(fd, p, n, MSG_NOSIGNAL);
    if (k < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (k <= 0) return false;
    p += k;
    n -= size_t(k);
  }
  return true;
}

bool recv_all(int fd, void* data, size_t n, double timeout_s) {
  char* p = static_cast<char*>(data);
  double deadline = now_s() + timeout_s;
  while (n > 0) {
    if (!wait_fd(fd, POLLIN, deadline - now_s())) return false;
    ssize_t k = ::recv(fd, p, n, 0);
    if (k < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (k <= 0) return false;
    p += k;
    n -= size_t(k);
  }
  return true;
}

int listen_on(int port, int backlog, int* bound) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  SEQMIX_CHECK(fd >= 0, "socket(): ", std::strerror(errno));
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_ANY);
  a.sin_port = htons(uint16_t(port));
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    std::string err = std::strerror(errno);
    ::close(fd);
    SEQMIX_FAIL("cannot listen on TCP port ", port, " (", err, "): set MASTER_PORT to a free port");
  }
  SEQMIX_CHECK(::listen(fd, backlog) == 0, "listen(): ", std::strerror(errno));
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  if (bound) *bound = ntohs(a.sin_port);
  return fd;
}

int connect_to(const std::string& addr, int port, double timeout_s, const std::string& what) {
  const double deadline = now_s() + timeout_s;
  std::string last_error = "no attempt";
  for (;;) {
    addrinfo hints{}, *res = nullptr;
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    int g = ::getaddrinfo(addr.c_str(), std::to_string(port).c_str(), &hints, &res);
    SEQMIX_CHECK(g == 0, what, ": cannot resolve MASTER_ADDR '", addr, "': ", gai_strerror(g));
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    bool ok = fd >= 0 && ::connect(fd, res->ai_addr, res->ai_addrlen) == 0;
    if (!ok) last_error = std::strerror(errno);
    ::freeaddrinfo(res);
    if (ok) {
      set_nodelay(fd);
      return fd;
    }
    if (fd >= 0) ::close(fd);
    SEQMIX_CHECK(now_s() < deadline, what, ": could not reach rank 0 at ", addr, ":", port, " within ", timeout_s, " s (", last_error,
                 "): is rank 0 running, and are MASTER_ADDR/MASTER_PORT right?");
    ::usleep(100 * 1000);
  }
}
}  // namespace net

int find_free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  SEQMIX_CHECK(fd >= 0, "socket(): ", std::strerror(errno));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof a;
  bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 && ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0;
  ::close(fd);
  SEQMIX_CHECK(ok, "could not find a free TCP port on 127.0.0.1: ", std::strerror(errno));
  return ntohs(a.sin_port);
}

Rendezvous::Rendezvous(int rank, int world, const std::string& addr, int port, double timeout_s)
    : rank_(rank), world_(world), timeout_s_(timeout_s), peers_(size_t(world), -1), table_(size_t(world)),
      last_heard_(size_t(world), now_s()), said_bye_(size_t(world), false) {
  SEQMIX_CHECK(world >= 1 && rank >= 0 && rank < world, "rendezvous: rank ", rank, " of ", world);
  const double deadline = now_s() + timeout_s;
  if (rank == 0) {
    listen_fd_ = net::listen_on(port, world + 8, nullptr);
    int joined = 1;
    while (joined < world) {
      double left = deadline - now_s();
      if (left <= 0 || !wait_fd(listen_fd_, POLLIN, left))
        SEQMIX_FAIL("rendezvous: rank(s) ", missing_ranks(peers_), " did not connect to rank 0 at port ", port, " within ", timeout_s,
                    " s (train.dist_timeout)");
      int fd = ::accept(listen_fd_, nullptr, nullptr);
      if (fd < 0) continue;
      set_nodelay(fd);
      Header h;
      std::string payload;
      if (!recv_frame(fd, h, payload, 10) || h.type != kHello || h.rank <= 0 || h.rank >= world || peers_[size_t(h.rank)] >= 0 ||
          h.value != world) {
        ::close(fd);  // a stray connection, or a rank of another job: ignore it
        continue;
      }
      peers_[size_t(h.rank)] = fd;
      ++joined;
    }
  } else {
    for (;;) {
      int fd = net::connect_to(addr, port, std::max(0.0, deadline - now_s()), "rendezvous: rank " + std::to_string(rank));
      if (send_frame(fd, kHello, rank, world, "", 10)) {
        peers_[0] = fd;
        break;
      }
      ::close(fd);
      SEQMIX_CHECK(now_s() < deadline, "rendezvous: rank ", rank, " could not say hello to rank 0 within ", timeout_s, " s");
      ::usleep(100 * 1000);
    }
  }
}

Rendezvous::~Rendezvous() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
  for (int fd : peers_)
    if (fd >= 0) ::close(fd);
  if (listen_fd_ >= 0) ::close(listen_fd_);
}

std::string Rendezvous::share(const std::string& payload) {
  if (rank_ == 0) {
    for (int r = 1; r < world_; ++r)
      SEQMIX_CHECK(send_frame(peers_[size_t(r)], kShare, 0, 0, payload, timeout_s_), "rendezvous: rank ", r,
                   " disconnected before it got the unique id");
    return payload;
  }
  Header h;
  std::string got;
  SEQMIX_CHECK(recv_frame(peers_[0], h, got, timeout_s_) && h.type == kShare, "rendezvous: rank ", rank_,
               " got no unique id from rank 0 within ", timeout_s_, " s (rank 0 died or hangs)");
  return got;
}

void Rendezvous::start_monitor(std::function<int64_t()> progress, std::function<void(const std::string&)> on_failure) {
  progress_ = std::move(progress);
  on_failure_ = std::move(on_failure);
  if (world_ == 1) return;
  thread_ = std::thread([this] { rank_ == 0 ? server_loop() : client_loop(); });
}

std::vector<Rendezvous::PeerStatus> Rendezvous::progress_table() {
  std::lock_guard<std::mutex> lk(mu_);
  std::vector<PeerStatus> t = table_;
  if (rank_ == 0)
    for (int r = 0; r < world_; ++r) t[size_t(r)].silent_s = r == 0 ? 0 : now_s() - last_heard_[size_t(r)];
  return t;
}

void Rendezvous::fail(const std::string& msg) {
  if (bye_ || failed_.exchange(true)) return;
  if (on_failure_) on_failure_(msg);
}

void Rendezvous::goodbye() {
  if (bye_.exchange(true)) return;
  std::lock_guard<std::mutex> lk(mu_);
  for (int fd : peers_)
    if (fd >= 0) send_frame(fd, kBye, rank_, 0, "", 2);
}

void Rendezvous::report_failure(const std::string& why) {
  if (bye_.exchange(true)) return;
  std::string msg = "rank " + std::to_string(rank_) + " failed: " + why;
  std::lock_guard<std::mutex> lk(mu_);
  for (int fd : peers_)
    if (fd >= 0) send_frame(fd, kFail, rank_, 0, msg, 2);
}

void Rendezvous::server_loop() {
  double next_table = 0;
  while (!stop_) {
    std::vector<pollfd> fds;
    for (int r = 1; r < world_; ++r)
      if (peers_[size_t(r)] >= 0) fds.push_back({peers_[size_t(r)], POLLIN, 0});
    ::poll(fds.data(), fds.size(), 100);
    double t = now_s();
    for (const pollfd& p : fds) {
      if (!(p.revents & (POLLIN | POLLHUP | POLLERR))) continue;
      int r = 1;
      while (peers_[size_t(r)] != p.fd) ++r;
      Header h;
      std::string payload;
      bool ok = recv_frame(p.fd, h, payload, 5);
      std::lock_guard<std::mutex> lk(mu_);
      if (ok && h.type == kHeartbeat) {
        table_[size_t(r)].progress = h.value;
        last_heard_[size_t(r)] = t;
        continue;
      }
      if (ok && h.type == kBye) {
        said_bye_[size_t(r)] = true;
        continue;
      }
      std::string msg = ok && h.type == kFail ? payload
                                              : "rank " + std::to_string(r) + " disconnected: its process died or was killed";
      ::close(p.fd);
      peers_[size_t(r)] = -1;
      if (said_bye_[size_t(r)] && !(ok && h.type == kFail)) continue;
      for (int q = 1; q < world_; ++q)
        if (peers_[size_t(q)] >= 0) send_frame(peers_[size_t(q)], kFail, r, 0, msg, 2);
      mu_.unlock();
      fail(msg);
      mu_.lock();
    }
    if (t >= next_table) {
      next_table = t + 0.5;
      std::lock_guard<std::mutex> lk(mu_);
      table_[0].progress = progress_ ? progress_() : 0;
      for (int r = 1; r < world_; ++r) {
        table_[size_t(r)].silent_s = t - last_heard_[size_t(r)];
        if (peers_[size_t(r)] >= 0 && !said_bye_[size_t(r)] && table_[size_t(r)].silent_s > std::max(timeout_s_, 10.0)) {
          std::string msg = "rank " + std::to_string(r) + " has not been heard from for " + std::to_string(int(table_[size_t(r)].silent_s)) +
                            " s: its process hangs or is stopped";
          for (int q = 1; q < world_; ++q)
            if (peers_[size_t(q)] >= 0) send_frame(peers_[size_t(q)], kFail, r, 0, msg, 2);
          mu_.unlock();
          fail(msg);
          mu_.lock();
        }
      }
      std::string blob(reinterpret_cast<const char*>(table_.data()), table_.size() * sizeof(PeerStatus));
      for (int r = 1; r < world_; ++r)
        if (peers_[size_t(r)] >= 0) send_frame(peers_[size_t(r)], kTable, 0, 0, blob, 2);
    }
  }
}

void Rendezvous::client_loop() {
  const int fd = peers_[0];
  double next_beat = 0, last_from_server = now_s();
  bool server_bye = false;
  while (!stop_) {
    double t = now_s();
    if (t >= next_beat) {
      next_beat = t + 0.5;
      std::lock_guard<std::mutex> lk(mu_);
      send_frame(fd, kHeartbeat, rank_, progress_ ? progress_() : 0, "", 2);
    }
    if (!wait_fd(fd, POLLIN, 0.1)) {
      if (!server_bye && now_s() - last_from_server > std::max(timeout_s_, 10.0)) {
        fail("rank 0 has not been heard from for " + std::to_string(int(now_s() - last_from_server)) + " s: its process hangs or is stopped");
        return;
      }
      continue;
    }
    Header h;
    std::string payload;
    if (!recv_frame(fd, h, payload, 5)) {
      if (!server_bye) fail("rank 0 disconnected: its process died or was killed");
      return;
    }
    last_from_server = now_s();
    if (h.type == kTable && payload.size() == table_.size() * sizeof(PeerStatus)) {
      std::lock_guard<std::mutex> lk(mu_);
      std::memcpy(table_.data(), payload.data(), payload.size());
    } else if (h.type == kFail) {
      fail(payload);
      return;
    } else if (h.type == kBye) {
      server_bye = true;
    }
  }
}

}  // namespace seqmix::train::dist
