// KV transport interfaces: how a prefill worker pushes a prompt's KV blocks into the blocks a
// decode worker reserved for it (DESIGN.md, Data flow step 4). Implementations are named after
// their technology: TcpKvSender/TcpKvReceiver here; cuda-ipc and nccl come with the CUDA engine.
// Senders are thread-safe (one transfer per call); a receiver calls its KvSink from its own
// threads, one transfer per thread.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace pdpool::agent {

// Where a prompt's KV goes: the reservation a decode worker made for it.
struct KvDestination {
  std::string transport = "tcp";
  std::string address;  // host:port of the decode worker's KV receiver
  uint64_t reservation_id = 0;
  std::vector<int32_t> blocks;  // the decode worker's block ids (informational for tcp)
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
};

}  // namespace pdpool::agent
