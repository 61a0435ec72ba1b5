// The `nccl` KV transport: a prefill worker ncclSend's its KV blocks straight from its GPU into
// the blocks a decode worker on another GPU of the same NVLink domain reserved, where the decode
// worker has posted the matching ncclRecv's. The protocol runs over a TCP control channel on the
// decode worker's KV port (TcpKvReceiver::AddProtocol(kNcclKvMagic)); the data moves through a
// two-rank communicator (KvCommunicator: NCCL in agent/engine/cuda/, a fake in tests), set up
// once per peer and kept with its channel. Wire format (little-endian, socket_io.h's status
// reply "reply" = u8 status (0 ok) u16 message_len message):
//   hello:  "PDKN" u16 version=1 u16 token_len token u16 id_len unique_id   (sender = rank 0)
//           → reply (pool token checked, receiver has GPU KV)  — then both join the
//           communicator (receiver = rank 1) → reply (the receiver's join)
//   begin:  u8 op=1 u64 reservation u32 num_tokens u32 num_blocks u64 block_bytes
//           → reply: ok once the receiver checked the reservation and posted one ncclRecv per
//           reserved block (grouped, in block order); a refusal posts nothing
//   the sender posts one ncclSend per block (grouped, same order) and waits for them
//           → reply after the receives completed and the reservation was committed
// Transfers on one channel run one at a time, so both ranks post in the same order. A failure
// mid-transfer (peer gone, timeout, NCCL error) aborts the communicator on both sides (the
// channel closes) and the receiver aborts the reservation, freeing its blocks.
// Multi-node NVLink (GB200 NVL72): NCCL reaches GPUs of other trays of the rack through NVLink
// when NCCL_MNNVL=1 (its default, auto, enables it when the fabric is there); set it in the pod
// environment (spec.template) to force it on or off. NCCL's bootstrap connects the decode worker
// to the prefill worker's address (NCCL_SOCKET_IFNAME picks the interface).
// NcclKvSender is thread-safe; NcclKvReceiver serves each connection on the caller's thread.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "agent/transport/kv_communicator.h"
#include "agent/transport/kv_transport.h"

namespace pdpool::agent {

inline constexpr const char* kNcclKvMagic = "PDKN";

struct NcclKvOptions {
  std::string token;                                    // the pool's shared secret
  std::chrono::milliseconds io_timeout{10'000};         // longest wait for any control message
  std::chrono::milliseconds transfer_timeout{120'000};  // whole transfer
  std::chrono::milliseconds setup_timeout{60'000};      // joining a communicator
  // Receiver: how long an idle channel (and its communicator) stays open.
  std::chrono::milliseconds keepalive_idle{600'000};
};

class NcclKvSender final : public KvDeviceSender {
 public:
  // `factory` outlives the sender.
  NcclKvSender(NcclKvOptions options, KvCommunicatorFactory* factory);
  ~NcclKvSender() override;
  StatusOr<KvTransferStats> Send(const KvDestination& destination, const DeviceKvRegion& source,
                                 const std::vector<int32_t>& blocks, int32_t num_tokens) override;
  // Communicators set up so far (tests: one per peer, reused).
  int communicators_created() const { return communicators_created_.load(); }

 private:
  struct Channel;
  // Sets up a channel (control connection + communicator) to `address`. channel->mu held.
  Status Open(Channel* channel, const std::string& address, int device);
  // One transfer on an open channel. *broken: the channel is unusable afterwards;
  // *unanswered: the receiver never answered the begin (a stale channel).
  StatusOr<KvTransferStats> Transfer(Channel* channel, const KvDestination& destination,
                                     const DeviceKvRegion& source,
                                     const std::vector<int32_t>& blocks, int32_t num_tokens,
                                     bool* broken, bool* unanswered);

  NcclKvOptions options_;
  KvCommunicatorFactory* factory_;
  std::mutex mu_;
  std::unordered_map<std::string, std::shared_ptr<Channel>> channels_;
  std::atomic<int> communicators_created_{0};
};

class NcclKvReceiver {
 public:
  // `factory` and `sink` outlive the receiver.
  NcclKvReceiver(NcclKvOptions options, KvCommunicatorFactory* factory, KvSink* sink);
  // Serves one control connection whose magic (kNcclKvMagic) was read already; returns when the
  // sender closes it, it idles out, or a transfer fails. The caller closes fd.
  void ServeConnection(int fd);
  // Communicators joined so far (tests).
  int communicators_joined() const { return communicators_joined_.load(); }

 private:
  NcclKvOptions options_;
  KvCommunicatorFactory* factory_;
  KvSink* sink_;
  std::atomic<int> communicators_joined_{0};
};

}  // namespace pdpool::agent
