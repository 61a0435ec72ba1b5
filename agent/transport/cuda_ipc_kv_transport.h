// The `cuda-ipc` KV transport: a prefill and a decode worker on one GPU (two processes). The
// decode worker exports its KV region once (cudaIpcGetMemHandle) and advertises the handle in
// its reservation reply; the prefill worker opens it once per peer (cached by handle) and copies
// its blocks straight into the reserved blocks (cudaMemcpyAsync device to device, then an event
// recorded after the copies and waited on), then commits over a TCP control channel on the
// decode worker's KV port (TcpKvReceiver::AddProtocol(kCudaIpcKvMagic)), so the decode
// worker's next step reads complete blocks. The device side is behind KvIpc (kv_ipc.h: CUDA in
// agent/engine/cuda/, a fake in tests). Wire format (little-endian; "reply" is socket_io.h's
// status reply, u8 status (0 ok) u16 message_len message):
//   hello:  "PDKI" u16 version=1 u16 token_len token              → reply (token, GPU KV)
//   begin:  u8 op=1 u64 reservation u32 num_tokens u32 num_blocks u64 block_bytes
//           u32 block_id × num_blocks (the decode blocks the sender will write, in order)
//           → reply: ok once the reservation is checked, held, and holds exactly those blocks
//   (the sender copies)
//   commit: u8 op=2 u64 reservation u64 bytes_copied              → reply (committed)
//   abort:  u8 op=3 u64 reservation   (the copy failed)           → reply (reservation freed)
// A control connection that closes or times out between begin and commit aborts the
// reservation. Connections carry one transfer after another (senders pool idle ones).
// Known limit: a prefill process killed mid-copy may have copies in flight when the decode
// worker frees the blocks; its CUDA context teardown ends them, but not necessarily before the
// control connection closes.
// CudaIpcKvSender is thread-safe; CudaIpcKvReceiver serves each connection on the caller's
// thread.
#pragma once

#include <atomic>
#include <chrono>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "agent/transport/kv_ipc.h"
#include "agent/transport/kv_transport.h"
#include "agent/transport/socket_io.h"

namespace pdpool::agent {

inline constexpr const char* kCudaIpcKvMagic = "PDKI";

struct CudaIpcKvOptions {
  std::string token;                                    // the pool's shared secret
  std::chrono::milliseconds io_timeout{10'000};         // longest wait for any control message
  std::chrono::milliseconds transfer_timeout{120'000};  // begin to commit
  std::chrono::milliseconds keepalive_idle{60'000};     // receiver: idle connection lifetime
  int max_idle_per_peer = 16;                           // sender: pooled connections per peer
};

// The copies that move `src_blocks` of `source` into `dst_blocks` of a peer region with the same
// block size: one per run of blocks consecutive on both sides.
std::vector<IpcCopy> BlockCopies(const DeviceKvRegion& source,
                                 const std::vector<int32_t>& src_blocks,
                                 const std::vector<int32_t>& dst_blocks);

class CudaIpcKvSender final : public KvDeviceSender {
 public:
  // `ipc` outlives the sender.
  CudaIpcKvSender(CudaIpcKvOptions options, KvIpc* ipc)
      : options_(std::move(options)), ipc_(ipc), idle_(options_.max_idle_per_peer) {}
  StatusOr<KvTransferStats> Send(const KvDestination& destination, const DeviceKvRegion& source,
                                 const std::vector<int32_t>& blocks, int32_t num_tokens) override;

 private:
  StatusOr<KvTransferStats> Transfer(int fd, const KvDestination& destination,
                                     const DeviceKvRegion& source,
                                     const std::vector<int32_t>& blocks, int32_t num_tokens,
                                     bool* unanswered);

  CudaIpcKvOptions options_;
  KvIpc* ipc_;
  net::IdleConnections idle_;
};

class CudaIpcKvReceiver {
 public:
  // `sink` outlives the receiver.
  CudaIpcKvReceiver(CudaIpcKvOptions options, KvSink* sink)
      : options_(std::move(options)), sink_(sink) {}
  // Serves one control connection whose magic (kCudaIpcKvMagic) was read already; returns when
  // the sender closes it, it idles out, or the protocol breaks. The caller closes fd.
  void ServeConnection(int fd);

 private:
  CudaIpcKvOptions options_;
  KvSink* sink_;
};

}  // namespace pdpool::agent
