// Fakes for the GPU KV transports: see fake_kv_transports.h.
#include "tests/fakes/fake_kv_transports.h"

#include <atomic>
#include <cstring>
#include <deque>
#include <random>
#include <utility>

namespace pdpool::agent {

struct LinkState {
  std::atomic<int64_t> remaining{-1};  // matches still allowed; -1: unlimited
  std::atomic<int64_t> delivered{0};
  // Takes one delivery from the budget; false when the link is cut.
  bool Take() {
    int64_t r = remaining.load();
    while (r != -1) {
      if (r == 0) return false;
      if (remaining.compare_exchange_weak(r, r - 1)) break;
    }
    ++delivered;
    return true;
  }
};

struct FakeKvCommunicatorFactory::Wire {
  int nranks = 0;
  std::vector<bool> joined;
  std::shared_ptr<LinkState> link;

  std::mutex mu;
  std::condition_variable cv;
  // Pending operations per direction (from rank, to rank), in posting order.
  std::map<std::pair<int, int>, std::deque<DeviceSpan>> sends, recvs;
  std::vector<int64_t> posted, completed;
  std::vector<bool> aborted;
  std::string failure;  // a size mismatch: the communicator is broken

  // Moves whatever can be matched. mu held.
  void Match() {
    for (auto& [direction, pending_sends] : sends) {
      auto& pending_recvs = recvs[direction];
      while (!pending_sends.empty() && !pending_recvs.empty() && failure.empty()) {
        const DeviceSpan s = pending_sends.front();
        const DeviceSpan r = pending_recvs.front();
        if (s.bytes != r.bytes) {
          failure = "fake NCCL: a " + std::to_string(s.bytes) + "-byte send met a " +
                    std::to_string(r.bytes) + "-byte receive";
          break;
        }
        if (!link->Take()) return;
        std::memcpy(reinterpret_cast<void*>(r.address), reinterpret_cast<const void*>(s.address),
                    static_cast<size_t>(s.bytes));
        pending_sends.pop_front();
        pending_recvs.pop_front();
        ++completed[direction.first];
        ++completed[direction.second];
      }
    }
    cv.notify_all();
  }
};

class FakeKvCommunicator final : public KvCommunicator {
 public:
  FakeKvCommunicator(std::shared_ptr<FakeKvCommunicatorFactory::Wire> wire, int rank)
      : wire_(std::move(wire)), rank_(rank), peer_(wire_->nranks == 1 ? 0 : 1 - rank) {}
  ~FakeKvCommunicator() override { Abort(); }

  // Enqueues at once (a fake peer is always joined), so `until` is never reached.
  Status Post(std::span<const DeviceSpan> sends, std::span<const DeviceSpan> recvs,
              std::chrono::steady_clock::time_point /*until*/) override {
    std::lock_guard lock(wire_->mu);
    if (wire_->aborted[rank_]) return Status::Unavailable("fake communicator was aborted");
    for (const DeviceSpan& s : sends) wire_->sends[{rank_, peer_}].push_back(s);
    for (const DeviceSpan& r : recvs) wire_->recvs[{peer_, rank_}].push_back(r);
    wire_->posted[rank_] += static_cast<int64_t>(sends.size() + recvs.size());
    wire_->Match();
    return Status::Ok();
  }

  Status Wait(std::chrono::steady_clock::time_point until) override {
    std::unique_lock lock(wire_->mu);
    const bool settled = wire_->cv.wait_until(lock, until, [&] {
      return wire_->aborted[rank_] || !wire_->failure.empty() ||
             wire_->completed[rank_] == wire_->posted[rank_];
    });
    if (wire_->aborted[rank_]) return Status::Unavailable("fake communicator was aborted");
    if (!wire_->failure.empty()) return Status::Internal(wire_->failure);
    if (!settled) return Status::DeadlineExceeded("fake transfer still in flight");
    return Status::Ok();
  }

  void Abort() override {
    std::lock_guard lock(wire_->mu);
    wire_->aborted[rank_] = true;
    wire_->cv.notify_all();
  }

