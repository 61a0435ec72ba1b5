// Socket helpers of the KV transports: see socket_io.h.
#include "agent/transport/socket_io.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace pdpool::agent::net {

Status WaitFd(int fd, short events, std::chrono::milliseconds idle, SteadyTime deadline) {
  const auto now = std::chrono::steady_clock::now();
  if (now >= deadline) return Status::DeadlineExceeded("KV transfer deadline passed");
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now);
  const auto wait = std::min(idle, left + std::chrono::milliseconds(1));
  pollfd p{fd, events, 0};
  int r;
  do {
    r = ::poll(&p, 1, static_cast<int>(wait.count()));
  } while (r < 0 && errno == EINTR);
  if (r == 0)
    return Status::DeadlineExceeded("KV transfer timed out after " + std::to_string(wait.count()) +
                                    " ms idle");
  if (r < 0) return Status::Unavailable(std::string("poll: ") + std::strerror(errno));
  return Status::Ok();
}

Status WriteAll(int fd, const char* data, size_t n, std::chrono::milliseconds idle,
                SteadyTime deadline) {
  while (n > 0) {
    Status s = WaitFd(fd, POLLOUT, idle, deadline);
    if (!s.ok()) return s;
    ssize_t w = ::send(fd, data, n, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return Status::Unavailable(std::string("send: ") + std::strerror(errno));
    }
    data += w;
    n -= static_cast<size_t>(w);
  }
  return Status::Ok();
}

Status ReadAll(int fd, char* data, size_t n, std::chrono::milliseconds idle, SteadyTime deadline) {
  while (n > 0) {
    Status s = WaitFd(fd, POLLIN, idle, deadline);
    if (!s.ok()) return s;
    ssize_t r = ::recv(fd, data, n, 0);
    if (r == 0) return Status::Unavailable("connection closed by the peer mid-transfer");
    if (r < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return Status::Unavailable(std::string("recv: ") + std::strerror(errno));
    }
    data += r;
    n -= static_cast<size_t>(r);
  }
  return Status::Ok();
}

void SetSocketOptions(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
}

bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < a.size(); ++i) diff |= a[i] ^ b[i % (b.empty() ? 1 : b.size())];
  return diff == 0 && !b.empty();
}

bool PeerClosed(int fd) {
  pollfd p{fd, POLLIN, 0};
  const int r = ::poll(&p, 1, 0);
  if (r < 0) return true;
  if (r == 0) return false;
  if (p.revents & (POLLERR | POLLHUP | POLLNVAL)) return true;
  char byte;
  const ssize_t n = ::recv(fd, &byte, 1, MSG_PEEK);
  return n <= 0 && !(n < 0 && (errno == EAGAIN || errno == EINTR));
}

StatusOr<int> Connect(const std::string& address, std::chrono::milliseconds timeout) {
  const auto colon = address.rfind(':');
  if (colon == std::string::npos) {
    return Status::InvalidArgument("KV address \"" + address + "\" is not host:port");
  }
  std::string host = address.substr(0, colon);
  const std::string port = address.substr(colon + 1);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &res); rc != 0) {
    return Status::Unavailable("resolve " + address + ": " + ::gai_strerror(rc));
  }
  Status last = Status::Unavailable("no address for " + address);
  for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    int fd = ::socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
    if (fd < 0) continue;
    SetSocketOptions(fd);
    int rc = ::connect(fd, ai->ai_addr, ai->ai_addrlen);
    if (rc < 0 && errno != EINPROGRESS) {
      last = Status::Unavailable("connect " + address + ": " + std::strerror(errno));
      ::close(fd);
      continue;
    }
    Status s = WaitFd(fd, POLLOUT, timeout, std::chrono::steady_clock::now() + timeout);
    int err = 0;
    socklen_t len = sizeof(err);
    if (s.ok()) ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (s.ok() && err == 0) {
      ::freeaddrinfo(res);
      return fd;
    }
    last = s.ok() ? Status::Unavailable("connect " + address + ": " + std::strerror(err)) : s;
    ::close(fd);
  }
  ::freeaddrinfo(res);
  return last;
}

Status SendStatusReply(int fd, const Status& status, std::chrono::milliseconds idle) {
  std::string reply;
  Put<uint8_t>(reply, status.ok() ? 0 : 1);
  std::string message = status.ok() ? "" : status.ToString().substr(0, 1000);
  Put<uint16_t>(reply, static_cast<uint16_t>(message.size()));
  reply += message;
  return WriteAll(fd, reply.data(), reply.size(), idle, std::chrono::steady_clock::now() + idle);
}

Status ReadStatusReply(int fd, std::chrono::milliseconds idle, SteadyTime deadline,
                       Status* verdict) {
  char head[3];
  if (Status r = ReadAll(fd, head, 3, idle, deadline); !r.ok()) return r;
  std::string message(Get<uint16_t>(head + 1), '\0');
  if (!message.empty()) {
    Status m = ReadAll(fd, message.data(), message.size(), idle, deadline);
    if (!m.ok()) message = "(unreadable reply)";
  }
  *verdict = head[0] == 0 ? Status::Ok() : Status::Unavailable(std::move(message));
  return Status::Ok();
}

IdleConnections::~IdleConnections() {
  for (auto& [address, fds] : idle_) {
    for (int fd : fds) ::close(fd);
  }
}

int IdleConnections::Take(const std::string& address) {
  std::lock_guard lock(mu_);
  auto it = idle_.find(address);
  while (it != idle_.end() && !it->second.empty()) {
    const int fd = it->second.back();
    it->second.pop_back();
    if (!PeerClosed(fd)) return fd;
    ::close(fd);
  }
  return -1;
}

void IdleConnections::GiveBack(const std::string& address, int fd) {
  std::lock_guard lock(mu_);
  std::vector<int>& fds = idle_[address];
  if (static_cast<int>(fds.size()) >= max_per_peer_) {
    ::close(fd);
    return;
  }
  fds.push_back(fd);
}

}  // namespace pdpool::agent::net
