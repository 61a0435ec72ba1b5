// DeviceKvRegion: where a backend keeps its paged KV cache in GPU memory, so the GPU KV
// transports (cuda-ipc, nccl) move blocks device to device instead of through host strings.
// The cache is block-major: block b is the contiguous byte range
// [base + b·block_bytes, base + (b+1)·block_bytes) and holds, for its block_size token slots,
// every layer's K and V (agent/engine/cuda/kv_cache_layout.h gives the order inside a block).
// Two backends of the same model, dtype and block size have the same block_bytes, so a block
// copied byte for byte restores the KV exactly. Plain value; thread-compatible.
#pragma once

#include <cstdint>
#include <string>

namespace pdpool::agent {

struct DeviceKvRegion {
  int device = -1;          // CUDA device ordinal in this process
  std::string device_uuid;  // "GPU-<uuid>" as nvidia-smi prints it: the physical GPU
  uintptr_t base = 0;       // device address of block 0 (from one cudaMalloc: IPC-exportable)
  int64_t block_bytes = 0;  // bytes of one block, and the stride between blocks
  int32_t num_blocks = 0;
  int32_t block_size = 0;  // token slots per block
};

}  // namespace pdpool::agent
