// RAII owners of CUDA memory for the cuda backend: DeviceBuffer (cudaMalloc) and PinnedBuffer
// (cudaMallocHost, for asynchronous host↔device copies). Allocation failures come back as a
// Status naming the size. Move-only; thread-compatible.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <string>
#include <utility>

#include "agent/engine/cuda/cuda_check.h"
#include "common/status.h"

namespace pdpool::agent::cuda {

template <bool kPinned>
class CudaMemory {
 public:
  CudaMemory() = default;
  CudaMemory(const CudaMemory&) = delete;
  CudaMemory& operator=(const CudaMemory&) = delete;
  CudaMemory(CudaMemory&& other) noexcept { *this = std::move(other); }
  CudaMemory& operator=(CudaMemory&& other) noexcept {
    std::swap(ptr_, other.ptr_);
    std::swap(bytes_, other.bytes_);
    return *this;
  }
  ~CudaMemory() { Reset(); }

  Status Allocate(size_t bytes, const char* what) {
    Reset();
    const cudaError_t error = kPinned ? cudaMallocHost(&ptr_, bytes) : cudaMalloc(&ptr_, bytes);
    if (error != cudaSuccess) {
      ptr_ = nullptr;
      (void)cudaGetLastError();  // allocation errors are not sticky: clear it
      return Status::Unavailable(std::string("cannot allocate ") + std::to_string(bytes) +
                                 " bytes of " + (kPinned ? "pinned host" : "GPU") + " memory for " +
                                 what + ": " + cudaGetErrorString(error));
    }
    bytes_ = bytes;
    return Status::Ok();
  }
  void Reset() {
    if (ptr_ != nullptr) {
      if (kPinned) {
        cudaFreeHost(ptr_);
      } else {
        cudaFree(ptr_);
      }
    }
    ptr_ = nullptr;
    bytes_ = 0;
  }

  template <typename T = void>
  T* get() const {
    return static_cast<T*>(ptr_);
  }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

using DeviceBuffer = CudaMemory<false>;
using PinnedBuffer = CudaMemory<true>;

}  // namespace pdpool::agent::cuda