 private:
  std::shared_ptr<FakeKvCommunicatorFactory::Wire> wire_;
  int rank_;
  int peer_;
};

StatusOr<std::string> FakeKvCommunicatorFactory::NewUniqueId() {
  std::lock_guard lock(mu_);
  return "fake-nccl-id-" + std::to_string(++next_id_);
}

StatusOr<std::unique_ptr<KvCommunicator>> FakeKvCommunicatorFactory::Join(
    const std::string& unique_id, int nranks, int rank, int /*device*/,
    std::chrono::steady_clock::time_point deadline) {
  std::unique_lock lock(mu_);
  if (!link_) link_ = std::make_shared<LinkState>();
  std::shared_ptr<Wire>& wire = wires_[unique_id];
  if (!wire) {
    wire = std::make_shared<Wire>();
    wire->nranks = nranks;
    wire->joined.assign(nranks, false);
    wire->posted.assign(nranks, 0);
    wire->completed.assign(nranks, 0);
    wire->aborted.assign(nranks, false);
    wire->link = link_;
  }
  if (wire->nranks != nranks || rank < 0 || rank >= nranks || wire->joined[rank]) {
    return Status::InvalidArgument("fake NCCL: bad join of rank " + std::to_string(rank));
  }
  wire->joined[rank] = true;
  cv_.notify_all();
  std::shared_ptr<Wire> w = wire;
  const bool all = cv_.wait_until(lock, deadline, [&] {
    for (bool j : w->joined) {
      if (!j) return false;
    }
    return true;
  });
  if (!all) return Status::DeadlineExceeded("fake NCCL: the other rank never joined");
  ++joins_;
  return std::unique_ptr<KvCommunicator>(std::make_unique<FakeKvCommunicator>(w, rank));
}

void FakeKvCommunicatorFactory::CutLinkAfter(int messages) {
  std::lock_guard lock(mu_);
  if (!link_) link_ = std::make_shared<LinkState>();
  link_->remaining = messages;
}

int FakeKvCommunicatorFactory::joins() const {
  std::lock_guard lock(mu_);
  return joins_;
}

int64_t FakeKvCommunicatorFactory::messages_delivered() const {
  std::lock_guard lock(mu_);
  return link_ ? link_->delivered.load() : 0;
}

// ---- FakeKvIpc ----

StatusOr<std::string> FakeKvIpc::Export(const DeviceKvRegion& region) {
  std::lock_guard lock(mu_);
  ++exports_;
  return "fake-ipc:" + std::to_string(region.base);
}

Status FakeKvIpc::Copy(const std::string& handle, int /*device*/, std::span<const IpcCopy> copies) {
  std::lock_guard lock(mu_);
  if (fail_) return Status::Internal("fake cudaMemcpyAsync failed");
  constexpr std::string_view kPrefix = "fake-ipc:";
  if (handle.rfind(kPrefix, 0) != 0) return Status::InvalidArgument("not a fake IPC handle");
  if (!open_[handle]) {
    open_[handle] = true;
    ++opens_;
  }
  char* base = reinterpret_cast<char*>(std::stoull(handle.substr(kPrefix.size())));
  for (const IpcCopy& c : copies) {
    std::memcpy(base + c.dest_offset, reinterpret_cast<const void*>(c.source),
                static_cast<size_t>(c.bytes));
    ++copies_;
  }
  return Status::Ok();
}

void FakeKvIpc::Close(const std::string& handle) {
  std::lock_guard lock(mu_);
  auto it = open_.find(handle);
  if (it == open_.end() || !it->second) return;
  it->second = false;
  ++closes_;
}

void FakeKvIpc::FailCopies(bool fail) {
  std::lock_guard lock(mu_);
  fail_ = fail;
}
int FakeKvIpc::exports() const {
  std::lock_guard lock(mu_);
  return exports_;
}
int FakeKvIpc::opens() const {
  std::lock_guard lock(mu_);
  return opens_;
}
int FakeKvIpc::closes() const {
  std::lock_guard lock(mu_);
  return closes_;
}
int64_t FakeKvIpc::copies() const {
  std::lock_guard lock(mu_);
  return copies_;
}

// ---- HostKvRegion ----

HostKvRegion::HostKvRegion(std::string device_uuid, int32_t num_blocks, int64_t block_bytes,
                           int32_t block_size)
    : bytes(static_cast<size_t>(num_blocks * block_bytes), '\0') {
  region.device = 0;
  region.device_uuid = std::move(device_uuid);
  region.base = reinterpret_cast<uintptr_t>(bytes.data());
  region.block_bytes = block_bytes;
  region.num_blocks = num_blocks;
  region.block_size = block_size;
}

void HostKvRegion::Randomize(uint32_t seed) {
  std::mt19937 rng(seed);
  for (char& c : bytes) c = static_cast<char>(rng());
}

std::string HostKvRegion::Block(int32_t b) const {
  return std::string(bytes.data() + b * region.block_bytes,
                     static_cast<size_t>(region.block_bytes));
}

// ---- RecordingDeviceSink ----

void RecordingDeviceSink::AddReservation(uint64_t id, int32_t num_tokens,
                                         std::vector<int32_t> blocks) {
  std::lock_guard lock(mu_);
  reservations_[id] = Reservation{num_tokens, std::move(blocks)};
}

Status RecordingDeviceSink::Begin(uint64_t reservation, int32_t num_tokens, int32_t num_blocks) {
  std::lock_guard lock(mu_);
  ++begins_;
  auto it = reservations_.find(reservation);
  if (it == reservations_.end()) {
    return Status::NotFound("reservation " + std::to_string(reservation) + " is unknown");
  }
  if (it->second.num_tokens != num_tokens ||
      static_cast<int32_t>(it->second.blocks.size()) != num_blocks) {
    return Status::InvalidArgument("reservation " + std::to_string(reservation) + " holds " +
                                   std::to_string(it->second.num_tokens) + " tokens in " +
                                   std::to_string(it->second.blocks.size()) +
                                   " blocks; the sender has " + std::to_string(num_tokens) +
                                   " tokens in " + std::to_string(num_blocks));
  }
  return Status::Ok();
}

Status RecordingDeviceSink::WriteBlock(uint64_t, int32_t, int32_t, std::string_view) {
  return Status::Internal("a GPU transport wrote through the host path");
}

Status RecordingDeviceSink::Commit(uint64_t reservation) {
  std::lock_guard lock(mu_);
  auto it = reservations_.find(reservation);
  if (it == reservations_.end()) return Status::NotFound("reservation is gone");
  it->second.committed = true;
  cv_.notify_all();
  return Status::Ok();
}

void RecordingDeviceSink::Abort(uint64_t reservation, const Status& why) {
  std::lock_guard lock(mu_);
  reservations_.erase(reservation);  // freed, as Engine::AbortImport does
  aborted_[reservation] = why.ToString();
  cv_.notify_all();
}

const DeviceKvRegion* RecordingDeviceSink::DeviceRegion() { return region_; }

StatusOr<std::vector<int32_t>> RecordingDeviceSink::ReservedBlocks(uint64_t reservation) {
  std::lock_guard lock(mu_);
  auto it = reservations_.find(reservation);
  if (it == reservations_.end()) return Status::NotFound("reservation is gone");
  return it->second.blocks;
}

void RecordingDeviceSink::CountBytes(uint64_t reservation, int64_t bytes) {
  std::lock_guard lock(mu_);
  auto it = reservations_.find(reservation);
  if (it != reservations_.end()) it->second.bytes += bytes;
}

bool RecordingDeviceSink::WaitSettled(uint64_t reservation, std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  return cv_.wait_for(lock, timeout, [&] {
    auto it = reservations_.find(reservation);
    return aborted_.count(reservation) > 0 || (it != reservations_.end() && it->second.committed);
  });
}

bool RecordingDeviceSink::committed(uint64_t reservation) const {
  std::lock_guard lock(mu_);
  auto it = reservations_.find(reservation);
  return it != reservations_.end() && it->second.committed;
}

bool RecordingDeviceSink::aborted(uint64_t reservation) const {
  std::lock_guard lock(mu_);
  return aborted_.count(reservation) > 0;
}

std::string RecordingDeviceSink::abort_reason(uint64_t reservation) const {
  std::lock_guard lock(mu_);
  auto it = aborted_.find(reservation);
  return it == aborted_.end() ? "" : it->second;
}

bool RecordingDeviceSink::reserved(uint64_t reservation) const {
  std::lock_guard lock(mu_);
  return reservations_.count(reservation) > 0;
}

int64_t RecordingDeviceSink::bytes(uint64_t reservation) const {
  std::lock_guard lock(mu_);
  auto it = reservations_.find(reservation);
  return it == reservations_.end() ? 0 : it->second.bytes;
}

int RecordingDeviceSink::begins() const {
  std::lock_guard lock(mu_);
  return begins_;
}

}  // namespace pdpool::agent
