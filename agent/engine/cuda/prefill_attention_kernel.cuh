// The body of the causal prefill attention kernel (prefill_attention.cu), flash-attention-2
// style: a block takes 64 query rows of one sequence and one query head (16 rows per warp),
// walks the keys in 64-token tiles up to its last row's position, and keeps everything per row
// in registers: the scores, the online softmax (running max and sum) and the output
// accumulator. bf16 mma.sync with fp32 accumulation for S = Q·Kᵀ and O += P·V; K and V tiles
// are copied from the paged cache into shared memory with cp.async, the next tile while this
// one computes. Nothing of size T×T exists; a sequence's earlier context (chunked prefill) is
// read from the cache like its new tokens. A header so that tests can also run it on the host
// under tests/cuda_emulation; device code only.
#pragma once

#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>

#include "agent/engine/cuda/kernels.h"
#include "agent/engine/cuda/warp_mma.cuh"

namespace pdpool::agent::cuda {

constexpr int kPrefillKeys = 64;                             // keys per tile
constexpr int kPrefillThreads = kPrefillTileRows / 16 * 32;  // a warp per 16 query rows

// Shared memory of one block: the Q tile, then K and V tiles in two stages. Rows are padded by
// 16 bytes so that the eight rows one ldmatrix reads fall in different banks.
template <int HD>
struct PrefillSmem {
  static constexpr int kLd = HD + 8;  // bf16 per row
  static constexpr int kTile =
      kPrefillTileRows * kLd;  // bf16 per tile (kPrefillTileRows == kPrefillKeys)
  static constexpr size_t kBytes = sizeof(bf16) * kTile * 5;  // Q, K×2, V×2
  static __device__ bf16* K(bf16* q_s, int stage) { return q_s + (1 + 2 * stage) * kTile; }
  static __device__ bf16* V(bf16* q_s, int stage) { return q_s + (2 + 2 * stage) * kTile; }
};
static_assert(kPrefillTileRows == kPrefillKeys, "Q and K/V tiles share one padded shape");

// Starts the copies of keys [key0, key0 + kPrefillKeys) of one KV head into shared memory; keys at
// or past key_end become zeros (and are masked, being past every valid row's position).
template <int HD>
__device__ __forceinline__ void LoadKvTile(const bf16* __restrict__ layer_cache,
                                           const int32_t* __restrict__ table,
                                           const KvCacheGeometry& g, int kv_head, int key0,
                                           int key_end, bf16* k_s, bf16* v_s) {
  using L = PrefillSmem<HD>;
  constexpr int kChunks = HD / 8;  // 16-byte chunks per row
  constexpr int kPrefillTileRowsPerPass = kPrefillThreads / kChunks;
  const int chunk = threadIdx.x % kChunks;
#pragma unroll
  for (int j = threadIdx.x / kChunks; j < kPrefillKeys; j += kPrefillTileRowsPerPass) {
    const int t = key0 + j;
    const bool valid = t < key_end;
    const bf16* k_src = layer_cache;
    if (valid) {
      const int64_t block = table[t / g.block_size];
      k_src = layer_cache + block * g.block_stride + kv_head * g.head_stride +
              int64_t{t % g.block_size} * HD + chunk * 8;
    }
    CopyAsync16(SharedAddress(k_s + j * L::kLd + chunk * 8), k_src, valid);
    CopyAsync16(SharedAddress(v_s + j * L::kLd + chunk * 8), valid ? k_src + g.kv_stride : k_src,
                valid);
  }
}

// One block of kPrefillThreads threads; smem is PrefillSmem<HD>::kBytes of shared memory.
template <int HD>
__device__ __forceinline__ void PrefillAttentionBlock(
    const bf16* __restrict__ q, const SeqMeta* __restrict__ meta, const int2* __restrict__ tiles,
    int num_tiles, const int32_t* __restrict__ block_tables, const bf16* __restrict__ layer_cache,
    const KvCacheGeometry& g, int num_heads, float scale_log2, bf16* __restrict__ out,
    unsigned char* smem) {
  using L = PrefillSmem<HD>;
  constexpr int kChunks = HD / 8;
  bf16* q_s = reinterpret_cast<bf16*>(smem);

  // Heads vary fastest, so the query heads of one KV head run side by side and share its K/V
  // in L2; the tiles run last first, the longest (most keys) ahead of the short ones.
  const int head = blockIdx.x;
  const int2 tile = tiles[num_tiles - 1 - blockIdx.y];
  const SeqMeta m = meta[tile.x];
  const int kv_head = head / (num_heads / g.num_kv_heads);
  const int rows = min(kPrefillTileRows, m.num_new - tile.y);  // valid query rows
  const int first_pos = m.context_len - m.num_new + tile.y;    // position of row 0
  const int key_end = first_pos + rows;                        // keys [0, key_end) are visible
  const int num_key_tiles = (key_end + kPrefillKeys - 1) / kPrefillKeys;
  const int32_t* table = block_tables + m.block_table_offset;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g8 = lane / 4, t4 = lane % 4;  // fragment row and column pair (warp_mma.cuh)
  const int warp_row0 = warp * 16;
  // Positions of this lane's two rows: warp_row0 + g8 and warp_row0 + g8 + 8.
  const int pos[2] = {first_pos + warp_row0 + g8, first_pos + warp_row0 + g8 + 8};

  // Stage 0: the Q tile (rows past the tile's end are zeros) and the first K/V tile.
  for (int e = threadIdx.x; e < kPrefillTileRows * kChunks; e += kPrefillThreads) {
    const int r = e / kChunks, c = e % kChunks;
    const bool valid = r < rows;
    const bf16* src =
        valid ? q + (int64_t{m.q_start + tile.y + r} * num_heads + head) * HD + c * 8 : q;
    CopyAsync16(SharedAddress(q_s + r * L::kLd + c * 8), src, valid);
  }
  LoadKvTile<HD>(layer_cache, table, g, kv_head, 0, key_end, L::K(q_s, 0), L::V(q_s, 0));
  CommitAsyncCopies();

  uint32_t q_frag[HD / 16][4];
  float o[HD / 8][4];
#pragma unroll
  for (int n = 0; n < HD / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float row_max[2] = {-INFINITY, -INFINITY};
  float row_sum[2] = {0.0f, 0.0f};  // this lane's share; the quad's lanes are summed at the end

  for (int kt = 0; kt < num_key_tiles; ++kt) {
    const int stage = kt & 1;
    if (kt + 1 < num_key_tiles) {
      LoadKvTile<HD>(layer_cache, table, g, kv_head, (kt + 1) * kPrefillKeys, key_end,
                     L::K(q_s, stage ^ 1), L::V(q_s, stage ^ 1));
      CommitAsyncCopies();
      WaitAsyncCopies<1>();
    } else {
      WaitAsyncCopies<0>();
    }
    __syncthreads();
    if (kt == 0) {
#pragma unroll
      for (int k16 = 0; k16 < HD / 16; ++k16) {
        const int row = warp_row0 + (lane & 7) + ((lane >> 3) & 1) * 8;
        LoadMatrixX4(q_frag[k16], SharedAddress(q_s + row * L::kLd + k16 * 16 + (lane >> 4) * 8));
      }
    }
    const bf16* k_s = L::K(q_s, stage);
    const bf16* v_s = L::V(q_s, stage);

    // S = Q·Kᵀ: 16 rows × 64 keys per warp, as eight 16×8 accumulators.
    float s[kPrefillKeys / 8][4];
#pragma unroll
    for (int n = 0; n < kPrefillKeys / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
    for (int k16 = 0; k16 < HD / 16; ++k16) {
#pragma unroll
      for (int n16 = 0; n16 < kPrefillKeys / 16; ++n16) {
        // Matrices: keys +0..7 / dims +0..7, keys +0..7 / dims +8..15, then keys +8..15.
        const int key = n16 * 16 + (lane & 7) + (lane >> 4) * 8;
        const int dim = k16 * 16 + ((lane >> 3) & 1) * 8;
        uint32_t b[4];
        LoadMatrixX4(b, SharedAddress(k_s + key * L::kLd + dim));
        MmaBf16(s[2 * n16], q_frag[k16], b[0], b[1]);
        MmaBf16(s[2 * n16 + 1], q_frag[k16], b[2], b[3]);
      }
    }

    // Scale into log2 units and mask keys past each row's position (only tiles that reach past
    // the warp's first row can hold such keys).
    const int key0 = kt * kPrefillKeys;
    const bool masked_tile = key0 + kPrefillKeys - 1 > pos[0] - g8;
#pragma unroll
    for (int n = 0; n < kPrefillKeys / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = key0 + n * 8 + 2 * t4 + (e & 1);
        s[n][e] = masked_tile && key > pos[e / 2] ? -INFINITY : s[n][e] * scale_log2;
      }
    }
    // Online softmax per row; a row's four lanes (one quad) hold its 64 scores.
    float alpha[2], base[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float tile_max = -INFINITY;
#pragma unroll
      for (int n = 0; n < kPrefillKeys / 8; ++n) {
        tile_max = fmaxf(tile_max, fmaxf(s[n][2 * h], s[n][2 * h + 1]));
      }
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
      const float new_max = fmaxf(row_max[h], tile_max);
      // A row with nothing visible yet keeps weight zero (exp2(−inf − 0) = 0), never NaN.
      base[h] = new_max == -INFINITY ? 0.0f : new_max;
      alpha[h] = exp2f(row_max[h] - base[h]);
      row_max[h] = new_max;
    }
    float tile_sum[2] = {0.0f, 0.0f};
#pragma unroll
    for (int n = 0; n < kPrefillKeys / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[n][e] = exp2f(s[n][e] - base[e / 2]);
        tile_sum[e / 2] += s[n][e];
      }
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) row_sum[h] = row_sum[h] * alpha[h] + tile_sum[h];
#pragma unroll
    for (int n = 0; n < HD / 8; ++n) {
      o[n][0] *= alpha[0];
      o[n][1] *= alpha[0];
      o[n][2] *= alpha[1];
      o[n][3] *= alpha[1];
    }

    // O += P·V: the score accumulators are already P's A fragments (two 16×8 blocks make one
    // 16×16 step); V is read transposed.
#pragma unroll
    for (int k16 = 0; k16 < kPrefillKeys / 16; ++k16) {
      const uint32_t a[4] = {PackBf16x2(s[2 * k16][0], s[2 * k16][1]),
                             PackBf16x2(s[2 * k16][2], s[2 * k16][3]),
                             PackBf16x2(s[2 * k16 + 1][0], s[2 * k16 + 1][1]),
                             PackBf16x2(s[2 * k16 + 1][2], s[2 * k16 + 1][3])};
#pragma unroll
      for (int n16 = 0; n16 < HD / 16; ++n16) {
        // Matrices: keys +0..7 / dims +0..7, keys +8..15 / dims +0..7, then dims +8..15.
        const int key = k16 * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
        const int dim = n16 * 16 + (lane >> 4) * 8;
        uint32_t b[4];
        LoadMatrixX4Transposed(b, SharedAddress(v_s + key * L::kLd + dim));
        MmaBf16(o[2 * n16], a, b[0], b[1]);
        MmaBf16(o[2 * n16 + 1], a, b[2], b[3]);
      }
    }
    __syncthreads();  // this stage is refilled by the next iteration's prefetch
  }

  // out = O / sum, bf16; a row's sum is spread over its quad.
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float sum = row_sum[h];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const int r = warp_row0 + g8 + 8 * h;
    if (r >= rows) continue;
    const float inv = 1.0f / sum;
    bf16* out_row = out + (int64_t{m.q_start + tile.y + r} * num_heads + head) * HD + 2 * t4;
#pragma unroll
    for (int n = 0; n < HD / 8; ++n) {
      *reinterpret_cast<__nv_bfloat162*>(out_row + n * 8) =
          __floats2bfloat162_rn(o[n][2 * h] * inv, o[n][2 * h + 1] * inv);
    }
  }
}

}  // namespace pdpool::agent::cuda
