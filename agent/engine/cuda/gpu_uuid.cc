// GPU UUID strings: see gpu_uuid.h.
#include "agent/engine/cuda/gpu_uuid.h"

#include <cstdio>

#include "agent/engine/cuda/cuda_check.h"

namespace pdpool::agent::cuda {

std::string GpuUuidString(const cudaUUID_t& uuid) {
  const auto* b = reinterpret_cast<const unsigned char*>(uuid.bytes);
  char text[64];
  std::snprintf(text, sizeof(text),
                "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
                b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
                b[14], b[15]);
  return text;
}

StatusOr<std::string> DeviceUuid(int device) {
  cudaDeviceProp prop{};
  PDPOOL_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, device));
  return GpuUuidString(prop.uuid);
}

}  // namespace pdpool::agent::cuda
