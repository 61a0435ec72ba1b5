// CUDA IPC behind KvIpc: see cuda_ipc.h.
#include "agent/engine/cuda/cuda_ipc.h"

#include <cuda_runtime_api.h>

#include <cstring>
#include <list>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "agent/engine/cuda/cuda_check.h"

namespace pdpool::agent {
namespace {

constexpr size_t kMaxOpenHandles = 64;

std::string ToHex(const cudaIpcMemHandle_t& handle) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(sizeof(handle.reserved) * 2);
  for (char c : handle.reserved) {
    const auto b = static_cast<unsigned char>(c);
    out.push_back(kDigits[b >> 4]);
    out.push_back(kDigits[b & 0xF]);
  }
  return out;
}

StatusOr<cudaIpcMemHandle_t> FromHex(const std::string& hex) {
  cudaIpcMemHandle_t handle;
  if (hex.size() != sizeof(handle.reserved) * 2) {
    return Status::InvalidArgument("a CUDA IPC handle is " +
                                   std::to_string(sizeof(handle.reserved) * 2) +
                                   " hex digits, got " + std::to_string(hex.size()));
  }
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  for (size_t i = 0; i < sizeof(handle.reserved); ++i) {
    const int hi = nibble(hex[2 * i]);
    const int lo = nibble(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return Status::InvalidArgument("CUDA IPC handle is not hex");
    handle.reserved[i] = static_cast<char>((hi << 4) | lo);
  }
  return handle;
}

// A peer allocation mapped into this process; unmapped when the last user lets go.
struct Mapping {
  void* base = nullptr;
  int device = 0;
  bool own = false;  // this process's own allocation: nothing to close
  ~Mapping() {
    if (base != nullptr && !own) {
      (void)cudaSetDevice(device);
      (void)cudaIpcCloseMemHandle(base);
    }
  }
};

// A stream and an event for one Copy at a time.
struct Lane {
  int device = 0;
  cudaStream_t stream = nullptr;
  cudaEvent_t event = nullptr;
};

class CudaIpc final : public KvIpc {
 public:
  ~CudaIpc() override {
    for (Lane& lane : lanes_) {
      (void)cudaSetDevice(lane.device);
      if (lane.event != nullptr) (void)cudaEventDestroy(lane.event);
      if (lane.stream != nullptr) (void)cudaStreamDestroy(lane.stream);
    }
  }

  StatusOr<std::string> Export(const DeviceKvRegion& region) override {
    std::lock_guard lock(mu_);
    // Asked every time (it is cheap): a freed and reallocated region at the same address has a
    // new handle, and peers must not be given the old one.
    PDPOOL_CUDA_RETURN_IF_ERROR(cudaSetDevice(region.device));
    cudaIpcMemHandle_t handle;
    PDPOOL_CUDA_RETURN_IF_ERROR(cudaIpcGetMemHandle(&handle, reinterpret_cast<void*>(region.base)));
    const std::string hex = ToHex(handle);
    if (own_.contains(hex)) return hex;
    auto own = std::make_shared<Mapping>();
    own->base = reinterpret_cast<void*>(region.base);
    own->device = region.device;
    own->own = true;
    own_[hex] = std::move(own);
    return hex;
  }

  Status Copy(const std::string& handle, int device, std::span<const IpcCopy> copies) override {
    auto mapping = Open(handle, device);
    if (!mapping.ok()) return mapping.status();
    auto lane = TakeLane(device);
    if (!lane.ok()) return lane.status();
    Status s = CopyOn(*lane, (*mapping)->base, copies);
    GiveBack(*lane, s.ok());
    return s;
  }

  void Close(const std::string& handle) override {
    std::lock_guard lock(mu_);
    auto it = open_.find(handle);
    if (it == open_.end()) return;
    lru_.erase(it->second.lru);
    open_.erase(it);
  }

 private:
  struct OpenHandle {
    std::shared_ptr<Mapping> mapping;
    std::list<std::string>::iterator lru;
  };

  StatusOr<std::shared_ptr<Mapping>> Open(const std::string& hex, int device) {
    std::lock_guard lock(mu_);
    if (auto own = own_.find(hex); own != own_.end()) return own->second;
    if (auto it = open_.find(hex); it != open_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second.lru);
      return it->second.mapping;
    }
    auto handle = FromHex(hex);
    if (!handle.ok()) return handle.status();
    PDPOOL_CUDA_RETURN_IF_ERROR(cudaSetDevice(device));
    void* base = nullptr;
    PDPOOL_CUDA_RETURN_IF_ERROR(
        cudaIpcOpenMemHandle(&base, *handle, cudaIpcMemLazyEnablePeerAccess));
    auto mapping = std::make_shared<Mapping>();
    mapping->base = base;
    mapping->device = device;
    lru_.push_front(hex);
    open_[hex] = OpenHandle{mapping, lru_.begin()};
    // Copies in flight keep an evicted mapping alive through their shared_ptr.
    while (open_.size() > kMaxOpenHandles) {
      open_.erase(lru_.back());
      lru_.pop_back();
    }
    return mapping;
  }

  StatusOr<Lane> TakeLane(int device) {
    {
      std::lock_guard lock(mu_);
      for (auto it = lanes_.begin(); it != lanes_.end(); ++it) {
        if (it->device == device) {
          Lane lane = *it;
          lanes_.erase(it);
          return lane;
        }
      }
    }
    Lane lane;
    lane.device = device;
    PDPOOL_CUDA_RETURN_IF_ERROR(cudaSetDevice(device));
    PDPOOL_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&lane.stream, cudaStreamNonBlocking));
    if (cudaError_t e = cudaEventCreateWithFlags(&lane.event, cudaEventDisableTiming);
        e != cudaSuccess) {
      (void)cudaStreamDestroy(lane.stream);
      return cuda::CudaStatus(e, "cudaEventCreateWithFlags", __FILE__, __LINE__);
    }
    return lane;
  }

  void GiveBack(const Lane& lane, bool healthy) {
    if (!healthy) {
      // After a failed copy the stream may hold an error: start the next one on a fresh lane.
      // Copies enqueued before the failure finish first, so the peer's memory is not unmapped
      // under them.
      (void)cudaSetDevice(lane.device);
      (void)cudaStreamSynchronize(lane.stream);
      (void)cudaEventDestroy(lane.event);
      (void)cudaStreamDestroy(lane.stream);
      return;
    }
    std::lock_guard lock(mu_);
    lanes_.push_back(lane);
  }

  static Status CopyOn(const Lane& lane, void* peer_base, std::span<const IpcCopy> copies) {
    PDPOOL_CUDA_RETURN_IF_ERROR(cudaSetDevice(lane.device));
    for (const IpcCopy& c : copies) {
      PDPOOL_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(
          static_cast<char*>(peer_base) + c.dest_offset, reinterpret_cast<const void*>(c.source),
          static_cast<size_t>(c.bytes), cudaMemcpyDeviceToDevice, lane.stream));
    }
    // Complete in device memory before the commit goes to the peer.
    PDPOOL_CUDA_RETURN_IF_ERROR(cudaEventRecord(lane.event, lane.stream));
    PDPOOL_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(lane.event));
    return Status::Ok();
  }

  std::mutex mu_;
  std::unordered_map<std::string, std::shared_ptr<Mapping>> own_;  // handle → own region
  std::unordered_map<std::string, OpenHandle> open_;               // peer handle → mapping
  std::list<std::string> lru_;                                     // most recent first
  std::vector<Lane> lanes_;                                        // idle lanes
};

}  // namespace

std::unique_ptr<KvIpc> NewCudaIpc() { return std::make_unique<CudaIpc>(); }

}  // namespace pdpool::agent
