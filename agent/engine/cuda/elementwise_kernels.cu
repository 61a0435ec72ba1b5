// Elementwise and row kernels of the cuda backend: the kernels (their bodies are
// elementwise_kernels.cuh) and their launchers. See kernels.h for what each computes.
#include <cuda_bf16.h>

#include <cstdint>

#include "agent/engine/cuda/cuda_check.h"
#include "agent/engine/cuda/grid_dependency.cuh"
#include "agent/engine/cuda/elementwise_kernels.cuh"
#include "agent/engine/cuda/kernels.h"

namespace pdpool::agent::cuda {
namespace {

__global__ void DummyInitKernel(bf16* out, int64_t n, uint64_t stream_id, double bound,
                                double center) {
  DummyInitBody(out, n, stream_id, bound, center);
}

__global__ void EmbeddingKernel(const int32_t* tokens, const bf16* embed, float* x, int hidden) {
  AllowDependentGridsToLaunch();
  WaitForPrerequisiteGrids();
  EmbeddingBody(tokens, embed, x, hidden);
}

__global__ void AddRmsNormKernel(float* x, const bf16* delta, const bf16* weight, bf16* out,
                                 int hidden, float eps) {
  AllowDependentGridsToLaunch();
  WaitForPrerequisiteGrids();
  __shared__ float shared[kRowThreads / 32];
  AddRmsNormBody(x, delta, weight, out, hidden, eps, shared);
}

__global__ void GatherResidualKernel(const float* x, const bf16* delta, const int32_t* rows,
                                     float* out, int hidden) {
  AllowDependentGridsToLaunch();
  WaitForPrerequisiteGrids();
  GatherResidualBody(x, delta, rows, out, hidden);
}

__global__ void RopeAndCacheWriteKernel(const bf16* qkv, const int32_t* positions,
                                        const int64_t* slots, const float2* rope, bf16* q_out,
                                        bf16* layer_cache, KvCacheGeometry g, int num_heads) {
  AllowDependentGridsToLaunch();
  WaitForPrerequisiteGrids();
  RopeAndCacheWriteBody(qkv, positions, slots, rope, q_out, layer_cache, g, num_heads);
}

__global__ void SwiGluKernel(const bf16* gate_up, bf16* out, int64_t n, int inter) {
  AllowDependentGridsToLaunch();
  WaitForPrerequisiteGrids();
  SwiGluBody(gate_up, out, n, inter);
}

int GridFor(int64_t n, int threads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<int>(blocks < 65536 ? (blocks > 0 ? blocks : 1) : 65536);
}

}  // namespace

Status LaunchDummyInit(bf16* out, int64_t n, uint64_t stream_id, double bound, double center,
                       cudaStream_t stream) {
  DummyInitKernel<<<GridFor(n, 256), 256, 0, stream>>>(out, n, stream_id, bound, center);
  PDPOOL_CUDA_RETURN_IF_LAUNCH_FAILED("DummyInitKernel");
  return Status::Ok();
}

Status LaunchEmbedding(const int32_t* tokens, const bf16* embed, float* x, int n, int hidden,
                       cudaStream_t stream) {
  if (n == 0) return Status::Ok();
  PDPOOL_CUDA_RETURN_IF_ERROR(
      LaunchDependent(EmbeddingKernel, n, kRowThreads, 0, stream, tokens, embed, x, hidden));
  return Status::Ok();
}

Status LaunchAddRmsNorm(float* x, const bf16* delta, const bf16* weight, bf16* out, int n,
                        int hidden, float eps, cudaStream_t stream) {
  if (n == 0) return Status::Ok();
  PDPOOL_CUDA_RETURN_IF_ERROR(LaunchDependent(AddRmsNormKernel, n, kRowThreads, 0, stream, x,
                                              delta, weight, out, hidden, eps));
  return Status::Ok();
}

Status LaunchGatherResidual(const float* x, const bf16* delta, const int32_t* rows, float* out,
                            int count, int hidden, cudaStream_t stream) {
  if (count == 0) return Status::Ok();
  PDPOOL_CUDA_RETURN_IF_ERROR(LaunchDependent(GatherResidualKernel, count, kRowThreads, 0, stream,
                                              x, delta, rows, out, hidden));
  return Status::Ok();
}

Status LaunchRopeAndCacheWrite(const bf16* qkv, const int32_t* positions, const int64_t* slots,
                               const float2* rope, bf16* q_out, bf16* layer_cache,
                               const KvCacheGeometry& geometry, int n, int num_heads,
                               cudaStream_t stream) {
  if (n == 0) return Status::Ok();
  PDPOOL_CUDA_RETURN_IF_ERROR(LaunchDependent(RopeAndCacheWriteKernel, n, kRowThreads, 0, stream,
                                              qkv, positions, slots, rope, q_out, layer_cache,
                                              geometry, num_heads));
  return Status::Ok();
}

Status LaunchSwiGlu(const bf16* gate_up, bf16* out, int n, int inter, cudaStream_t stream) {
  if (n == 0) return Status::Ok();
  PDPOOL_CUDA_RETURN_IF_ERROR(LaunchDependent(SwiGluKernel, GridFor(int64_t{n} * inter / 8, 256), 256,
                                              0, stream, gate_up, out, int64_t{n}, inter));
  return Status::Ok();
}

}  // namespace pdpool::agent::cuda
