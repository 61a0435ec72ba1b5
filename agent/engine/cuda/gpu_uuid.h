// A GPU's UUID in nvidia-smi's form ("GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"): how the KV
// transports tell whether two processes share one physical GPU, and what NVML and
// NVIDIA_VISIBLE_DEVICES call it. Pure functions; thread-safe.
#pragma once

#include <cuda_runtime_api.h>

#include <string>

#include "common/status.h"

namespace pdpool::agent::cuda {

std::string GpuUuidString(const cudaUUID_t& uuid);
// The UUID of CUDA device `device` (an ordinal of this process).
StatusOr<std::string> DeviceUuid(int device);

}  // namespace pdpool::agent::cuda
