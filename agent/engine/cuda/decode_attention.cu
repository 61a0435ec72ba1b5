// Paged decode attention (one new token per sequence) with grouped-query heads, split along the
// context (flash-decoding): each block takes one (split, KV head, sequence), reads that split's K
// and V from the paged cache once for all query heads of the group, and writes a partial
// (weighted V, max, sum) per query head; a combine kernel merges the splits. Memory-bound by
// design: the bytes are the context's K and V, read once.
#include <cuda_bf16.h>

#include <cstdint>
#include <string>

#include "agent/engine/cuda/cuda_check.h"
#include "agent/engine/cuda/kernels.h"

namespace pdpool::agent::cuda {
namespace {

constexpr int kMaxGroup = 16;  // query heads per KV head (405B: 128 / 8)

// Partial of one (seq, head, split): head_dim floats of weighted V, then the max, then the sum.
__host__ __device__ constexpr int64_t PartialStride(int head_dim) { return head_dim + 2; }

// HD threads; thread i scores token (tile start + i), then owns dim i of the output.
template <int HD>
__global__ void __launch_bounds__(HD)
    DecodeAttentionKernel(const bf16* __restrict__ q, const SeqMeta* __restrict__ meta,
                          const int32_t* __restrict__ seq_index,
                          const int32_t* __restrict__ block_tables,
                          const bf16* __restrict__ layer_cache, KvCacheGeometry g, int num_heads,
                          float scale_log2, int num_splits, float* __restrict__ partial) {
  constexpr int kTile = HD;
  __shared__ float q_s[kMaxGroup][HD];
  __shared__ float p_s[kMaxGroup][kTile];
  __shared__ float alpha_s[kMaxGroup];
  __shared__ float max_s[kMaxGroup];
  __shared__ float sum_s[kMaxGroup];
  const int split = blockIdx.x, kv_head = blockIdx.y, s = blockIdx.z;
  const int group = num_heads / g.num_kv_heads;
  const SeqMeta m = meta[seq_index[s]];
  const int ctx = m.context_len;
  const int split_len = ((ctx + num_splits - 1) / num_splits + 15) / 16 * 16;
  const int begin = split * split_len;
  const int end = min(ctx, begin + split_len);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  // The query row of this sequence's one new token (scaled so that exp2 gives the softmax).
  const int64_t q_row = int64_t{m.q_start + m.num_new - 1} * num_heads * HD;
  for (int e = tid; e < group * HD; e += HD) {
    const int gh = e / HD, d = e - gh * HD;
    q_s[gh][d] = __bfloat162float(q[q_row + int64_t{kv_head * group + gh} * HD + d]) * scale_log2;
  }
  if (tid < kMaxGroup) {
    max_s[tid] = -INFINITY;
    sum_s[tid] = 0.0f;
  }
  const int32_t* table = block_tables + m.block_table_offset;
  float acc[kMaxGroup];
#pragma unroll
  for (int gh = 0; gh < kMaxGroup; ++gh) acc[gh] = 0.0f;
  __syncthreads();

  for (int tile = begin; tile < end; tile += kTile) {
    const int count = min(kTile, end - tile);
    // 1. Scores of token (tile + tid) for every query head of the group: 16-byte K loads.
    if (tid < count) {
      const int t = tile + tid;
      const int64_t slot = int64_t{table[t / g.block_size]} * g.block_size + t % g.block_size;
      const uint4* k = reinterpret_cast<const uint4*>(layer_cache + g.Offset(0, kv_head, slot));
      float score[kMaxGroup];
#pragma unroll
      for (int gh = 0; gh < kMaxGroup; ++gh) score[gh] = 0.0f;
#pragma unroll 4
      for (int c = 0; c < HD / 8; ++c) {
        const uint4 raw = __ldg(k + c);
        const __nv_bfloat162* pair = reinterpret_cast<const __nv_bfloat162*>(&raw);
        float kf[8];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const float2 f = __bfloat1622float2(pair[j]);
          kf[2 * j] = f.x;
          kf[2 * j + 1] = f.y;
        }
#pragma unroll
        for (int gh = 0; gh < kMaxGroup; ++gh) {
          if (gh < group) {
#pragma unroll
            for (int j = 0; j < 8; ++j) score[gh] += q_s[gh][c * 8 + j] * kf[j];
          }
        }
      }
#pragma unroll
      for (int gh = 0; gh < kMaxGroup; ++gh) {
        if (gh < group) p_s[gh][tid] = score[gh];
      }
    }
    __syncthreads();
    // 2. Online softmax, one warp per query head: scores become weights; the running max and
    // sum move on, and alpha rescales what was accumulated before this tile.
    for (int gh = warp; gh < group; gh += HD / 32) {
      float tile_max = -INFINITY;
      for (int i = lane; i < count; i += 32) tile_max = fmaxf(tile_max, p_s[gh][i]);
      for (int o = 16; o > 0; o >>= 1) {
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, o));
      }
      const float old_max = max_s[gh];
      const float new_max = fmaxf(old_max, tile_max);
      float tile_sum = 0.0f;
      for (int i = lane; i < count; i += 32) {
        const float p = exp2f(p_s[gh][i] - new_max);
        p_s[gh][i] = p;
        tile_sum += p;
      }
      for (int o = 16; o > 0; o >>= 1) tile_sum += __shfl_xor_sync(0xffffffffu, tile_sum, o);
      if (lane == 0) {
        const float alpha = exp2f(old_max - new_max);  // 0 on the first tile (old max −inf)
        alpha_s[gh] = alpha;
        sum_s[gh] = sum_s[gh] * alpha + tile_sum;
        max_s[gh] = new_max;
      }
    }
    __syncthreads();
    // 3. Thread tid: dim tid of the weighted V of every head.
#pragma unroll
    for (int gh = 0; gh < kMaxGroup; ++gh) {
      if (gh < group) acc[gh] *= alpha_s[gh];
    }
    const bf16* v_head = layer_cache + g.Offset(1, kv_head, 0) + tid;
#pragma unroll 8
    for (int i = 0; i < count; ++i) {
      const int t = tile + i;
      const int64_t block = table[t / g.block_size];
      const int in_block = t % g.block_size;
      const float v = __bfloat162float(v_head[block * g.block_stride + int64_t{in_block} * HD]);
#pragma unroll
      for (int gh = 0; gh < kMaxGroup; ++gh) {
        if (gh < group) acc[gh] += p_s[gh][i] * v;
      }
    }
    __syncthreads();  // p_s and alpha_s are rewritten by the next tile
  }
  // Partials; an empty split writes (0, −inf, 0), which the combine weighs by zero.
