// The `tcp` KV transport: a stream of length-prefixed, CRC-32C-checksummed block frames over one
// TCP connection per transfer, authenticated by the pool token, with an idle timeout on every
// read and write and a deadline for the whole transfer. Wire format (little-endian):
//   hello:  "PDKV" u16 version=1 u16 token_len token u64 reservation u32 num_tokens u32 num_blocks
//   block:  u32 index u32 tokens u32 payload_len u32 crc32c(payload) payload     (num_blocks ×)
//   reply:  u8 status (0 ok) u16 message_len message         (after the last block, or on error)
// Connections that start with another magic go to the protocol registered for it (AddProtocol:
// the control channels of the cuda-ipc and nccl transports).
// A connection carries one transfer after another: senders keep a few idle connections per
// receiver (no connect + accept + thread per request), receivers close them after
// keepalive_idle without a transfer.
// TcpKvSender is thread-safe; TcpKvReceiver serves each connection on its own thread.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "agent/transport/kv_transport.h"
#include "agent/transport/socket_io.h"

namespace pdpool::agent {

struct TcpKvOptions {
  std::string token;                                    // the pool's shared secret
  std::chrono::milliseconds io_timeout{10'000};         // longest wait for any read or write
  std::chrono::milliseconds transfer_timeout{120'000};  // whole transfer
  std::chrono::milliseconds keepalive_idle{60'000};     // receiver: idle connection lifetime
  int max_idle_per_peer = 16;                           // sender: pooled connections per peer
  // Fault injection for tests of broken transfers: the sender sleeps this long before each block.
  std::chrono::milliseconds fault_delay_per_block{0};
};

class TcpKvSender final : public KvSender {
 public:
  explicit TcpKvSender(TcpKvOptions options)
      : options_(std::move(options)), idle_(options_.max_idle_per_peer) {}
  StatusOr<KvTransferStats> Send(const KvDestination& destination, int32_t num_tokens,
                                 int32_t block_size, const KvBlockReader& read) override;
  // Connections opened so far (tests: pooled connections are reused).
  int connections_opened() const { return connections_opened_.load(); }

 private:
  // One transfer on `fd`; *reply_seen tells whether the receiver answered at all.
  StatusOr<KvTransferStats> Transfer(int fd, const KvDestination& destination, int32_t num_tokens,
                                     int32_t block_size, const KvBlockReader& read,
                                     bool* reply_seen);

  TcpKvOptions options_;
  net::IdleConnections idle_;
  std::atomic<int> connections_opened_{0};
};

class TcpKvReceiver {
 public:
  TcpKvReceiver(TcpKvOptions options, KvSink* sink);
  ~TcpKvReceiver();

  // Serves connections whose first four bytes are `magic` with `handler` (the control channel of
  // a GPU transport shares the tcp transport's port): it owns the connection, which is closed
  // when it returns; Stop() shuts the connection down under it. Call before Start.
  using ConnectionHandler = std::function<void(int fd)>;
  void AddProtocol(const std::string& magic, ConnectionHandler handler);

  // Listens on host:port (0: any free port, see port()).
  Status Start(const std::string& host, int port);
  void Stop();
  int port() const { return port_; }

 private:
  void AcceptLoop();
  void Serve(int fd);
  // One transfer; false when the connection should close.
  bool ServeOne(int fd, bool first);

  TcpKvOptions options_;
  KvSink* sink_;
  std::unordered_map<std::string, ConnectionHandler> protocols_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stopping_{false};
  std::thread accept_thread_;
  std::mutex mu_;
  struct Connection {
    int fd;
    std::thread thread;
    std::atomic<bool> done{false};
  };
  std::list<Connection> connections_;
};

}  // namespace pdpool::agent
