// The cuda-ipc KV transport's protocol: see cuda_ipc_kv_transport.h.
#include "agent/transport/cuda_ipc_kv_transport.h"

#include <unistd.h>

#include "agent/transport/gpu_channel.h"
#include "agent/transport/socket_io.h"
#include "common/log.h"

namespace pdpool::agent {
namespace {

constexpr uint16_t kVersion = 1;
constexpr uint8_t kOpBegin = 1;
constexpr uint8_t kOpCommit = 2;
constexpr uint8_t kOpAbort = 3;
constexpr uint32_t kMaxBlocks = 1u << 20;

using net::Get;
using net::Put;
using net::ReadAll;
using net::SteadyTime;
using net::WriteAll;
using SteadyClock = std::chrono::steady_clock;

Status Refusal(const std::string& peer, const Status& verdict) {
  return Status::Unavailable("KV receiver " + peer + " refused: " + verdict.message());
}

}  // namespace

std::vector<IpcCopy> BlockCopies(const DeviceKvRegion& source,
                                 const std::vector<int32_t>& src_blocks,
                                 const std::vector<int32_t>& dst_blocks) {
  std::vector<IpcCopy> copies;
  const int64_t bb = source.block_bytes;
  for (size_t i = 0; i < src_blocks.size() && i < dst_blocks.size(); ++i) {
    if (!copies.empty() && i > 0 && src_blocks[i] == src_blocks[i - 1] + 1 &&
        dst_blocks[i] == dst_blocks[i - 1] + 1) {
      copies.back().bytes += bb;
      continue;
    }
    copies.push_back({source.base + static_cast<uintptr_t>(src_blocks[i]) * bb,
                      static_cast<int64_t>(dst_blocks[i]) * bb, bb});
  }
  return copies;
}

StatusOr<KvTransferStats> CudaIpcKvSender::Send(const KvDestination& destination,
                                                const DeviceKvRegion& source,
                                                const std::vector<int32_t>& blocks,
                                                int32_t num_tokens) {
  const KvEndpoint& peer = destination.peer;
  const std::string& address = destination.address;
  if (num_tokens < 1 || blocks.empty()) {
    return Status::InvalidArgument("nothing to send: " + std::to_string(num_tokens) + " tokens");
  }
  if (!peer.cuda_ipc || peer.ipc_handle.empty()) {
    return Status::InvalidArgument("decode worker " + address +
                                   " offers no cuda-ipc handle for its KV cache");
  }
  if (peer.device_uuid != source.device_uuid) {
    return Status::InvalidArgument(
        "cuda-ipc needs both workers on one GPU: the decode worker's KV cache is on " +
        (peer.device_uuid.empty() ? std::string("(no GPU)") : peer.device_uuid) +
        ", this worker's on " + source.device_uuid);
  }
  if (source.block_bytes <= 0 || source.block_size <= 0 || peer.block_bytes != source.block_bytes) {
    return Status::InvalidArgument(
        "KV blocks differ: this worker's are " + std::to_string(source.block_bytes) +
        " bytes, the decode worker's " + std::to_string(peer.block_bytes));
  }
  const int64_t expected = (num_tokens + source.block_size - 1) / source.block_size;
  if (static_cast<int64_t>(blocks.size()) != expected ||
      destination.blocks.size() != blocks.size()) {
    return Status::InvalidArgument(std::to_string(num_tokens) + " tokens need " +
                                   std::to_string(expected) + " blocks; this worker holds " +
                                   std::to_string(blocks.size()) + ", the reservation names " +
                                   std::to_string(destination.blocks.size()));
  }
  for (size_t i = 0; i < blocks.size(); ++i) {
    if (blocks[i] < 0 || blocks[i] >= source.num_blocks || destination.blocks[i] < 0 ||
        destination.blocks[i] >= peer.num_blocks) {
      return Status::InvalidArgument(
          "block " + std::to_string(i) + " (" + std::to_string(blocks[i]) + " → " +
          std::to_string(destination.blocks[i]) + ") is outside a KV region");
    }
  }
  // A pooled connection first; if the receiver had closed it before answering, once more on a
  // fresh one.
  for (int attempt = 0; attempt < 2; ++attempt) {
    int fd = attempt == 0 ? idle_.Take(address) : -1;
    const bool reused = fd >= 0;
    if (!reused) {
      auto fd_or = net::Connect(address, options_.io_timeout);
      if (!fd_or.ok()) return fd_or.status();
      fd = *fd_or;
      std::string hello(kCudaIpcKvMagic, 4);
      Put<uint16_t>(hello, kVersion);
      Put<uint16_t>(hello, static_cast<uint16_t>(options_.token.size()));
      hello += options_.token;
      const SteadyTime deadline = SteadyClock::now() + options_.io_timeout;
      Status verdict;
      Status s = WriteAll(fd, hello.data(), hello.size(), options_.io_timeout, deadline);
      if (s.ok()) s = net::ReadStatusReply(fd, options_.io_timeout, deadline, &verdict);
      if (s.ok() && !verdict.ok()) s = Refusal(address, verdict);
      if (!s.ok()) {
        ::close(fd);
        return s;
      }
    }
    bool unanswered = false;
    auto stats = Transfer(fd, destination, source, blocks, num_tokens, &unanswered);
    if (stats.ok()) {
      idle_.GiveBack(address, fd);
      return stats;
    }
    ::close(fd);
    if (!reused || !unanswered) return stats;
  }
  return Status::Internal("unreachable");
}

StatusOr<KvTransferStats> CudaIpcKvSender::Transfer(int fd, const KvDestination& destination,
                                                    const DeviceKvRegion& source,
                                                    const std::vector<int32_t>& blocks,
                                                    int32_t num_tokens, bool* unanswered) {
  const auto started = SteadyClock::now();
  const SteadyTime deadline = started + options_.transfer_timeout;
  const std::string& address = destination.address;
  std::string begin;
  Put<uint8_t>(begin, kOpBegin);
  Put<uint64_t>(begin, destination.reservation_id);
  Put<uint32_t>(begin, static_cast<uint32_t>(num_tokens));
  Put<uint32_t>(begin, static_cast<uint32_t>(blocks.size()));
  Put<uint64_t>(begin, static_cast<uint64_t>(source.block_bytes));
  for (int32_t b : destination.blocks) Put<uint32_t>(begin, static_cast<uint32_t>(b));
  Status verdict;
  Status s = WriteAll(fd, begin.data(), begin.size(), options_.io_timeout, deadline);
  if (s.ok()) s = net::ReadStatusReply(fd, options_.io_timeout, deadline, &verdict);
  if (!s.ok()) {
    *unanswered = true;
    return Status::Unavailable("cuda-ipc control channel to " + address + ": " + s.message());
  }
  if (!verdict.ok()) return Refusal(address, verdict);

  // The reservation is held for us: write its blocks.
  const std::vector<IpcCopy> copies = BlockCopies(source, blocks, destination.blocks);
  const Status copied = ipc_->Copy(destination.peer.ipc_handle, source.device, copies);
  const int64_t bytes = static_cast<int64_t>(blocks.size()) * source.block_bytes;
  std::string end;
  Put<uint8_t>(end, copied.ok() ? kOpCommit : kOpAbort);
  Put<uint64_t>(end, destination.reservation_id);
  if (copied.ok()) Put<uint64_t>(end, static_cast<uint64_t>(bytes));
  s = WriteAll(fd, end.data(), end.size(), options_.io_timeout, deadline);
  if (s.ok()) s = net::ReadStatusReply(fd, options_.io_timeout, deadline, &verdict);
  if (!copied.ok()) {
    // The handle may be stale (the decode worker restarted): open it afresh next time.
    ipc_->Close(destination.peer.ipc_handle);
    return Status::Unavailable("cuda-ipc copy into " + address + " failed: " + copied.message());
  }
  if (!s.ok()) {
    return Status::Unavailable("no commit reply from KV receiver " + address + ": " + s.message());
  }
  if (!verdict.ok()) {
    return Status::Unavailable("KV receiver " + address +
                               " failed the commit: " + verdict.message());
  }
  KvTransferStats stats;
  stats.bytes = bytes;
  stats.seconds = std::chrono::duration<double>(SteadyClock::now() - started).count();
  return stats;
}

void CudaIpcKvReceiver::ServeConnection(int fd) {
  const auto idle = options_.io_timeout;
  char head[4];
  if (!ReadAll(fd, head, 4, idle, SteadyClock::now() + idle).ok()) return;
  if (Get<uint16_t>(head) != kVersion) {
    (void)net::SendStatusReply(fd,
                               Status::InvalidArgument("cuda-ipc KV protocol version " +
                                                       std::to_string(Get<uint16_t>(head)) +
                                                       " is not " + std::to_string(kVersion)),
                               idle);
    return;
  }
  std::string token(Get<uint16_t>(head + 2), '\0');
  if (!ReadAll(fd, token.data(), token.size(), idle, SteadyClock::now() + idle).ok()) return;
  const DeviceKvRegion* region =
      AdmitGpuChannel(fd, token, options_.token, sink_, "cuda-ipc", idle);
  if (region == nullptr) return;

  // The reservation between a begin and its commit or abort.
  bool open = false;
  uint64_t reservation = 0;
  SteadyTime deadline{};
  auto abort_open = [&](const Status& why) {
    if (!open) return;
    sink_->Abort(reservation, why);
    LogWarn("cuda-ipc KV transfer failed",
            {{"reservation", reservation}, {"error", why.ToString()}});
    open = false;
  };
  for (;;) {
    char op;
    const SteadyTime wait_until = open ? deadline : SteadyClock::now() + options_.keepalive_idle;
    const auto wait =
        open ? std::chrono::duration_cast<std::chrono::milliseconds>(deadline - SteadyClock::now())
             : options_.keepalive_idle;
    Status s = ReadAll(fd, &op, 1, std::max(wait, std::chrono::milliseconds(1)), wait_until);
    if (!s.ok()) {
      abort_open(
          Status::Unavailable("prefill worker closed the cuda-ipc control channel "
                              "mid-transfer: " +
                              s.message()));
      return;
    }
    const SteadyTime msg_deadline = SteadyClock::now() + idle;
    if (static_cast<uint8_t>(op) == kOpBegin && !open) {
      char msg[24];
      if (!ReadAll(fd, msg, 24, idle, msg_deadline).ok()) return;
      const uint64_t id = Get<uint64_t>(msg);
      const int32_t num_tokens = static_cast<int32_t>(Get<uint32_t>(msg + 8));
      const uint32_t num_blocks = Get<uint32_t>(msg + 12);
      const int64_t block_bytes = static_cast<int64_t>(Get<uint64_t>(msg + 16));
      if (num_blocks == 0 || num_blocks > kMaxBlocks) {
        (void)net::SendStatusReply(
            fd, Status::InvalidArgument("bad block count " + std::to_string(num_blocks)), idle);
        return;  // the block list that follows cannot be skipped safely
      }
      std::string ids(static_cast<size_t>(num_blocks) * 4, '\0');
      if (!ReadAll(fd, ids.data(), ids.size(), idle, msg_deadline).ok()) return;
      Status verdict;
      if (block_bytes != region->block_bytes) {
        verdict = Status::InvalidArgument(
            "the sender's KV blocks are " + std::to_string(block_bytes) + " bytes, this worker's " +
            std::to_string(region->block_bytes) + " (another model, dtype or block size)");
      } else {
        verdict = sink_->Begin(id, num_tokens, static_cast<int32_t>(num_blocks));
        if (verdict.ok()) {
          auto reserved = sink_->ReservedBlocks(id);
          if (!reserved.ok()) {
            verdict = reserved.status();
          } else {
            bool same = reserved->size() == num_blocks;
            for (uint32_t i = 0; same && i < num_blocks; ++i) {
              same = (*reserved)[i] == static_cast<int32_t>(Get<uint32_t>(ids.data() + 4 * i));
            }
            if (!same) {
              verdict = Status::InvalidArgument(
                  "the sender would write other blocks than "
                  "reservation " +
                  std::to_string(id) + " holds");
            }
          }
          if (!verdict.ok()) sink_->Abort(id, verdict);
        }
      }
      if (verdict.ok()) {
        open = true;
        reservation = id;
        deadline = SteadyClock::now() + options_.transfer_timeout;
      }
      if (!net::SendStatusReply(fd, verdict, idle).ok()) {
        abort_open(Status::Unavailable("cuda-ipc control channel broke after begin"));
        return;
      }
      continue;
    }
    if ((static_cast<uint8_t>(op) == kOpCommit || static_cast<uint8_t>(op) == kOpAbort) && open) {
      const bool commit = static_cast<uint8_t>(op) == kOpCommit;
      char msg[16];
      if (!ReadAll(fd, msg, commit ? 16 : 8, idle, msg_deadline).ok() ||
          Get<uint64_t>(msg) != reservation) {
        abort_open(Status::InvalidArgument("bad cuda-ipc commit"));
        (void)net::SendStatusReply(fd, Status::InvalidArgument("bad cuda-ipc commit"), idle);
        return;
      }
      open = false;
      Status result;
      if (commit) {
        sink_->CountBytes(reservation, static_cast<int64_t>(Get<uint64_t>(msg + 8)));
        result = sink_->Commit(reservation);
        if (!result.ok()) sink_->Abort(reservation, result);
      } else {
        sink_->Abort(reservation, Status::Unavailable("the prefill worker's cuda-ipc copy failed"));
      }
      if (!net::SendStatusReply(fd, result, idle).ok()) return;
      continue;
    }
    abort_open(Status::InvalidArgument("bad cuda-ipc KV message"));
    (void)net::SendStatusReply(fd, Status::InvalidArgument("bad cuda-ipc KV message"), idle);
    return;
  }
}

}  // namespace pdpool::agent
