// The steps both attention kernels (decode_attention_kernel.cuh, prefill_attention_kernel.cuh)
// take for one warp's 16 query rows against one tile of keys, flash-attention style, on bf16
// mma.sync with fp32 accumulators (fragment layouts in warp_mma.cuh):
//   CopyPagedKvTile    cp.async of a tile's K and V rows from the paged cache to shared memory
//   LoadQueryFragments the warp's 16 query rows as A fragments, kept in registers
//   ScoreTile          S = Q·Kᵀ into 16×8 accumulators
//   OnlineSoftmax      running max and sum per row, S → P in place, the output rescaled
//   AccumulateValues   O += P·V, P's accumulators reused as A fragments
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

// Starts the copies of keys [key0, key0 + kKeys) of one KV head into k_s and v_s, shared by the
// kThreads threads of the caller (`thread` is this one's index among them); keys at or past
// `end` become zeros. The caller commits and waits.
template <int HD, int kKeys, int kThreads>
__device__ __forceinline__ void CopyPagedKvTile(const bf16* __restrict__ layer_cache,
                                                const int32_t* __restrict__ table,
                                                const KvCacheGeometry& g, int kv_head, int key0,
                                                int end, bf16* k_s, bf16* v_s, int ld, int thread) {
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
    CopyAsync16(SharedAddress(k_s + j * ld + chunk * 8), k_src, valid);
    CopyAsync16(SharedAddress(v_s + j * ld + chunk * 8), valid ? k_src + g.kv_stride : k_src,
                valid);
  }
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

}  // namespace pdpool::agent::cuda