#pragma unroll
  for (int gh = 0; gh < kMaxGroup; ++gh) {  // constant indices keep acc in registers
    if (gh >= group) break;
    float* out = partial + ((int64_t{s} * num_heads + kv_head * group + gh) * num_splits + split) *
                               PartialStride(HD);
    out[tid] = acc[gh];
    if (tid == 0) {
      out[HD] = max_s[gh];
      out[HD + 1] = sum_s[gh];
    }
  }
}

// One block per (head, seq): out = Σ_s 2^(max_s − M) · acc_s / Σ_s 2^(max_s − M) · sum_s.
template <int HD>
__global__ void __launch_bounds__(HD)
    DecodeCombineKernel(const SeqMeta* __restrict__ meta, const int32_t* __restrict__ seq_index,
                        const float* __restrict__ partial, int num_heads, int num_splits,
                        bf16* __restrict__ out) {
  const int head = blockIdx.x, s = blockIdx.y, tid = threadIdx.x;
  const float* p = partial + (int64_t{s} * num_heads + head) * num_splits * PartialStride(HD);
  float global_max = -INFINITY;
  for (int k = 0; k < num_splits; ++k) global_max = fmaxf(global_max, p[k * PartialStride(HD) + HD]);
  float numerator = 0.0f, denominator = 0.0f;
  for (int k = 0; k < num_splits; ++k) {
    const float* part = p + k * PartialStride(HD);
    if (part[HD] == -INFINITY) continue;
    const float w = exp2f(part[HD] - global_max);
    numerator += w * part[tid];
    denominator += w * part[HD + 1];
  }
  const SeqMeta m = meta[seq_index[s]];
  const int64_t row = m.q_start + m.num_new - 1;
  out[(row * num_heads + head) * HD + tid] = __float2bfloat16(numerator / denominator);
}

