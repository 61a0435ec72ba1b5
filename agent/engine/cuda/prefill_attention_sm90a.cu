// Causal prefill attention on Hopper's warpgroup MMA (its body is
// prefill_attention_wgmma_kernel.cuh): the kernel and its launcher. Compiled for sm_90a only
// (wgmma exists on no other target; CMakeLists.txt builds this file apart), so it runs on
// compute capability 9.0 (H100, H200, GH200); WgmmaPrefillAttentionSupported says so, and the
// backend takes the mma.sync kernel (prefill_attention.cu) elsewhere.
#include <cuda_bf16.h>

#include <cstdint>

#include "agent/engine/cuda/cuda_check.h"
#include "agent/engine/cuda/grid_dependency.cuh"
#include "agent/engine/cuda/kernels.h"
#include "agent/engine/cuda/prefill_attention_wgmma_kernel.cuh"

namespace pdpool::agent::cuda {
namespace {

template <int HD>
__global__ void __launch_bounds__(kWgmmaPrefillThreads, 2)
    WgmmaPrefillAttentionKernel(const bf16* __restrict__ q, const SeqMeta* __restrict__ meta,
                                const int2* __restrict__ tiles, int num_tiles,
                                const int32_t* __restrict__ block_tables,
                                const bf16* __restrict__ layer_cache, KvCacheGeometry g,
                                int num_heads, float scale_log2, bf16* __restrict__ out) {
  AllowDependentGridsToLaunch();
  WaitForPrerequisiteGrids();
  extern __shared__ __align__(1024) unsigned char smem[];
  WgmmaPrefillAttentionBlock<HD>(q, meta, tiles, num_tiles, block_tables, layer_cache, g,
                                 num_heads, scale_log2, out, smem);
}

template <int HD>
Status Launch(const bf16* q, const SeqMeta* meta, const int2* tiles, int num_tiles,
              const int32_t* block_tables, const bf16* layer_cache, const KvCacheGeometry& g,
              int num_heads, bf16* out, cudaStream_t stream) {
  constexpr size_t kBytes = WgmmaPrefillSmem<HD>::kBytes;  // over the 48 KB default: opt in
  PDPOOL_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(WgmmaPrefillAttentionKernel<HD>,
                                                   cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                   static_cast<int>(kBytes)));
  PDPOOL_CUDA_RETURN_IF_ERROR(LaunchDependent(
      WgmmaPrefillAttentionKernel<HD>, dim3(num_heads, num_tiles), kWgmmaPrefillThreads, kBytes,
      stream, q, meta, tiles, num_tiles, block_tables, layer_cache, g, num_heads,
      AttentionScaleLog2(HD), out));
  return Status::Ok();
}

}  // namespace

bool WgmmaPrefillAttentionSupported(int major, int minor) { return major == 9 && minor == 0; }

Status LaunchPrefillAttentionWgmma(const bf16* q, const SeqMeta* meta, const int2* tiles,
                                   int num_tiles, const int32_t* block_tables,
                                   const bf16* layer_cache, const KvCacheGeometry& geometry,
                                   int num_heads, bf16* out, cudaStream_t stream) {
  if (num_tiles == 0) return Status::Ok();
  if (Status s = CheckPrefillAttentionLaunch(num_tiles, geometry, num_heads); !s.ok()) return s;
  return geometry.head_dim == 128
             ? Launch<128>(q, meta, tiles, num_tiles, block_tables, layer_cache, geometry,
                           num_heads, out, stream)
             : Launch<64>(q, meta, tiles, num_tiles, block_tables, layer_cache, geometry,
                          num_heads, out, stream);
}

}  // namespace pdpool::agent::cuda
