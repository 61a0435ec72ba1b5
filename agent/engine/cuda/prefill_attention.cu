// Causal prefill attention over the paged KV cache on tensor cores (bf16 WMMA, fp32
// accumulation), flash-attention style: a block takes 64 query rows of one sequence and one
// query head, walks the keys in 64-token tiles up to its last row's position, and keeps an
// online softmax (running max and sum per row) with the output accumulator in shared memory.
// Nothing of size T×T exists; a sequence's earlier context (chunked prefill) is read from the
// cache like its new tokens.
#include <cuda_bf16.h>
#include <mma.h>

#include <cstdint>
#include <string>

#include "agent/engine/cuda/cuda_check.h"
#include "agent/engine/cuda/kernels.h"

namespace pdpool::agent::cuda {
namespace {

namespace wmma = nvcuda::wmma;

constexpr int kRows = kPrefillTileRows;  // query rows per block (16 per warp)
constexpr int kKeys = 64;                // keys per tile
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;

// Shared-memory layout of one block (leading dimensions padded against bank conflicts; WMMA
// needs multiples of 8 bf16 / 4 floats).
template <int HD>
struct Smem {
  static constexpr int kLdH = HD + 8;      // Q, K, V rows (bf16)
  static constexpr int kLdS = kKeys + 4;   // scores (float)
  static constexpr int kLdP = kKeys + 8;   // weights (bf16)
  static constexpr int kLdO = HD + 4;      // output accumulator (float)
  static constexpr size_t kQ = 0;
  static constexpr size_t kK = kQ + sizeof(bf16) * kRows * kLdH;
  static constexpr size_t kV = kK + sizeof(bf16) * kKeys * kLdH;
  static constexpr size_t kS = kV + sizeof(bf16) * kKeys * kLdH;
  static constexpr size_t kP = kS + sizeof(float) * kRows * kLdS;
  static constexpr size_t kO = kP + sizeof(bf16) * kRows * kLdP;
  static constexpr size_t kMax = kO + sizeof(float) * kRows * kLdO;
  static constexpr size_t kSum = kMax + sizeof(float) * kRows;
  static constexpr size_t kBytes = kSum + sizeof(float) * kRows;
};

template <int HD>
__global__ void __launch_bounds__(kThreads)
    PrefillAttentionKernel(const bf16* __restrict__ q, const SeqMeta* __restrict__ meta,
                           const int2* __restrict__ tiles, const int32_t* __restrict__ block_tables,
                           const bf16* __restrict__ layer_cache, KvCacheGeometry g, int num_heads,
                           float scale_log2, bf16* __restrict__ out) {
  using L = Smem<HD>;
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* q_s = reinterpret_cast<bf16*>(smem + L::kQ);
  bf16* k_s = reinterpret_cast<bf16*>(smem + L::kK);
  bf16* v_s = reinterpret_cast<bf16*>(smem + L::kV);
  float* s_s = reinterpret_cast<float*>(smem + L::kS);
  bf16* p_s = reinterpret_cast<bf16*>(smem + L::kP);
  float* o_s = reinterpret_cast<float*>(smem + L::kO);
  float* max_s = reinterpret_cast<float*>(smem + L::kMax);
  float* sum_s = reinterpret_cast<float*>(smem + L::kSum);

  const int2 tile = tiles[blockIdx.x];
  const SeqMeta m = meta[tile.x];
  const int head = blockIdx.y;
  const int kv_head = head / (num_heads / g.num_kv_heads);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int rows = min(kRows, m.num_new - tile.y);            // valid query rows
  const int first_pos = m.context_len - m.num_new + tile.y;   // position of row 0
  const int key_end = first_pos + rows;                       // keys [0, key_end) are visible
  const int32_t* table = block_tables + m.block_table_offset;
  constexpr int kChunks = HD / 8;  // 16-byte chunks per row

  // Q tile and the accumulators.
  for (int e = tid; e < kRows * kChunks; e += kThreads) {
    const int r = e / kChunks, c = e - r * kChunks;
    uint4 value = make_uint4(0, 0, 0, 0);
    if (r < rows) {
      const int64_t row = m.q_start + tile.y + r;
      value = reinterpret_cast<const uint4*>(q + (row * num_heads + head) * HD)[c];
    }
    reinterpret_cast<uint4*>(q_s + r * L::kLdH)[c] = value;
  }
  for (int e = tid; e < kRows * HD; e += kThreads) o_s[(e / HD) * L::kLdO + e % HD] = 0.0f;
  if (tid < kRows) {
    max_s[tid] = -INFINITY;
    sum_s[tid] = 0.0f;
  }

  for (int key0 = 0; key0 < key_end; key0 += kKeys) {
    __syncthreads();  // the previous tile's K, V are no longer read
    for (int e = tid; e < kKeys * kChunks; e += kThreads) {
      const int j = e / kChunks, c = e - j * kChunks;
      const int t = key0 + j;
      uint4 kv_k = make_uint4(0, 0, 0, 0), kv_v = make_uint4(0, 0, 0, 0);
      if (t < key_end) {
        const int64_t slot = int64_t{table[t / g.block_size]} * g.block_size + t % g.block_size;
        kv_k = reinterpret_cast<const uint4*>(layer_cache + g.Offset(0, kv_head, slot))[c];
        kv_v = reinterpret_cast<const uint4*>(layer_cache + g.Offset(1, kv_head, slot))[c];
      }
      reinterpret_cast<uint4*>(k_s + j * L::kLdH)[c] = kv_k;
      reinterpret_cast<uint4*>(v_s + j * L::kLdH)[c] = kv_v;
    }
    __syncthreads();

    // S = Q Kᵀ for this warp's 16 rows: 4 column tiles × HD/16 steps.
    const int row0 = warp * 16;
    for (int n0 = 0; n0 < kKeys; n0 += 16) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::fill_fragment(acc, 0.0f);
#pragma unroll
      for (int k0 = 0; k0 < HD; k0 += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> b;
        wmma::load_matrix_sync(a, q_s + row0 * L::kLdH + k0, L::kLdH);
        wmma::load_matrix_sync(b, k_s + n0 * L::kLdH + k0, L::kLdH);
        wmma::mma_sync(acc, a, b, acc);
      }
      wmma::store_matrix_sync(s_s + row0 * L::kLdS + n0, acc, L::kLdS, wmma::mem_row_major);
    }
    __syncwarp();

    // Online softmax on the warp's rows: two lanes per row, 32 keys each.
    {
      const int r = row0 + lane / 2, half = lane % 2;
      const int pos = first_pos + r;  // causal limit of this row
      float* srow = s_s + r * L::kLdS + half * 32;
      float tile_max = -INFINITY;
      for (int j = 0; j < 32; ++j) {
        const int t = key0 + half * 32 + j;
        const float v = (r < rows && t <= pos) ? srow[j] * scale_log2 : -INFINITY;
        srow[j] = v;
        tile_max = fmaxf(tile_max, v);
      }
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
      const float old_max = max_s[r];
      const float new_max = fmaxf(old_max, tile_max);
      // A row with nothing visible yet (padding rows) keeps weight zero and alpha one.
      const bool empty = new_max == -INFINITY;
      float tile_sum = 0.0f;
      bf16* prow = p_s + r * L::kLdP + half * 32;
      for (int j = 0; j < 32; ++j) {
        const float p = empty ? 0.0f : exp2f(srow[j] - new_max);
        prow[j] = __float2bfloat16(p);
        tile_sum += p;
      }
      tile_sum += __shfl_xor_sync(0xffffffffu, tile_sum, 1);
      const float alpha = empty ? 1.0f : exp2f(old_max - new_max);
      __syncwarp();
      if (half == 0) {
        max_s[r] = new_max;
        sum_s[r] = sum_s[r] * alpha + tile_sum;
      }
      // Rescale this row's accumulator half by half.
      float* orow = o_s + r * L::kLdO;
      for (int d = half; d < HD; d += 2) orow[d] *= alpha;
    }
    __syncwarp();

    // O += P V for the warp's rows: HD/16 column tiles × 4 steps over the keys.
    for (int n0 = 0; n0 < HD; n0 += 16) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::load_matrix_sync(acc, o_s + row0 * L::kLdO + n0, L::kLdO, wmma::mem_row_major);
#pragma unroll
      for (int k0 = 0; k0 < kKeys; k0 += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> b;
        wmma::load_matrix_sync(a, p_s + row0 * L::kLdP + k0, L::kLdP);
        wmma::load_matrix_sync(b, v_s + k0 * L::kLdH + n0, L::kLdH);
        wmma::mma_sync(acc, a, b, acc);
      }
      wmma::store_matrix_sync(o_s + row0 * L::kLdO + n0, acc, L::kLdO, wmma::mem_row_major);
    }
  }
  __syncthreads();
  for (int e = tid; e < rows * HD; e += kThreads) {
    const int r = e / HD, d = e - r * HD;
    const int64_t row = m.q_start + tile.y + r;
    out[(row * num_heads + head) * HD + d] = __float2bfloat16(o_s[r * L::kLdO + d] / sum_s[r]);
  }
}

