// Blocking-with-deadline I/O on non-blocking TCP sockets, shared by the KV transports' wire
// protocols (tcp data stream, and the control channels of cuda-ipc and nccl): connect with a
// timeout, read/write all bytes before the earlier of an idle timeout and a deadline,
// little-endian integer framing, and the one-byte status reply every KV protocol ends with
// (u8 status (0 ok) u16 message_len message). Pure functions on file descriptors: thread-safe
// as long as one fd is used by one thread at a time.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/status.h"

namespace pdpool::agent::net {

using SteadyTime = std::chrono::steady_clock::time_point;

// Waits for fd to become readable (POLLIN) or writable (POLLOUT) before the earlier of the idle
// timeout and the deadline.
Status WaitFd(int fd, short events, std::chrono::milliseconds idle, SteadyTime deadline);
Status WriteAll(int fd, const char* data, size_t n, std::chrono::milliseconds idle,
                SteadyTime deadline);
Status ReadAll(int fd, char* data, size_t n, std::chrono::milliseconds idle, SteadyTime deadline);

// TCP_NODELAY and O_NONBLOCK.
void SetSocketOptions(int fd);
// Connects to "host:port" ("[v6]:port" too) within `timeout`.
StatusOr<int> Connect(const std::string& address, std::chrono::milliseconds timeout);
// The peer closed the connection, or it failed: readable with nothing to read, or an error.
// For idle pooled connections, where nothing is expected.
bool PeerClosed(int fd);

// Equal and non-empty, in time independent of where they differ.
bool ConstantTimeEquals(std::string_view a, std::string_view b);

template <typename T>
void Put(std::string& out, T v) {
  char bytes[sizeof(T)];
  for (size_t i = 0; i < sizeof(T); ++i) bytes[i] = static_cast<char>((v >> (8 * i)) & 0xFF);
  out.append(bytes, sizeof(T));
}

template <typename T>
T Get(const char* p) {
  T v = 0;
  for (size_t i = 0; i < sizeof(T); ++i)
    v |= static_cast<T>(static_cast<unsigned char>(p[i])) << (8 * i);
  return v;
}

// The status reply: u8 status (0 ok) u16 message_len message (the Status text, at most 1000
// bytes).
Status SendStatusReply(int fd, const Status& status, std::chrono::milliseconds idle);
// Reads a status reply. The transport error (connection closed, timeout) is the result's status;
// the peer's verdict is *verdict (ok, or Unavailable with the peer's message).
Status ReadStatusReply(int fd, std::chrono::milliseconds idle, SteadyTime deadline,
                       Status* verdict);

// Connections a sender keeps open per peer address for its next transfers, at most
// max_per_peer each (more are closed). Take drops, on the way, any the peer has closed.
// Closes what it holds when destroyed. Thread-safe.
class IdleConnections {
 public:
  explicit IdleConnections(int max_per_peer) : max_per_peer_(max_per_peer) {}
  IdleConnections(const IdleConnections&) = delete;
  IdleConnections& operator=(const IdleConnections&) = delete;
  ~IdleConnections();

  int Take(const std::string& address);  // an open connection, or -1
  void GiveBack(const std::string& address, int fd);

 private:
  const int max_per_peer_;
  std::mutex mu_;
  std::unordered_map<std::string, std::vector<int>> idle_;
};

}  // namespace pdpool::agent::net
