// KvCommunicator: the narrow interface between the nccl KV transport's protocol (CPU code in
// nccl_kv_transport.cc: handshake, ordering of blocks, reservation lifecycle, failures) and
// NCCL itself (agent/engine/cuda/nccl_communicator.cc: NcclCommunicatorFactory). Unit tests
// put a fake behind it that moves bytes between host buffers.
// A communicator joins `nranks` ranks (2: a prefill and a decode worker; 1: one rank sending to
// itself, as the GPU test does, since two ranks cannot share one GPU) and moves byte ranges of
// device memory to and from the other rank. A communicator is used by one thread at a time
// (the transport serializes transfers per peer); the factory is thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "common/status.h"

namespace pdpool::agent {

// A byte range of device memory in this process.
struct DeviceSpan {
  uintptr_t address = 0;
  int64_t bytes = 0;
};

class KvCommunicator {
 public:
  virtual ~KvCommunicator() = default;
  // Enqueues, as one group, a send of each of `sends` to the peer rank and a receive into each
  // of `recvs` from it (the peer is the other rank; with one rank, itself). Sends and receives
  // match in posting order and must have equal sizes. Returns once enqueued; DeadlineExceeded
  // when enqueueing is still not done at `until` (the peer never joined: then Abort).
  virtual Status Post(std::span<const DeviceSpan> sends, std::span<const DeviceSpan> recvs,
                      std::chrono::steady_clock::time_point until) = 0;
  // Waits until everything posted so far is complete in device memory, at most until `until`:
  // DeadlineExceeded when still in flight (wait again, or Abort); another error when the
  // communicator failed (then it must be aborted).
  virtual Status Wait(std::chrono::steady_clock::time_point until) = 0;
  // Cancels what is in flight and frees the communicator's resources; it is unusable
  // afterwards. Idempotent.
  virtual void Abort() = 0;
};

class KvCommunicatorFactory {
 public:
  virtual ~KvCommunicatorFactory() = default;
  // Whether communicators can be made here at all (NCCL loads); workers advertise nccl only then.
  virtual bool Available() { return true; }
  // A fresh unique id (ncclUniqueId: opaque bytes) for a new communicator: rank 0 makes it and
  // hands it to the other ranks.
  virtual StatusOr<std::string> NewUniqueId() = 0;
  // Joins communicator `unique_id` as `rank` of `nranks`, on CUDA device `device`. Blocks until
  // every rank has joined, at most until `deadline`.
  virtual StatusOr<std::unique_ptr<KvCommunicator>> Join(
      const std::string& unique_id, int nranks, int rank, int device,
      std::chrono::steady_clock::time_point deadline) = 0;
};

}  // namespace pdpool::agent
