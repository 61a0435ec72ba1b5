// Causal prefill attention on tensor cores: the kernel (its body is
// prefill_attention_kernel.cuh) and its launcher.
#include <cuda_bf16.h>

#include <cstdint>
#include <string>

#include "agent/engine/cuda/cuda_check.h"
#include "agent/engine/cuda/grid_dependency.cuh"
#include "agent/engine/cuda/kernels.h"
#include "agent/engine/cuda/prefill_attention_kernel.cuh"

namespace pdpool::agent::cuda {
namespace {

template <int HD>
__global__ void __launch_bounds__(kPrefillThreads, 2)
    PrefillAttentionKernel(const bf16* __restrict__ q, const SeqMeta* __restrict__ meta,
                           const int2* __restrict__ tiles, int num_tiles,
                           const int32_t* __restrict__ block_tables,
                           const bf16* __restrict__ layer_cache, KvCacheGeometry g, int num_heads,
                           float scale_log2, bf16* __restrict__ out) {
  AllowDependentGridsToLaunch();
  WaitForPrerequisiteGrids();
  extern __shared__ __align__(128) unsigned char smem[];
  PrefillAttentionBlock<HD>(q, meta, tiles, num_tiles, block_tables, layer_cache, g, num_heads,
                            scale_log2, out, smem);
}

template <int HD>
Status LaunchPrefill(const bf16* q, const SeqMeta* meta, const int2* tiles, int num_tiles,
                     const int32_t* block_tables, const bf16* layer_cache, const KvCacheGeometry& g,
                     int num_heads, bf16* out, cudaStream_t stream) {
  constexpr size_t kBytes = PrefillSmem<HD>::kBytes;  // over the 48 KB default: opt in
  PDPOOL_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(PrefillAttentionKernel<HD>,
                                                   cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                   static_cast<int>(kBytes)));
  const float scale_log2 = AttentionScaleLog2(HD);
  PDPOOL_CUDA_RETURN_IF_ERROR(LaunchDependent(PrefillAttentionKernel<HD>, dim3(num_heads, num_tiles),
                                              kPrefillThreads, kBytes, stream, q, meta, tiles,
                                              num_tiles, block_tables, layer_cache, g, num_heads,
                                              scale_log2, out));
  return Status::Ok();
}

}  // namespace

Status CheckPrefillAttentionLaunch(int num_tiles, const KvCacheGeometry& geometry,
                                   int num_heads) {
  if (Status shape = CheckAttentionShape(geometry.head_dim, num_heads, geometry.num_kv_heads);
      !shape.ok()) {
    return shape;
  }
  if (num_tiles > 65535) {
    return Status::InvalidArgument("prefill attention: " + std::to_string(num_tiles) +
                                   " query tiles exceed the grid's 65535");
  }
  return Status::Ok();
}

Status LaunchPrefillAttention(const bf16* q, const SeqMeta* meta, const int2* tiles, int num_tiles,
                              const int32_t* block_tables, const bf16* layer_cache,
                              const KvCacheGeometry& geometry, int num_heads, bf16* out,
                              cudaStream_t stream) {
  if (num_tiles == 0) return Status::Ok();
  if (Status s = CheckPrefillAttentionLaunch(num_tiles, geometry, num_heads); !s.ok()) return s;
  if (geometry.head_dim == 128) {
    return LaunchPrefill<128>(q, meta, tiles, num_tiles, block_tables, layer_cache, geometry,
                              num_heads, out, stream);
  }
  return LaunchPrefill<64>(q, meta, tiles, num_tiles, block_tables, layer_cache, geometry,
                           num_heads, out, stream);
}

}  // namespace pdpool::agent::cuda
