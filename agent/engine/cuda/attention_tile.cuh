// The steps both attention kernels (decode_attention_kernel.cuh, prefill_attention_kernel.cuh)
// take for one warp's 16 query rows against one tile of keys, flash-attention style, on bf16
// mma.sync with fp32 accumulators (fragment layouts in warp_mma.cuh):
//   CopyPagedKvTile    cp.async of a tile's K and V rows from the paged cache to shared memory
//   LoadQueryFragments the warp's 16 query rows as A fragments, kept in registers
//   ScoreTile          S = Q·Kᵀ into 16×8 accumulators
//   ScaleAndMaskScores S into log2 units, causal mask
//   OnlineSoftmax      running max and sum per row, S → P in place, the output rescaled
//   AccumulateValues   O += P·V, P's accumulators reused as A fragments
//   StoreAttentionRows O / sum, the tile's output rows
// A lane holds rows g = lane / 4 and g + 8 of the 16; the four lanes of a quad share a row.
// Shared-memory tiles are rows of `ld` bf16 (head_dim + 8: the eight rows one ldmatrix reads
// fall in different banks). Device code only.
#pragma once

#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>

#include "agent/engine/cuda/kernels.h"
#include "agent/engine/cuda/warp_mma.cuh"

namespace pdpool::agent::cuda {

// Starts the copies of keys [key0, key0 + kKeys) of one KV head into the shared-memory tiles at
// shared addresses k_s and v_s, shared by the kThreads threads of the caller (`thread` is this
// one's index among them): the 16-byte chunk `chunk` of key j goes to byte place(j, chunk) of
// each tile. Keys at or past `end` become zeros. The caller commits and waits.
template <int HD, int kKeys, int kThreads, typename Place>
__device__ __forceinline__ void CopyPagedKvTileTo(const bf16* __restrict__ layer_cache,
                                                  const int32_t* __restrict__ table,
                                                  const KvCacheGeometry& g, int kv_head, int key0,
                                                  int end, uint32_t k_s, uint32_t v_s, int thread,
                                                  Place place) {
  constexpr int kChunks = HD / 8;  // 16-byte chunks per row
#pragma unroll
  for (int e = thread; e < kKeys * kChunks; e += kThreads) {
    const int j = e / kChunks, chunk = e % kChunks;
    const int t = key0 + j;
    const bool valid = t < end;
    const bf16* k_src = layer_cache;
    if (valid) {
      const int64_t block = table[t / g.block_size];
      k_src = layer_cache + block * g.block_stride + kv_head * g.head_stride +
              int64_t{t % g.block_size} * HD + chunk * 8;
    }
    const uint32_t at = place(j, chunk);
    CopyAsync16(k_s + at, k_src, valid);
    CopyAsync16(v_s + at, valid ? k_src + g.kv_stride : k_src, valid);
  }
}

// The same into tiles of rows of `ld` bf16 at k_s and v_s.
template <int HD, int kKeys, int kThreads>
__device__ __forceinline__ void CopyPagedKvTile(const bf16* __restrict__ layer_cache,
                                                const int32_t* __restrict__ table,
                                                const KvCacheGeometry& g, int kv_head, int key0,
                                                int end, bf16* k_s, bf16* v_s, int ld, int thread) {
  CopyPagedKvTileTo<HD, kKeys, kThreads>(
      layer_cache, table, g, kv_head, key0, end, SharedAddress(k_s), SharedAddress(v_s), thread,
      [ld](int j, int chunk) { return static_cast<uint32_t>((j * ld + chunk * 8) * 2); });
}

// q_frag[k16] = the A fragment of dims [16·k16, 16·k16 + 16) of the 16 rows at q_rows.
template <int HD>
__device__ __forceinline__ void LoadQueryFragments(uint32_t (&q_frag)[HD / 16][4],
                                                   const bf16* q_rows, int ld, int lane) {
  const int row = (lane & 7) + ((lane >> 3) & 1) * 8;
#pragma unroll
  for (int k16 = 0; k16 < HD / 16; ++k16) {
    LoadMatrixX4(q_frag[k16], SharedAddress(q_rows + row * ld + k16 * 16 + (lane >> 4) * 8));
  }
}

// s[n] = the scores of the 16 rows against keys [8n, 8n + 8) of the tile at k_s.
template <int HD, int kKeys>
__device__ __forceinline__ void ScoreTile(const uint32_t (&q_frag)[HD / 16][4], const bf16* k_s,
                                          int ld, int lane, float (&s)[kKeys / 8][4]) {
#pragma unroll
  for (int n = 0; n < kKeys / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
  for (int k16 = 0; k16 < HD / 16; ++k16) {
#pragma unroll
    for (int n16 = 0; n16 < kKeys / 16; ++n16) {
      // Matrices: keys +0..7 / dims +0..7, keys +0..7 / dims +8..15, then keys +8..15.
      const int key = n16 * 16 + (lane & 7) + (lane >> 4) * 8;
      const int dim = k16 * 16 + ((lane >> 3) & 1) * 8;
      uint32_t b[4];
      LoadMatrixX4(b, SharedAddress(k_s + key * ld + dim));
      MmaBf16(s[2 * n16], q_frag[k16], b[0], b[1]);
      MmaBf16(s[2 * n16 + 1], q_frag[k16], b[2], b[3]);
    }
  }
}

// Scores into log2 units, and −inf for keys past each row's position (causal): s holds the
// scores of this lane's rows at positions pos[0] and pos[1] (= pos[0] + 8) against keys
// [key0, key0 + kKeys). Only a tile reaching past the warp's first row can hold such keys.
template <int kKeys>
__device__ __forceinline__ void ScaleAndMaskScores(float (&s)[kKeys / 8][4], int key0,
                                                   const int (&pos)[2], int lane,
                                                   float scale_log2) {
  const int t4 = lane % 4;
  const bool masked_tile = key0 + kKeys - 1 > pos[0] - lane / 4;
#pragma unroll
  for (int n = 0; n < kKeys / 8; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int key = key0 + n * 8 + 2 * t4 + (e & 1);
      s[n][e] = masked_tile && key > pos[e / 2] ? -INFINITY : s[n][e] * scale_log2;
    }
  }
}

// One tile of the online softmax, scores already in log2 units (masked ones −inf): moves the
// rows' running max on, turns s into the weights exp2(s − max), adds them to this lane's share
// of the running sums (row_sum, summed over the quad at the end) and rescales the output
// accumulated so far. A row with nothing visible yet keeps weight 0 and never becomes NaN.
template <int kScoreBlocks, int kOutBlocks>
__device__ __forceinline__ void OnlineSoftmax(float (&s)[kScoreBlocks][4], float (&row_max)[2],
                                              float (&row_sum)[2], float (&o)[kOutBlocks][4]) {
  float alpha[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float tile_max = -INFINITY;
#pragma unroll
    for (int n = 0; n < kScoreBlocks; ++n) {
      tile_max = fmaxf(tile_max, fmaxf(s[n][2 * h], s[n][2 * h + 1]));
    }
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
    const float new_max = fmaxf(row_max[h], tile_max);
    const float base = new_max == -INFINITY ? 0.0f : new_max;  // exp2(−inf − 0) = 0
    alpha[h] = exp2f(row_max[h] - base);
    row_max[h] = new_max;
    float tile_sum = 0.0f;
#pragma unroll
    for (int n = 0; n < kScoreBlocks; ++n) {
#pragma unroll
      for (int e = 2 * h; e < 2 * h + 2; ++e) {
        s[n][e] = exp2f(s[n][e] - base);
        tile_sum += s[n][e];
      }
    }
    row_sum[h] = row_sum[h] * alpha[h] + tile_sum;
  }
#pragma unroll
  for (int n = 0; n < kOutBlocks; ++n) {
    o[n][0] *= alpha[0];
    o[n][1] *= alpha[0];
    o[n][2] *= alpha[1];
    o[n][3] *= alpha[1];
  }
}

// o[n] += P·V for dims [8n, 8n + 8): the weights' accumulators, two 16×8 blocks per 16 keys,
// are P's A fragments; V (keys × dims at v_s) is read transposed.
template <int HD, int kKeys>
__device__ __forceinline__ void AccumulateValues(const float (&p)[kKeys / 8][4], const bf16* v_s,
                                                 int ld, int lane, float (&o)[HD / 8][4]) {
#pragma unroll
  for (int k16 = 0; k16 < kKeys / 16; ++k16) {
    const uint32_t a[4] = {PackBf16x2(p[2 * k16][0], p[2 * k16][1]),
                           PackBf16x2(p[2 * k16][2], p[2 * k16][3]),
                           PackBf16x2(p[2 * k16 + 1][0], p[2 * k16 + 1][1]),
                           PackBf16x2(p[2 * k16 + 1][2], p[2 * k16 + 1][3])};
#pragma unroll
    for (int n16 = 0; n16 < HD / 16; ++n16) {
      // Matrices: keys +0..7 / dims +0..7, keys +8..15 / dims +0..7, then dims +8..15.
      const int key = k16 * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
      const int dim = n16 * 16 + (lane >> 4) * 8;
      uint32_t b[4];
      LoadMatrixX4Transposed(b, SharedAddress(v_s + key * ld + dim));
      MmaBf16(o[2 * n16], a, b[0], b[1]);
      MmaBf16(o[2 * n16 + 1], a, b[2], b[3]);
    }
  }
}

// The sum of v over the four lanes of this lane's quad (one row's lanes).
__device__ __forceinline__ float QuadSum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// The last step of a query tile: out = O / sum in bf16 for this lane's two rows
// (warp_row0 + g and + 8 of the tile, whose first row is token row `first_row`), skipping rows
// at or past `rows`. out is [token rows, num_heads · HD]; a row's sum is spread over its quad.
template <int HD>
__device__ __forceinline__ void StoreAttentionRows(const float (&o)[HD / 8][4],
                                                   const float (&row_sum)[2], int warp_row0,
                                                   int rows, int lane, int first_row,
                                                   int num_heads, int head, bf16* out) {
  const int g8 = lane / 4, t4 = lane % 4;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const float sum = QuadSum(row_sum[h]);
    const int r = warp_row0 + g8 + 8 * h;
    if (r >= rows) continue;
    const float inv = 1.0f / sum;
    bf16* out_row = out + (int64_t{first_row + r} * num_heads + head) * HD + 2 * t4;
#pragma unroll
    for (int n = 0; n < HD / 8; ++n) {
      *reinterpret_cast<__nv_bfloat162*>(out_row + n * 8) =
          __floats2bfloat162_rn(o[n][2 * h] * inv, o[n][2 * h + 1] * inv);
    }
  }
}

}  // namespace pdpool::agent::cuda
