// Token sampling on the GPU: the kernel (its body is sampling_kernel.cuh) and its launcher.
#include <cuda_runtime.h>

#include <cstdint>

#include "agent/engine/cuda/cuda_check.h"
#include "agent/engine/cuda/grid_dependency.cuh"
#include "agent/engine/cuda/kernels.h"
#include "agent/engine/cuda/sampling_kernel.cuh"

namespace pdpool::agent::cuda {
namespace {

__global__ void __launch_bounds__(kSampleThreads, 1)
    SampleKernel(const float* __restrict__ logits, float* __restrict__ weights_all, int vocab,
                 const SampleRowParams* __restrict__ params, int32_t* __restrict__ tokens) {
  AllowDependentGridsToLaunch();
  WaitForPrerequisiteGrids();
  __shared__ SampleShared shared;
  SampleBlock(logits, weights_all, vocab, params, tokens, shared);
}

}  // namespace

Status LaunchSample(const float* logits, float* weights, int rows, int vocab,
                    const SampleRowParams* params, int32_t* tokens, cudaStream_t stream) {
  if (rows == 0) return Status::Ok();
  PDPOOL_CUDA_RETURN_IF_ERROR(LaunchDependent(SampleKernel, rows, kSampleThreads, 0, stream, logits,
                                              weights, vocab, params, tokens));
  return Status::Ok();
}

}  // namespace pdpool::agent::cuda