template <int HD>
Status LaunchDecode(const bf16* q, const SeqMeta* meta, const int32_t* seq_index, int num_seqs,
                    const int32_t* block_tables, const bf16* layer_cache,
                    const KvCacheGeometry& g, int num_heads, int num_splits, float* partial,
                    bf16* out, cudaStream_t stream) {
  const float scale_log2 = 1.4426950408889634f / sqrtf(static_cast<float>(HD));
  const dim3 grid(num_splits, g.num_kv_heads, num_seqs);
  DecodeAttentionKernel<HD><<<grid, HD, 0, stream>>>(q, meta, seq_index, block_tables,
                                                     layer_cache, g, num_heads, scale_log2,
                                                     num_splits, partial);
  PDPOOL_CUDA_RETURN_IF_LAUNCH_FAILED("DecodeAttentionKernel");
  DecodeCombineKernel<HD><<<dim3(num_heads, num_seqs), HD, 0, stream>>>(
      meta, seq_index, partial, num_heads, num_splits, out);
  PDPOOL_CUDA_RETURN_IF_LAUNCH_FAILED("DecodeCombineKernel");
  return Status::Ok();
}

}  // namespace

Status CheckAttentionShape(int head_dim, int num_heads, int num_kv_heads) {
  if (head_dim != 64 && head_dim != 128) {
    return Status::InvalidArgument("cuda backend: head_dim " + std::to_string(head_dim) +
                                   " is not supported (64 or 128)");
  }
  if (num_kv_heads < 1 || num_heads % num_kv_heads != 0 ||
      num_heads / num_kv_heads > kMaxGroup) {
    return Status::InvalidArgument("cuda backend: " + std::to_string(num_heads) +
                                   " query heads over " + std::to_string(num_kv_heads) +
                                   " KV heads: the group must divide evenly and be at most " +
                                   std::to_string(kMaxGroup));
  }
  return Status::Ok();
}

int64_t DecodePartialFloats(int num_seqs, int num_heads, int num_splits, int head_dim) {
  return int64_t{num_seqs} * num_heads * num_splits * PartialStride(head_dim);
}

Status LaunchDecodeAttention(const bf16* q, const SeqMeta* meta, const int32_t* seq_index,
                             int num_seqs, const int32_t* block_tables, const bf16* layer_cache,
                             const KvCacheGeometry& geometry, int num_heads, int num_splits,
                             float* partial, bf16* out, cudaStream_t stream) {
  if (num_seqs == 0) return Status::Ok();
  if (num_splits < 1 || num_splits > 65535 || num_seqs > 65535) {
    return Status::InvalidArgument("decode attention: num_splits " + std::to_string(num_splits) +
                                   ", num_seqs " + std::to_string(num_seqs) +
                                   " out of the grid's range");
  }
  if (geometry.head_dim == 128) {
    return LaunchDecode<128>(q, meta, seq_index, num_seqs, block_tables, layer_cache, geometry,
                             num_heads, num_splits, partial, out, stream);
  }
  if (geometry.head_dim == 64) {
    return LaunchDecode<64>(q, meta, seq_index, num_seqs, block_tables, layer_cache, geometry,
                            num_heads, num_splits, partial, out, stream);
  }
  return CheckAttentionShape(geometry.head_dim, num_heads, geometry.num_kv_heads);
}

}  // namespace pdpool::agent::cuda
