// NewCudaBackend: the `cuda` engine backend, a bf16 Llama forward on one NVIDIA GPU (sm_90 and
// newer): bf16 weights and paged KV cache with fp32 accumulation, cuBLAS GEMMs (or, for steps of
// at most 8 rows, pdpool's skinny GEMM where it measured faster at load), pdpool's own kernels
// for the rest (kernels.h), decode steps replayed from CUDA graphs captured per
// batch-size bucket. The KV cache is one cudaMalloc sized from gpu_memory_utilization after the
// weights and activations, block-major (device_kv.h), so GPU transports copy whole blocks.
// Like every Backend it is used by one engine thread at a time: not thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "agent/engine/backend.h"
#include "agent/model/model_config.h"
#include "agent/model/weights.h"
#include "common/status.h"

namespace pdpool::agent {

// Which GEMMs run steps of at most cuda::kSkinnyGemmMaxRows (8) rows, where a GEMM is one pass
// over the weights: cuBLAS, pdpool's skinny GEMM (with SwiGLU fused into the gate/up one), or
// whichever of the two measured faster at load, per projection and row count.
enum class DecodeGemm { kAuto, kCublas, kSkinny };
// "auto", "cublas" or "skinny"; InvalidArgument naming the choices otherwise.
StatusOr<DecodeGemm> ParseDecodeGemm(const std::string& name);

// Which kernel runs prefill attention: flash-attention-2 style on mma.sync (any sm_80+ GPU), or
// on Hopper's warpgroup MMA (compute capability 9.0 only). kAuto, where wgmma runs, times both
// at load on a causal prompt and takes the faster, unless wgmma's output differs from mma.sync's
// beyond bf16 rounding (logged as an error); mma.sync elsewhere.
enum class PrefillAttention { kAuto, kMma, kWgmma };
// "auto", "mma" or "wgmma"; InvalidArgument naming the choices otherwise.
StatusOr<PrefillAttention> ParsePrefillAttention(const std::string& name);

struct CudaBackendOptions {
  ModelConfig model;
  // "dummy:<seed>" generates DummyWeights' exact values on the GPU (rounded to bf16) without a
  // host copy; anything else is a safetensors checkpoint (LoadWeights' paths), read one tensor
  // at a time as bf16 (BF16 bytes as stored, F16/F32 rounded to nearest even): host memory
  // holds at most the largest tensor, never the model.
  std::string weights = "dummy:0";
  int device = 0;  // CUDA ordinal (after CUDA_VISIBLE_DEVICES)
  int block_size = 16;
  int num_blocks = 0;  // 0: fill gpu_memory_utilization of the card after weights + workspace
  double gpu_memory_utilization = 0.9;
  int max_batched_tokens = 8192;  // most tokens one Step runs (sizes the activations)
  int max_sequences = 256;        // most sequences one Step runs
  int max_model_len = 0;          // 0: min(max_position_embeddings, 32768)
  bool cuda_graphs = true;        // decode steps replayed from captured graphs
  DecodeGemm decode_gemm = DecodeGemm::kAuto;
  PrefillAttention prefill_attention = PrefillAttention::kAuto;
};

StatusOr<std::unique_ptr<Backend>> NewCudaBackend(const CudaBackendOptions& options);

}  // namespace pdpool::agent