template <int HD>
Status LaunchPrefill(const bf16* q, const SeqMeta* meta, const int2* tiles, int num_tiles,
                     const int32_t* block_tables, const bf16* layer_cache,
                     const KvCacheGeometry& g, int num_heads, bf16* out, cudaStream_t stream) {
  constexpr size_t kBytes = Smem<HD>::kBytes;  // over the 48 KB default: opt in
  PDPOOL_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(PrefillAttentionKernel<HD>,
                                                   cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                   static_cast<int>(kBytes)));
  const float scale_log2 = 1.4426950408889634f / sqrtf(static_cast<float>(HD));
  PrefillAttentionKernel<HD><<<dim3(num_tiles, num_heads), kThreads, kBytes, stream>>>(
      q, meta, tiles, block_tables, layer_cache, g, num_heads, scale_log2, out);
  PDPOOL_CUDA_RETURN_IF_LAUNCH_FAILED("PrefillAttentionKernel");
  return Status::Ok();
}

}  // namespace

Status LaunchPrefillAttention(const bf16* q, const SeqMeta* meta, const int2* tiles,
                              int num_tiles, const int32_t* block_tables,
                              const bf16* layer_cache, const KvCacheGeometry& geometry,
                              int num_heads, bf16* out, cudaStream_t stream) {
  if (num_tiles == 0) return Status::Ok();
  if (num_heads > 65535) return Status::InvalidArgument("prefill attention: too many heads");
  if (geometry.head_dim == 128) {
    return LaunchPrefill<128>(q, meta, tiles, num_tiles, block_tables, layer_cache, geometry,
                              num_heads, out, stream);
  }
  if (geometry.head_dim == 64) {
    return LaunchPrefill<64>(q, meta, tiles, num_tiles, block_tables, layer_cache, geometry,
                             num_heads, out, stream);
  }
  return CheckAttentionShape(geometry.head_dim, num_heads, geometry.num_kv_heads);
}

}  // namespace pdpool::agent::cuda
