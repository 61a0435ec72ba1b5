// Fakes for the GPU KV transports' protocol tests, all in host memory:
//   FakeKvCommunicatorFactory  KvCommunicator pairs that move bytes between host buffers,
//                              matching sends and receives in posting order as NCCL does, with
//                              a link that can be cut mid-transfer (a peer that dies);
//   FakeKvIpc                  KvIpc whose handles name host buffers of this process;
//   HostKvRegion               a host buffer described as a DeviceKvRegion;
//   RecordingDeviceSink        a decode worker's KvSink with reservations over a KV region,
//                              checking them as Engine does, recording commits and aborts.
// All thread-safe.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "agent/transport/kv_communicator.h"
#include "agent/transport/kv_ipc.h"
#include "agent/transport/kv_transport.h"

namespace pdpool::agent {

struct LinkState;

class FakeKvCommunicatorFactory final : public KvCommunicatorFactory {
 public:
  struct Wire;
  StatusOr<std::string> NewUniqueId() override;
  StatusOr<std::unique_ptr<KvCommunicator>> Join(
      const std::string& unique_id, int nranks, int rank, int device,
      std::chrono::steady_clock::time_point deadline) override;

  // After `messages` more matched send/receive pairs (over all communicators), nothing more is
  // delivered: the posted operations never complete, as when the peer process died. -1: never.
  void CutLinkAfter(int messages);
  int joins() const;
  int64_t messages_delivered() const;

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  int next_id_ = 0;
  int joins_ = 0;
  std::map<std::string, std::shared_ptr<Wire>> wires_;
  std::shared_ptr<LinkState> link_;
};

class FakeKvIpc final : public KvIpc {
 public:
  StatusOr<std::string> Export(const DeviceKvRegion& region) override;
  Status Copy(const std::string& handle, int device, std::span<const IpcCopy> copies) override;
  void Close(const std::string& handle) override;

  void FailCopies(bool fail);
  int exports() const;
  int opens() const;   // handles opened (first use)
  int closes() const;  // Close calls for open handles
  int64_t copies() const;

 private:
  mutable std::mutex mu_;
  bool fail_ = false;
  int exports_ = 0;
  int opens_ = 0;
  int closes_ = 0;
  int64_t copies_ = 0;
  std::map<std::string, bool> open_;
};

// A host buffer of num_blocks × block_bytes, filled with `fill` or with random bytes.
struct HostKvRegion {
  HostKvRegion(std::string device_uuid, int32_t num_blocks, int64_t block_bytes,
               int32_t block_size);
  void Randomize(uint32_t seed);
  std::string Block(int32_t b) const;
  DeviceKvRegion region;
  std::vector<char> bytes;
};

class RecordingDeviceSink final : public KvSink {
 public:
  // `region` null: a worker whose KV cache is in host memory.
  explicit RecordingDeviceSink(const DeviceKvRegion* region) : region_(region) {}
  void AddReservation(uint64_t id, int32_t num_tokens, std::vector<int32_t> blocks);

  Status Begin(uint64_t reservation, int32_t num_tokens, int32_t num_blocks) override;
  Status WriteBlock(uint64_t, int32_t, int32_t, std::string_view) override;
  Status Commit(uint64_t reservation) override;
  void Abort(uint64_t reservation, const Status& why) override;
  const DeviceKvRegion* DeviceRegion() override;
  StatusOr<std::vector<int32_t>> ReservedBlocks(uint64_t reservation) override;
  void CountBytes(uint64_t reservation, int64_t bytes) override;

  // Waits until `reservation` was committed or aborted.
  bool WaitSettled(uint64_t reservation, std::chrono::milliseconds timeout);
  bool committed(uint64_t reservation) const;
  bool aborted(uint64_t reservation) const;
  std::string abort_reason(uint64_t reservation) const;
  bool reserved(uint64_t reservation) const;  // still held (not aborted, i.e. not freed)
  int64_t bytes(uint64_t reservation) const;
  int begins() const;

 private:
  struct Reservation {
    int32_t num_tokens = 0;
    std::vector<int32_t> blocks;
    bool committed = false;
    int64_t bytes = 0;
  };
  const DeviceKvRegion* region_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<uint64_t, Reservation> reservations_;
  std::map<uint64_t, std::string> aborted_;
  int begins_ = 0;
};

}  // namespace pdpool::agent
