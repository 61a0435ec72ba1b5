// KV transport interfaces: how a prefill worker pushes a prompt's KV blocks into the blocks a
// decode worker reserved for it (DESIGN.md, Data flow step 4). Implementations are named after
// their technology: TcpKvSender/TcpKvReceiver (host bytes over TCP, any backend), and the GPU
// transports, which copy blocks device to device between the two workers' DeviceKvRegions:
// CudaIpcKvSender (one GPU, two processes) and NcclKvSender (GPUs of one NVLink domain), each
// with a control channel on the decode worker's tcp KV port. kv_transport_select.h picks one.
// Senders are thread-safe (one transfer per call); a receiver calls its KvSink from its own
// threads, one transfer per thread.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "agent/engine/device_kv.h"
#include "common/status.h"

namespace pdpool::agent {

// What one worker's KV cache can do in a handoff: where it lives and which GPU transports it
// offers. The decode worker advertises its own in the reservation reply (worker_protocol.h,
// "transports"); the prefill worker compares it with its own to pick a transport.
struct KvEndpoint {
  std::string device_uuid;    // "GPU-<uuid>"; empty: the KV cache is in host memory
  std::string node;           // Kubernetes node name ($PDPOOL_NODE_NAME); empty: unknown
  std::string nvlink_domain;  // NVLink domain / clique ($PDPOOL_NVLINK_DOMAIN); empty: unknown
  int64_t block_bytes = 0;    // bytes of one KV block in device memory
  int32_t num_blocks = 0;     // blocks of the region (bounds for a writer)
  bool cuda_ipc = false;      // offers cuda-ipc (ipc_handle set on the receiving side)
  std::string ipc_handle;     // cudaIpcMemHandle_t of the region's allocation, hex
  bool nccl = false;          // offers nccl
};

// Where a prompt's KV goes: the reservation a decode worker made for it.
struct KvDestination {
  std::string transport = "tcp";
  std::string address;  // host:port of the decode worker's KV receiver (and GPU control channel)
  uint64_t reservation_id = 0;
  std::vector<int32_t> blocks;  // the decode worker's block ids (GPU transports write these)
  KvEndpoint peer;              // the decode worker's KV cache and GPU transports
};

struct KvTransferStats {
  int64_t bytes = 0;  // payload bytes moved
  double seconds = 0;
};

// Reads block `index` (0-based within the transfer) holding `tokens` token slots.
using KvBlockReader = std::function<Status(int32_t index, int32_t tokens, std::string* payload)>;

class KvSender {
 public:
  virtual ~KvSender() = default;
  // Sends num_tokens tokens of KV in ceil(num_tokens / block_size) blocks; returns once the
  // receiver has committed them (so a decode request may follow).
  virtual StatusOr<KvTransferStats> Send(const KvDestination& destination, int32_t num_tokens,
                                         int32_t block_size, const KvBlockReader& read) = 0;
};

// A GPU transport's sender: copies the prefill worker's blocks `blocks` (in transfer order) of
// its device region into the destination's reserved blocks, device to device, and returns once
// the receiver has committed them. stats.bytes counts the bytes copied (whole blocks).
class KvDeviceSender {
 public:
  virtual ~KvDeviceSender() = default;
  virtual StatusOr<KvTransferStats> Send(const KvDestination& destination,
                                         const DeviceKvRegion& source,
                                         const std::vector<int32_t>& blocks,
                                         int32_t num_tokens) = 0;
};

// The receiving worker's side of a transfer.
class KvSink {
 public:
  virtual ~KvSink() = default;
  virtual Status Begin(uint64_t reservation, int32_t num_tokens, int32_t num_blocks) = 0;
  virtual Status WriteBlock(uint64_t reservation, int32_t index, int32_t tokens,
                            std::string_view payload) = 0;
  virtual Status Commit(uint64_t reservation) = 0;
  // The transfer broke (sender gone, timeout, bad checksum): free what was reserved.
  virtual void Abort(uint64_t reservation, const Status& why) = 0;

  // GPU transports write the blocks themselves, between Begin and Commit:
  // the KV cache in device memory (nullptr: host memory only, no GPU transport can write it),
  virtual const DeviceKvRegion* DeviceRegion() { return nullptr; }
  // the reservation's block ids in transfer order (after a successful Begin),
  virtual StatusOr<std::vector<int32_t>> ReservedBlocks(uint64_t /*reservation*/) {
    return Status::Internal("this worker's KV cache takes no device-to-device transfers");
  }
  // and the bytes they copied into it (metrics), before Commit.
  virtual void CountBytes(uint64_t /*reservation*/, int64_t /*bytes*/) {}
};

}  // namespace pdpool::agent
