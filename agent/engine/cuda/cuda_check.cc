// Checked CUDA calls: see cuda_check.h.
#include "agent/engine/cuda/cuda_check.h"

#include <string>

namespace pdpool::agent::cuda {

Status CudaStatus(cudaError_t error, const char* call, const char* file, int line) {
  return Status::Internal(std::string(call) + " failed at " + file + ":" + std::to_string(line) +
                          ": " + cudaGetErrorName(error) + " (" + cudaGetErrorString(error) + ")");
}

Status LaunchStatus(const char* kernel, const char* file, int line) {
  const cudaError_t error = cudaGetLastError();
  if (error == cudaSuccess) return Status::Ok();
  return Status::Internal(std::string("kernel ") + kernel + " launch failed at " + file + ":" +
                          std::to_string(line) + ": " + cudaGetErrorName(error) + " (" +
                          cudaGetErrorString(error) + ")");
}

}  // namespace pdpool::agent::cuda
