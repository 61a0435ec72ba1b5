// Checked CUDA, cuBLAS and NCCL calls: every call's result becomes a Status that names the call,
// its file:line and the library's error string, so a CUDA error surfaces as a worker error
// instead of a hang or a crash. Host code only; thread-safe (pure functions).
#pragma once

#include <cuda_runtime_api.h>

#include <string>

#include "common/status.h"

namespace pdpool::agent::cuda {

Status CudaStatus(cudaError_t error, const char* call, const char* file, int line);
// The last launch's error (cudaGetLastError), named after the kernel.
Status LaunchStatus(const char* kernel, const char* file, int line);

}  // namespace pdpool::agent::cuda

// Returns from the enclosing function (which returns Status or StatusOr) when `call` fails.
#define PDPOOL_CUDA_RETURN_IF_ERROR(call)                                                      \
  do {                                                                                         \
    if (cudaError_t pdpool_cuda_error_ = (call); pdpool_cuda_error_ != cudaSuccess) {          \
      return ::pdpool::agent::cuda::CudaStatus(pdpool_cuda_error_, #call, __FILE__, __LINE__); \
    }                                                                                          \
  } while (0)

// After a kernel launch: returns when the launch failed.
#define PDPOOL_CUDA_RETURN_IF_LAUNCH_FAILED(kernel)                          \
  do {                                                                       \
    if (::pdpool::Status pdpool_launch_status_ =                             \
            ::pdpool::agent::cuda::LaunchStatus(kernel, __FILE__, __LINE__); \
        !pdpool_launch_status_.ok()) {                                       \
      return pdpool_launch_status_;                                          \
    }                                                                        \
  } while (0)
