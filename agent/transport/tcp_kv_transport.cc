// The tcp KV transport: see tcp_kv_transport.h.
#include "agent/transport/tcp_kv_transport.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "agent/transport/crc32c.h"
#include "agent/transport/socket_io.h"
#include "common/log.h"

namespace pdpool::agent {
namespace {

constexpr char kMagic[4] = {'P', 'D', 'K', 'V'};
constexpr uint16_t kVersion = 1;
constexpr uint32_t kMaxPayload = 256u << 20;
constexpr uint32_t kMaxBlocks = 1u << 20;

using net::ConstantTimeEquals;
using net::Get;
using net::Put;
using net::ReadAll;
using net::SteadyTime;
using net::WriteAll;

Status SendReply(int fd, const Status& status, std::chrono::milliseconds idle) {
  return net::SendStatusReply(fd, status, idle);
}

}  // namespace

StatusOr<KvTransferStats> TcpKvSender::Send(const KvDestination& destination, int32_t num_tokens,
                                            int32_t block_size, const KvBlockReader& read) {
  if (num_tokens < 1 || block_size < 1) {
    return Status::InvalidArgument("nothing to send: " + std::to_string(num_tokens) + " tokens");
  }
  // A pooled connection first; if the receiver had closed it before reading anything (no
  // reply at all), the transfer never began there: once more on a fresh connection.
  for (int attempt = 0; attempt < 2; ++attempt) {
    int fd = attempt == 0 ? idle_.Take(destination.address) : -1;
    const bool reused = fd >= 0;
    if (!reused) {
      auto fd_or = net::Connect(destination.address, options_.io_timeout);
      if (!fd_or.ok()) return fd_or.status();
      fd = *fd_or;
      ++connections_opened_;
    }
    bool reply_seen = false;
    auto stats = Transfer(fd, destination, num_tokens, block_size, read, &reply_seen);
    if (stats.ok()) {
      idle_.GiveBack(destination.address, fd);
      return stats;
    }
    ::close(fd);
    if (!reused || reply_seen) return stats;
  }
  return Status::Internal("unreachable");
}

StatusOr<KvTransferStats> TcpKvSender::Transfer(int fd, const KvDestination& destination,
                                                int32_t num_tokens, int32_t block_size,
                                                const KvBlockReader& read, bool* reply_seen) {
  const auto started = std::chrono::steady_clock::now();
  const SteadyTime deadline = started + options_.transfer_timeout;
  *reply_seen = false;

  const int32_t num_blocks = (num_tokens + block_size - 1) / block_size;
  std::string frame;
  frame.append(kMagic, 4);
  Put<uint16_t>(frame, kVersion);
  Put<uint16_t>(frame, static_cast<uint16_t>(options_.token.size()));
  frame += options_.token;
  Put<uint64_t>(frame, destination.reservation_id);
  Put<uint32_t>(frame, static_cast<uint32_t>(num_tokens));
  Put<uint32_t>(frame, static_cast<uint32_t>(num_blocks));
  Status s = WriteAll(fd, frame.data(), frame.size(), options_.io_timeout, deadline);
  KvTransferStats stats;
  std::string payload;
  for (int32_t i = 0; s.ok() && i < num_blocks; ++i) {
    if (options_.fault_delay_per_block.count() > 0) {
      std::this_thread::sleep_for(options_.fault_delay_per_block);
    }
    const int32_t tokens = std::min(block_size, num_tokens - i * block_size);
    payload.clear();
    s = read(i, tokens, &payload);
    if (!s.ok()) break;
    frame.clear();
    Put<uint32_t>(frame, static_cast<uint32_t>(i));
    Put<uint32_t>(frame, static_cast<uint32_t>(tokens));
    Put<uint32_t>(frame, static_cast<uint32_t>(payload.size()));
    Put<uint32_t>(frame, Crc32c(payload));
    s = WriteAll(fd, frame.data(), frame.size(), options_.io_timeout, deadline);
    if (s.ok()) s = WriteAll(fd, payload.data(), payload.size(), options_.io_timeout, deadline);
    stats.bytes += static_cast<int64_t>(payload.size());
  }
  // The receiver answers after the last block, or early when it refuses the transfer; read the
  // reply even after a write error, it says why.
  char head[3];
  Status r = ReadAll(fd, head, 3, options_.io_timeout, deadline);
  *reply_seen = r.ok();
  if (!r.ok())
    return s.ok() ? Status::Unavailable("no reply from KV receiver " + destination.address + ": " +
                                        r.message())
                  : s;
  std::string message(Get<uint16_t>(head + 1), '\0');
  if (!message.empty()) {
    Status m = ReadAll(fd, message.data(), message.size(), options_.io_timeout, deadline);
    if (!m.ok()) message = "(unreadable reply)";
  }
  if (head[0] != 0) {
    return Status::Unavailable("KV receiver " + destination.address + " refused: " + message);
  }
  if (!s.ok()) return s;
  stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  return stats;
}

TcpKvReceiver::TcpKvReceiver(TcpKvOptions options, KvSink* sink)
    : options_(std::move(options)), sink_(sink) {}

TcpKvReceiver::~TcpKvReceiver() { Stop(); }

Status TcpKvReceiver::Start(const std::string& host, int port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* res = nullptr;
  const std::string port_str = std::to_string(port);
  if (int rc = ::getaddrinfo(host.c_str(), port_str.c_str(), &hints, &res); rc != 0) {
    return Status::InvalidArgument("KV listen address " + host + ": " + ::gai_strerror(rc));
  }
  int fd = ::socket(res->ai_family, res->ai_socktype, res->ai_protocol);
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (fd < 0 || ::bind(fd, res->ai_addr, res->ai_addrlen) != 0 || ::listen(fd, 128) != 0) {
    const std::string err = std::strerror(errno);
    ::freeaddrinfo(res);
    if (fd >= 0) ::close(fd);
    return Status::Unavailable("KV receiver cannot listen on " + host + ":" + port_str + ": " +
                               err);
  }
  ::freeaddrinfo(res);
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  port_ = ntohs(addr.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port
                                           : reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
  listen_fd_ = fd;
  accept_thread_ = std::thread([this] { AcceptLoop(); });
  return Status::Ok();
}

void TcpKvReceiver::Stop() {
  if (stopping_.exchange(true)) return;
  if (listen_fd_ >= 0) ::shutdown(listen_fd_, SHUT_RDWR);
  if (accept_thread_.joinable()) accept_thread_.join();
  if (listen_fd_ >= 0) ::close(listen_fd_);
  listen_fd_ = -1;
  std::lock_guard lock(mu_);
  for (Connection& c : connections_) ::shutdown(c.fd, SHUT_RDWR);
  for (Connection& c : connections_) {
    if (c.thread.joinable()) c.thread.join();
  }
  connections_.clear();
}

void TcpKvReceiver::AcceptLoop() {
  while (!stopping_) {
    pollfd p{listen_fd_, POLLIN, 0};
    int r = ::poll(&p, 1, 200);
    {
      // Reap finished connections.
      std::lock_guard lock(mu_);
      for (auto it = connections_.begin(); it != connections_.end();) {
        if (it->done) {
          it->thread.join();
          it = connections_.erase(it);
        } else {
          ++it;
        }
      }
    }
    if (r <= 0 || stopping_) continue;
    int fd = ::accept(listen_fd_, nullptr, nullptr);
    if (fd < 0) continue;
    net::SetSocketOptions(fd);
    std::lock_guard lock(mu_);
    Connection& c = connections_.emplace_back();
    c.fd = fd;
    c.thread = std::thread([this, &c] {
      Serve(c.fd);
      ::close(c.fd);
      c.done = true;
    });
  }
}

void TcpKvReceiver::AddProtocol(const std::string& magic, ConnectionHandler handler) {
  protocols_[magic] = std::move(handler);
}

void TcpKvReceiver::Serve(int fd) {
  // The first four bytes say which protocol the connection speaks: the tcp data stream, or a
  // GPU transport's control channel (AddProtocol), which then owns the connection.
  char magic[4];
  if (!ReadAll(fd, magic, 4, options_.io_timeout,
               std::chrono::steady_clock::now() + options_.io_timeout)
           .ok()) {
    return;
  }
  if (std::memcmp(magic, kMagic, 4) != 0) {
    auto it = protocols_.find(std::string(magic, 4));
    if (it != protocols_.end()) {
      it->second(fd);
    } else {
      (void)SendReply(fd, Status::InvalidArgument("not a pdpool KV transfer (bad magic)"),
                      options_.io_timeout);
    }
    return;
  }
  // Senders keep connections open between transfers; one transfer after another until the
  // sender closes, an idle connection times out, or a transfer fails.
  bool first = true;
  while (!stopping_ && ServeOne(fd, first)) first = false;
}

bool TcpKvReceiver::ServeOne(int fd, bool first) {
  const auto idle = options_.io_timeout;
  char head[8];
  if (first) {
    // Serve read the magic already.
    std::memcpy(head, kMagic, 4);
    if (!ReadAll(fd, head + 4, 4, idle, std::chrono::steady_clock::now() + idle).ok()) {
      return false;
    }
  } else {
    // Between transfers, wait as long as a pooled connection may stay idle.
    const auto hello_wait = options_.keepalive_idle;
    if (!ReadAll(fd, head, 8, hello_wait, std::chrono::steady_clock::now() + hello_wait).ok()) {
      return false;  // closed or idle: nothing to undo
    }
  }
  const SteadyTime deadline = std::chrono::steady_clock::now() + options_.transfer_timeout;
  if (std::memcmp(head, kMagic, 4) != 0 || Get<uint16_t>(head + 4) != kVersion) {
    (void)SendReply(fd, Status::InvalidArgument("not a pdpool KV transfer (bad magic/version)"),
                    idle);
    return false;
  }
  std::string token(Get<uint16_t>(head + 6), '\0');
  char rest[16];
  if (!ReadAll(fd, token.data(), token.size(), idle, deadline).ok() ||
      !ReadAll(fd, rest, 16, idle, deadline).ok()) {
    return false;
  }
  if (!ConstantTimeEquals(token, options_.token)) {
    LogWarn("KV transfer refused: bad token");
    (void)SendReply(fd, Status::Unauthorized("bad pool token"), idle);
    return false;
  }
  const uint64_t reservation = Get<uint64_t>(rest);
  const int32_t num_tokens = static_cast<int32_t>(Get<uint32_t>(rest + 8));
  const uint32_t num_blocks = Get<uint32_t>(rest + 12);
  if (num_blocks == 0 || num_blocks > kMaxBlocks) {
    (void)SendReply(fd, Status::InvalidArgument("bad block count " + std::to_string(num_blocks)),
                    idle);
    return false;
  }
  Status s = sink_->Begin(reservation, num_tokens, static_cast<int32_t>(num_blocks));
  if (!s.ok()) {
    (void)SendReply(fd, s, idle);
    return false;
  }
  std::string payload;
  for (uint32_t i = 0; s.ok() && i < num_blocks; ++i) {
    char frame[16];
    s = ReadAll(fd, frame, 16, idle, deadline);
    if (!s.ok()) break;
    const uint32_t index = Get<uint32_t>(frame);
    const int32_t tokens = static_cast<int32_t>(Get<uint32_t>(frame + 4));
    const uint32_t len = Get<uint32_t>(frame + 8);
    const uint32_t crc = Get<uint32_t>(frame + 12);
    if (index != i || len > kMaxPayload) {
      s = Status::InvalidArgument("bad frame: block " + std::to_string(index) + " (expected " +
                                  std::to_string(i) + "), " + std::to_string(len) + " bytes");
      break;
    }
    payload.resize(len);
    s = ReadAll(fd, payload.data(), len, idle, deadline);
    if (!s.ok()) break;
    if (Crc32c(payload) != crc) {
      s = Status::InvalidArgument("checksum mismatch in block " + std::to_string(i));
      break;
    }
    s = sink_->WriteBlock(reservation, static_cast<int32_t>(i), tokens, payload);
  }
  if (s.ok()) s = sink_->Commit(reservation);
  if (!s.ok()) {
    sink_->Abort(reservation, s);
    LogWarn("KV transfer failed", {{"reservation", reservation}, {"error", s.ToString()}});
  }
  const bool replied = SendReply(fd, s, idle).ok();
  return replied && s.ok();
}

}  // namespace pdpool::agent
