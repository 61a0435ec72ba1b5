// The nccl KV transport's protocol: see nccl_kv_transport.h.
#include "agent/transport/nccl_kv_transport.h"

#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "agent/transport/gpu_channel.h"
#include "agent/transport/socket_io.h"
#include "common/log.h"

namespace pdpool::agent {
namespace {

constexpr uint16_t kVersion = 1;
constexpr uint8_t kOpBegin = 1;
constexpr uint32_t kMaxBlocks = 1u << 20;
constexpr size_t kMaxUniqueId = 4096;
// How often a wait for the device checks the control channel and the deadline.
constexpr auto kWaitSlice = std::chrono::milliseconds(20);

using net::Get;
using net::Put;
using net::ReadAll;
using net::SteadyTime;
using net::WriteAll;
using SteadyClock = std::chrono::steady_clock;

// Waits for what `comm` has in flight, watching the control channel: the peer closing it (a
// dead process) or the deadline ends the wait with an error.
Status WaitForDevice(KvCommunicator* comm, int fd, SteadyTime deadline, const std::string& peer) {
  for (;;) {
    const SteadyTime until = std::min(SteadyClock::now() + kWaitSlice, deadline);
    Status s = comm->Wait(until);
    if (s.ok()) return s;
    if (s.code() != StatusCode::kDeadlineExceeded) return s;
    if (net::PeerClosed(fd)) {
      return Status::Unavailable(peer + " closed the nccl control channel mid-transfer");
    }
    if (SteadyClock::now() >= deadline) {
      return Status::DeadlineExceeded("nccl transfer with " + peer +
                                      " did not complete before its deadline");
    }
  }
}

std::vector<DeviceSpan> Spans(const DeviceKvRegion& region, const std::vector<int32_t>& blocks) {
  std::vector<DeviceSpan> spans;
  spans.reserve(blocks.size());
  for (int32_t b : blocks) {
    spans.push_back(
        {region.base + static_cast<uintptr_t>(b) * region.block_bytes, region.block_bytes});
  }
  return spans;
}

Status CheckBlocks(const DeviceKvRegion& region, const std::vector<int32_t>& blocks,
                   const char* whose) {
  for (int32_t b : blocks) {
    if (b < 0 || b >= region.num_blocks) {
      return Status::InvalidArgument(std::string(whose) + " block " + std::to_string(b) +
                                     " is outside the KV region (" +
                                     std::to_string(region.num_blocks) + " blocks)");
    }
  }
  return Status::Ok();
}

}  // namespace

struct NcclKvSender::Channel {
  std::mutex mu;  // one transfer (or setup) at a time: both ranks post in the same order
  int fd = -1;
  std::unique_ptr<KvCommunicator> comm;

