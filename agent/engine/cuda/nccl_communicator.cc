// NCCL behind KvCommunicator: see nccl_communicator.h.
#include "agent/engine/cuda/nccl_communicator.h"

#include <cuda_runtime_api.h>

#include <cstring>
#include <thread>

#include "agent/engine/cuda/cuda_check.h"
#include "agent/engine/cuda/cuda_libraries.h"
#include "agent/engine/cuda/nccl_check.h"

namespace pdpool::agent {
namespace {

using SteadyClock = std::chrono::steady_clock;

// NCCL's entry points; only called once the factory has loaded the library (Available()).
const cuda::NcclApi& Nccl() { return **cuda::LoadNccl(); }

// Polls a non-blocking communicator until its pending operation (init, group end) is done.
Status AwaitComm(ncclComm_t comm, SteadyClock::time_point deadline, const char* what) {
  for (;;) {
    ncclResult_t state = ncclSuccess;
    PDPOOL_NCCL_RETURN_IF_ERROR(Nccl().CommGetAsyncError(comm, &state));
    if (state == ncclSuccess) return Status::Ok();
    if (state != ncclInProgress) {
      return cuda::NcclStatus(state, what, __FILE__, __LINE__);
    }
    if (SteadyClock::now() >= deadline) {
      return Status::DeadlineExceeded(std::string(what) +
                                      " did not complete before its deadline (is the peer "
                                      "rank joining? NCCL_DEBUG=INFO tells more)");
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

class NcclCommunicator final : public KvCommunicator {
 public:
  NcclCommunicator(ncclComm_t comm, int device, int peer, cudaStream_t stream, cudaEvent_t event)
      : comm_(comm), device_(device), peer_(peer), stream_(stream), event_(event) {}
  ~NcclCommunicator() override { Abort(); }

  Status Post(std::span<const DeviceSpan> sends, std::span<const DeviceSpan> recvs,
              SteadyClock::time_point until) override {
    if (comm_ == nullptr) return Status::Unavailable("the NCCL communicator was aborted");
    posted_ = false;
    PDPOOL_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
    PDPOOL_NCCL_RETURN_IF_FAILED(Nccl().GroupStart());
    Status enqueued = Status::Ok();
    for (const DeviceSpan& s : sends) {
      const ncclResult_t r =
          Nccl().Send(reinterpret_cast<const void*>(s.address), static_cast<size_t>(s.bytes),
                      ncclUint8, peer_, comm_, stream_);
      if (r != ncclSuccess && r != ncclInProgress) {
        enqueued = cuda::NcclStatus(r, "ncclSend", __FILE__, __LINE__);
        break;
      }
    }
    for (const DeviceSpan& s : recvs) {
      if (!enqueued.ok()) break;
      const ncclResult_t r =
          Nccl().Recv(reinterpret_cast<void*>(s.address), static_cast<size_t>(s.bytes), ncclUint8,
                      peer_, comm_, stream_);
      if (r != ncclSuccess && r != ncclInProgress) {
        enqueued = cuda::NcclStatus(r, "ncclRecv", __FILE__, __LINE__);
      }
    }
    // The group is closed even after a failed enqueue, so the thread's group state is clean.
    const ncclResult_t end = Nccl().GroupEnd();
    if (!enqueued.ok()) return enqueued;
    if (end != ncclSuccess && end != ncclInProgress) {
      return cuda::NcclStatus(end, "ncclGroupEnd", __FILE__, __LINE__);
    }
    Status s = AwaitComm(comm_, until, "ncclGroupEnd");
    if (!s.ok()) return s;
    PDPOOL_CUDA_RETURN_IF_ERROR(cudaEventRecord(event_, stream_));
    posted_ = true;
    return Status::Ok();
  }

  Status Wait(SteadyClock::time_point until) override {
    if (comm_ == nullptr) return Status::Unavailable("the NCCL communicator was aborted");
    // An event never recorded reads as complete: a failed Post must not look like a transfer.
    if (!posted_) return Status::Internal("no NCCL transfer was posted");
    for (int spins = 0;; ++spins) {
      const cudaError_t e = cudaEventQuery(event_);
      if (e == cudaSuccess) return Status::Ok();
      if (e != cudaErrorNotReady) {
        return cuda::CudaStatus(e, "cudaEventQuery(transfer done)", __FILE__, __LINE__);
      }
      ncclResult_t state = ncclSuccess;
      PDPOOL_NCCL_RETURN_IF_ERROR(Nccl().CommGetAsyncError(comm_, &state));
      if (state != ncclSuccess && state != ncclInProgress) {
        return cuda::NcclStatus(state, "ncclCommGetAsyncError", __FILE__, __LINE__);
      }
      if (SteadyClock::now() >= until) {
        return Status::DeadlineExceeded("NCCL transfer still in flight");
      }
      // Transfers take microseconds to milliseconds: spin briefly, then sleep a little.
      if (spins < 64) {
        std::this_thread::yield();
      } else {
        std::this_thread::sleep_for(std::chrono::microseconds(50));
      }
    }
  }

  void Abort() override {
    if (comm_ != nullptr) {
      (void)cudaSetDevice(device_);
      // ncclCommAbort stops kernels in flight; its result has nowhere to go on this path.
      (void)Nccl().CommAbort(comm_);
      comm_ = nullptr;
    }
    if (event_ != nullptr) (void)cudaEventDestroy(event_);
    if (stream_ != nullptr) (void)cudaStreamDestroy(stream_);
    event_ = nullptr;
    stream_ = nullptr;
  }

 private:
  ncclComm_t comm_;
  int device_;
  int peer_;
  cudaStream_t stream_;
  cudaEvent_t event_;
  bool posted_ = false;  // the last Post enqueued its transfers and recorded event_
};

class NcclCommunicatorFactory final : public KvCommunicatorFactory {
 public:
  bool Available() override { return cuda::LoadNccl().ok(); }

  StatusOr<std::string> NewUniqueId() override {
    if (auto loaded = cuda::LoadNccl(); !loaded.ok()) return loaded.status();
    ncclUniqueId id;
    PDPOOL_NCCL_RETURN_IF_ERROR(Nccl().GetUniqueId(&id));
    return std::string(id.internal, sizeof(id.internal));
  }

  StatusOr<std::unique_ptr<KvCommunicator>> Join(const std::string& unique_id, int nranks, int rank,
                                                 int device,
                                                 SteadyClock::time_point deadline) override {
    if (auto loaded = cuda::LoadNccl(); !loaded.ok()) return loaded.status();
    ncclUniqueId id;
    if (unique_id.size() != sizeof(id.internal)) {
      return Status::InvalidArgument("an NCCL unique id is " + std::to_string(sizeof(id.internal)) +
                                     " bytes, got " + std::to_string(unique_id.size()));
    }
    if (nranks < 1 || nranks > 2 || rank < 0 || rank >= nranks) {
      return Status::InvalidArgument("a KV communicator has one or two ranks; got rank " +
                                     std::to_string(rank) + " of " + std::to_string(nranks));
    }
    std::memcpy(id.internal, unique_id.data(), sizeof(id.internal));
    PDPOOL_CUDA_RETURN_IF_ERROR(cudaSetDevice(device));
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    ncclComm_t comm = nullptr;
    PDPOOL_NCCL_RETURN_IF_FAILED(Nccl().CommInitRankConfig(&comm, nranks, id, rank, &config));
    if (Status s = AwaitComm(comm, deadline, "ncclCommInitRankConfig"); !s.ok()) {
      (void)Nccl().CommAbort(comm);
      return s;
    }
    cudaStream_t stream = nullptr;
    cudaEvent_t event = nullptr;
    cudaError_t e = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
    if (e != cudaSuccess) {
      (void)Nccl().CommAbort(comm);
      return cuda::CudaStatus(e, "cudaStreamCreateWithFlags", __FILE__, __LINE__);
    }
    e = cudaEventCreateWithFlags(&event, cudaEventDisableTiming);
    if (e != cudaSuccess) {
      (void)Nccl().CommAbort(comm);
      (void)cudaStreamDestroy(stream);
      return cuda::CudaStatus(e, "cudaEventCreateWithFlags", __FILE__, __LINE__);
    }
    // Two ranks: the other one; one rank sends to itself.
    const int peer = nranks == 1 ? 0 : 1 - rank;
    return std::unique_ptr<KvCommunicator>(
        std::make_unique<NcclCommunicator>(comm, device, peer, stream, event));
  }
};

}  // namespace

std::unique_ptr<KvCommunicatorFactory> NewNcclCommunicatorFactory() {
  return std::make_unique<NcclCommunicatorFactory>();
}

}  // namespace pdpool::agent
