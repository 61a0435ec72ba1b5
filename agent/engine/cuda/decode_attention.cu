// Paged decode attention on tensor cores, split along the context: the kernels (their bodies
// are decode_attention_kernel.cuh), their launcher and the shape checks.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "agent/engine/cuda/cuda_check.h"
#include "agent/engine/cuda/grid_dependency.cuh"
#include "agent/engine/cuda/decode_attention_kernel.cuh"
#include "agent/engine/cuda/kernels.h"

namespace pdpool::agent::cuda {
namespace {

template <int HD>
__global__ void __launch_bounds__(32)
    DecodeAttentionKernel(const bf16* __restrict__ q, const SeqMeta* __restrict__ meta,
                          const int32_t* __restrict__ seq_index,
                          const int32_t* __restrict__ block_tables,
                          const bf16* __restrict__ layer_cache, KvCacheGeometry g, int num_heads,
                          float scale_log2, int num_splits, float* __restrict__ partial) {
  AllowDependentGridsToLaunch();
  WaitForPrerequisiteGrids();
  __shared__ __align__(128) unsigned char smem[DecodeSmem<HD>::kBytes];
  DecodeAttentionBlock<HD>(q, meta, seq_index, block_tables, layer_cache, g, num_heads, scale_log2,
                           num_splits, partial, smem);
}

template <int HD>
__global__ void __launch_bounds__(HD)
    DecodeCombineKernel(const SeqMeta* __restrict__ meta, const int32_t* __restrict__ seq_index,
                        const float* __restrict__ partial, int num_heads, int num_splits,
                        bf16* __restrict__ out) {
  AllowDependentGridsToLaunch();
  WaitForPrerequisiteGrids();
  DecodeCombineBlock<HD>(meta, seq_index, partial, num_heads, num_splits, out);
}

template <int HD>
Status LaunchDecode(const bf16* q, const SeqMeta* meta, const int32_t* seq_index, int num_seqs,
                    const int32_t* block_tables, const bf16* layer_cache, const KvCacheGeometry& g,
                    int num_heads, int num_splits, float* partial, bf16* out, cudaStream_t stream) {
  const float scale_log2 = AttentionScaleLog2(HD);
  const dim3 grid(num_splits, g.num_kv_heads, num_seqs);
  PDPOOL_CUDA_RETURN_IF_ERROR(LaunchDependent(DecodeAttentionKernel<HD>, grid, 32, 0, stream, q,
                                              meta, seq_index, block_tables, layer_cache, g,
                                              num_heads, scale_log2, num_splits, partial));
  PDPOOL_CUDA_RETURN_IF_ERROR(LaunchDependent(DecodeCombineKernel<HD>, dim3(num_heads, num_seqs),
                                              HD, 0, stream, meta, seq_index, partial, num_heads,
                                              num_splits, out));
  return Status::Ok();
}

}  // namespace

Status CheckAttentionShape(int head_dim, int num_heads, int num_kv_heads) {
  if (head_dim != 64 && head_dim != 128) {
    return Status::InvalidArgument("cuda backend: head_dim " + std::to_string(head_dim) +
                                   " is not supported (64 or 128)");
  }
  if (num_kv_heads < 1 || num_heads % num_kv_heads != 0 ||
      num_heads / num_kv_heads > kDecodeMaxGroup) {
    return Status::InvalidArgument("cuda backend: " + std::to_string(num_heads) +
                                   " query heads over " + std::to_string(num_kv_heads) +
                                   " KV heads: the group must divide evenly and be at most " +
                                   std::to_string(kDecodeMaxGroup));
  }
  return Status::Ok();
}

StatusOr<int> DecodeAttentionBlocksPerSm(int head_dim) {
  int blocks = 0;
  if (head_dim == 128) {
    PDPOOL_CUDA_RETURN_IF_ERROR(
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, DecodeAttentionKernel<128>, 32, 0));
  } else if (head_dim == 64) {
    PDPOOL_CUDA_RETURN_IF_ERROR(
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, DecodeAttentionKernel<64>, 32, 0));
  } else {
    return CheckAttentionShape(head_dim, 1, 1);
  }
  return std::max(blocks, 1);
}

Status LaunchDecodeAttention(const bf16* q, const SeqMeta* meta, const int32_t* seq_index,
                             int num_seqs, const int32_t* block_tables, const bf16* layer_cache,
                             const KvCacheGeometry& geometry, int num_heads, int num_splits,
                             float* partial, bf16* out, cudaStream_t stream) {
  if (num_seqs == 0) return Status::Ok();
  if (Status shape = CheckAttentionShape(geometry.head_dim, num_heads, geometry.num_kv_heads);
      !shape.ok()) {
    return shape;
  }
  if (num_splits < 1 || num_splits > 65535 || num_seqs > 65535) {
    return Status::InvalidArgument("decode attention: num_splits " + std::to_string(num_splits) +
                                   ", num_seqs " + std::to_string(num_seqs) +
                                   " out of the grid's range");
  }
  if (geometry.head_dim == 128) {
    return LaunchDecode<128>(q, meta, seq_index, num_seqs, block_tables, layer_cache, geometry,
                             num_heads, num_splits, partial, out, stream);
  }
  return LaunchDecode<64>(q, meta, seq_index, num_seqs, block_tables, layer_cache, geometry,
                          num_heads, num_splits, partial, out, stream);
}

}  // namespace pdpool::agent::cuda