  bool open() const { return fd >= 0 && comm != nullptr; }
  void Close() {
    if (comm) comm->Abort();
    comm.reset();
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
};

NcclKvSender::NcclKvSender(NcclKvOptions options, KvCommunicatorFactory* factory)
    : options_(std::move(options)), factory_(factory) {}

NcclKvSender::~NcclKvSender() {
  std::lock_guard lock(mu_);
  for (auto& [address, channel] : channels_) {
    std::lock_guard channel_lock(channel->mu);
    channel->Close();
  }
}

Status NcclKvSender::Open(Channel* channel, const std::string& address, int device) {
  auto fd = net::Connect(address, options_.io_timeout);
  if (!fd.ok()) return fd.status();
  auto id = factory_->NewUniqueId();
  if (!id.ok()) {
    ::close(*fd);
    return id.status();
  }
  std::string hello(kNcclKvMagic, 4);
  Put<uint16_t>(hello, kVersion);
  Put<uint16_t>(hello, static_cast<uint16_t>(options_.token.size()));
  hello += options_.token;
  Put<uint16_t>(hello, static_cast<uint16_t>(id->size()));
  hello += *id;
  const SteadyTime hello_deadline = SteadyClock::now() + options_.io_timeout;
  Status verdict;
  Status s = WriteAll(*fd, hello.data(), hello.size(), options_.io_timeout, hello_deadline);
  if (s.ok()) s = net::ReadStatusReply(*fd, options_.io_timeout, hello_deadline, &verdict);
  if (s.ok() && !verdict.ok()) {
    s = Status::Unavailable("KV receiver " + address +
                            " refused the nccl channel: " + verdict.message());
  }
  if (!s.ok()) {
    ::close(*fd);
    return s;
  }
  // The receiver joins as rank 1 at the same time.
  const SteadyTime setup_deadline = SteadyClock::now() + options_.setup_timeout;
  auto comm = factory_->Join(*id, 2, 0, device, setup_deadline);
  if (!comm.ok()) {
    ::close(*fd);
    return comm.status();
  }
  s = net::ReadStatusReply(*fd, options_.setup_timeout, setup_deadline, &verdict);
  if (s.ok() && !verdict.ok()) {
    s = Status::Unavailable("KV receiver " + address +
                            " could not join the nccl communicator: " + verdict.message());
  }
  if (!s.ok()) {
    (*comm)->Abort();
    ::close(*fd);
    return s;
  }
  channel->fd = *fd;
  channel->comm = std::move(*comm);
  ++communicators_created_;
  LogInfo("nccl KV channel open", {{"peer", address}, {"device", device}});
  return Status::Ok();
}

StatusOr<KvTransferStats> NcclKvSender::Send(const KvDestination& destination,
                                             const DeviceKvRegion& source,
                                             const std::vector<int32_t>& blocks,
                                             int32_t num_tokens) {
  if (num_tokens < 1 || blocks.empty()) {
    return Status::InvalidArgument("nothing to send: " + std::to_string(num_tokens) + " tokens");
  }
  if (source.block_bytes <= 0 || source.block_size <= 0) {
    return Status::InvalidArgument("the source KV region has no block geometry");
  }
  const int64_t expected = (num_tokens + source.block_size - 1) / source.block_size;
  if (static_cast<int64_t>(blocks.size()) != expected) {
    return Status::InvalidArgument(
        std::to_string(num_tokens) + " tokens need " + std::to_string(expected) + " blocks of " +
        std::to_string(source.block_size) + ", got " + std::to_string(blocks.size()));
  }
  if (Status s = CheckBlocks(source, blocks, "source"); !s.ok()) return s;

  std::shared_ptr<Channel> channel;
  {
    std::lock_guard lock(mu_);
    std::shared_ptr<Channel>& slot = channels_[destination.address];
    if (!slot) slot = std::make_shared<Channel>();
    channel = slot;
  }
  std::lock_guard lock(channel->mu);
  // A kept channel first; if the receiver had closed it before answering (idle timeout), the
  // transfer never began there: once more on a fresh channel.
  for (int attempt = 0; attempt < 2; ++attempt) {
    if (channel->open() && net::PeerClosed(channel->fd)) channel->Close();
    const bool reused = channel->open();
    if (!reused) {
      if (Status s = Open(channel.get(), destination.address, source.device); !s.ok()) return s;
    }
    bool broken = false;
    bool unanswered = false;
    auto stats =
        Transfer(channel.get(), destination, source, blocks, num_tokens, &broken, &unanswered);
    if (broken) channel->Close();
    if (stats.ok() || !reused || !unanswered) return stats;
  }
  return Status::Internal("unreachable");
}

StatusOr<KvTransferStats> NcclKvSender::Transfer(Channel* channel, const KvDestination& destination,
                                                 const DeviceKvRegion& source,
                                                 const std::vector<int32_t>& blocks,
                                                 int32_t num_tokens, bool* broken,
                                                 bool* unanswered) {
  const auto started = SteadyClock::now();
  const SteadyTime deadline = started + options_.transfer_timeout;
  const std::string& peer = destination.address;
  const int fd = channel->fd;
  std::string begin;
  Put<uint8_t>(begin, kOpBegin);
  Put<uint64_t>(begin, destination.reservation_id);
  Put<uint32_t>(begin, static_cast<uint32_t>(num_tokens));
  Put<uint32_t>(begin, static_cast<uint32_t>(blocks.size()));
  Put<uint64_t>(begin, static_cast<uint64_t>(source.block_bytes));
  Status verdict;
  Status s = WriteAll(fd, begin.data(), begin.size(), options_.io_timeout, deadline);
  if (s.ok()) s = net::ReadStatusReply(fd, options_.io_timeout, deadline, &verdict);
  if (!s.ok()) {
    *broken = *unanswered = true;
    return Status::Unavailable("nccl control channel to " + peer + ": " + s.message());
  }
  if (!verdict.ok()) {
    // Nothing was posted on either side: the channel stays usable.
    return Status::Unavailable("KV receiver " + peer + " refused: " + verdict.message());
  }
  const std::vector<DeviceSpan> sends = Spans(source, blocks);
  s = channel->comm->Post(sends, {}, deadline);
  if (s.ok()) s = WaitForDevice(channel->comm.get(), fd, deadline, "decode worker " + peer);
  if (!s.ok()) {
    *broken = true;
    return Status::Unavailable("nccl send to " + peer + " failed: " + s.message());
  }
  s = net::ReadStatusReply(fd, options_.io_timeout, deadline, &verdict);
  if (!s.ok()) {
    *broken = true;
    return Status::Unavailable("no reply from KV receiver " + peer + ": " + s.message());
  }
  if (!verdict.ok()) {
    return Status::Unavailable("KV receiver " + peer +
                               " failed the transfer: " + verdict.message());
  }
  KvTransferStats stats;
  stats.bytes = static_cast<int64_t>(blocks.size()) * source.block_bytes;
  stats.seconds = std::chrono::duration<double>(SteadyClock::now() - started).count();
  return stats;
}

NcclKvReceiver::NcclKvReceiver(NcclKvOptions options, KvCommunicatorFactory* factory, KvSink* sink)
    : options_(std::move(options)), factory_(factory), sink_(sink) {}

void NcclKvReceiver::ServeConnection(int fd) {
  const auto idle = options_.io_timeout;
  SteadyTime deadline = SteadyClock::now() + idle;
  char head[4];
  if (!ReadAll(fd, head, 4, idle, deadline).ok()) return;
  if (Get<uint16_t>(head) != kVersion) {
    (void)net::SendStatusReply(
        fd,
        Status::InvalidArgument("nccl KV protocol version " + std::to_string(Get<uint16_t>(head)) +
                                " is not " + std::to_string(kVersion)),
        idle);
    return;
  }
  std::string token(Get<uint16_t>(head + 2), '\0');
  char id_len[2];
  if (!ReadAll(fd, token.data(), token.size(), idle, deadline).ok() ||
      !ReadAll(fd, id_len, 2, idle, deadline).ok()) {
    return;
  }
  std::string id(Get<uint16_t>(id_len), '\0');
  if (id.size() > kMaxUniqueId || !ReadAll(fd, id.data(), id.size(), idle, deadline).ok()) return;
  const DeviceKvRegion* region = AdmitGpuChannel(fd, token, options_.token, sink_, "nccl", idle);
  if (region == nullptr) return;
  auto joined =
      factory_->Join(id, 2, 1, region->device, SteadyClock::now() + options_.setup_timeout);
  if (!joined.ok()) {
    LogWarn("nccl KV channel: cannot join the communicator",
            {{"error", joined.status().ToString()}});
    (void)net::SendStatusReply(fd, joined.status(), idle);
    return;
  }
  std::unique_ptr<KvCommunicator> comm = std::move(*joined);
  ++communicators_joined_;
  if (!net::SendStatusReply(fd, Status::Ok(), idle).ok()) {
    comm->Abort();
    return;
  }

  for (;;) {
    char op;
    const auto wait = options_.keepalive_idle;
    if (!ReadAll(fd, &op, 1, wait, SteadyClock::now() + wait).ok()) break;  // closed or idle
    deadline = SteadyClock::now() + options_.transfer_timeout;
    char msg[24];
    if (static_cast<uint8_t>(op) != kOpBegin || !ReadAll(fd, msg, 24, idle, deadline).ok()) {
      (void)net::SendStatusReply(fd, Status::InvalidArgument("bad nccl KV message"), idle);
      break;
    }
    const uint64_t reservation = Get<uint64_t>(msg);
    const int32_t num_tokens = static_cast<int32_t>(Get<uint32_t>(msg + 8));
    const uint32_t num_blocks = Get<uint32_t>(msg + 12);
    const int64_t block_bytes = static_cast<int64_t>(Get<uint64_t>(msg + 16));
    // Refusals before anything is posted keep the channel in step: answer and go on.
    if (num_blocks == 0 || num_blocks > kMaxBlocks) {
      if (!net::SendStatusReply(
               fd, Status::InvalidArgument("bad block count " + std::to_string(num_blocks)), idle)
               .ok())
        break;
      continue;
    }
    if (block_bytes != region->block_bytes) {
      const Status refused = Status::InvalidArgument(
          "the sender's KV blocks are " + std::to_string(block_bytes) + " bytes, this worker's " +
          std::to_string(region->block_bytes) + " (another model, dtype or block size)");
      if (!net::SendStatusReply(fd, refused, idle).ok()) break;
      continue;
    }
    Status s = sink_->Begin(reservation, num_tokens, static_cast<int32_t>(num_blocks));
    if (!s.ok()) {
      if (!net::SendStatusReply(fd, s, idle).ok()) break;
      continue;
    }
    auto blocks = sink_->ReservedBlocks(reservation);
    if (blocks.ok() && blocks->size() != num_blocks) {
      blocks = Status::Internal("reservation " + std::to_string(reservation) + " has " +
                                std::to_string(blocks->size()) + " blocks, not " +
                                std::to_string(num_blocks));
    }
    if (blocks.ok()) {
      if (Status in_region = CheckBlocks(*region, *blocks, "reserved"); !in_region.ok())
        blocks = in_region;
    }
    if (!blocks.ok()) {
      sink_->Abort(reservation, blocks.status());
      if (!net::SendStatusReply(fd, blocks.status(), idle).ok()) break;
      continue;
    }
    // One receive per reserved block, in block order: the sender's sends match them in order.
    const std::vector<DeviceSpan> recvs = Spans(*region, *blocks);
    s = comm->Post({}, recvs, deadline);
    if (s.ok()) s = net::SendStatusReply(fd, Status::Ok(), idle);
    if (s.ok()) s = WaitForDevice(comm.get(), fd, deadline, "prefill worker");
    if (!s.ok()) {
      // The communicator is out of step (or the sender is gone): abort it before the blocks
      // are freed, so no receive lands in them afterwards.
      comm->Abort();
      sink_->Abort(reservation, s);
      LogWarn("nccl KV transfer failed", {{"reservation", reservation}, {"error", s.ToString()}});
      (void)net::SendStatusReply(fd, s, idle);
      return;
    }
    sink_->CountBytes(reservation, static_cast<int64_t>(num_blocks) * block_bytes);
    s = sink_->Commit(reservation);
    if (!s.ok()) sink_->Abort(reservation, s);
    if (!net::SendStatusReply(fd, s, idle).ok()) break;
  }
  comm->Abort();
}

}  // namespace pdpool::agent
