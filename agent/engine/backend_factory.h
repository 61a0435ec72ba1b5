// NewBackend: builds the backend a worker's flags name (cpu, sim, and cuda when the binary was
// built with nvcc) with its model shape and weights. Loading real weights can take a while: call it
// off the serving path. Thread-compatible.
#pragma once

#include <memory>
#include <string>

#include "agent/engine/backend.h"
#include "common/status.h"

namespace pdpool::agent {

struct BackendOptions {
  std::string backend = "cpu";      // cpu | sim | cuda
  std::string model;                // preset name, or ""/"auto": config.json beside the weights
  std::string weights = "dummy:0";  // "dummy:<seed>" or a safetensors path
  int block_size = 16;
  int num_kv_blocks = 0;  // 0: cpu from kv_cache_bytes; sim from the modeled GPU memory
  int64_t kv_cache_bytes = int64_t{256} << 20;  // cpu KV cache budget when num_kv_blocks is 0
  // sim: the modeled hardware.
  std::string gpu = "H200";
  int tensor_parallel = 1;
  std::string calibration_file;
  double gpu_memory_utilization = 0.9;  // sim and cuda: the share of GPU memory to fill
  // cuda: the GPU and the largest step (the scheduler's limits size the activations).
  int device = 0;
  int max_batched_tokens = 8192;
  int max_sequences = 256;
  int max_model_len = 0;  // 0: the model's, at most 32768
  bool cuda_graphs = true;
  std::string decode_gemm = "auto";  // cuda: auto | cublas | skinny (cuda_backend.h, DecodeGemm)
  std::string prefill_attention = "auto";  // cuda: auto | mma | wgmma (PrefillAttention)
};

// Whether this binary can run the cuda backend (built with nvcc).
bool CudaBackendBuilt();

StatusOr<std::unique_ptr<Backend>> NewBackend(const BackendOptions& options);

}  // namespace pdpool::agent
