// The body of the causal prefill attention kernel (prefill_attention.cu), flash-attention-2
// style: a block takes 64 query rows of one sequence and one query head (16 rows per warp),
// walks the keys in 64-token tiles up to its last row's position, and keeps everything per row
// in registers: the scores, the online softmax (running max and sum) and the output
// accumulator. bf16 mma.sync with fp32 accumulation for S = Q·Kᵀ and O += P·V; K and V tiles
// are copied from the paged cache into shared memory with cp.async, the next tile while this
// one computes (the per-tile steps are attention_tile.cuh's). Nothing of size T×T exists; a
// sequence's earlier context (chunked prefill) is read from the cache like its new tokens. A
// header so that tests can also run it on the host under tests/cuda_emulation; device code
// only.
#pragma once

#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>

#include "agent/engine/cuda/attention_tile.cuh"
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
  const int g8 = lane / 4;  // fragment row (warp_mma.cuh)
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
  CopyPagedKvTile<HD, kPrefillKeys, kPrefillThreads>(
      layer_cache, table, g, kv_head, 0, key_end, L::K(q_s, 0), L::V(q_s, 0), L::kLd, threadIdx.x);
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
      CopyPagedKvTile<HD, kPrefillKeys, kPrefillThreads>(
          layer_cache, table, g, kv_head, (kt + 1) * kPrefillKeys, key_end, L::K(q_s, stage ^ 1),
          L::V(q_s, stage ^ 1), L::kLd, threadIdx.x);
      CommitAsyncCopies();
      WaitAsyncCopies<1>();
    } else {
      WaitAsyncCopies<0>();
    }
    __syncthreads();
    if (kt == 0) LoadQueryFragments<HD>(q_frag, q_s + warp_row0 * L::kLd, L::kLd, lane);
    float s[kPrefillKeys / 8][4];
    ScoreTile<HD, kPrefillKeys>(q_frag, L::K(q_s, stage), L::kLd, lane, s);

    ScaleAndMaskScores<kPrefillKeys>(s, kt * kPrefillKeys, pos, lane, scale_log2);
    OnlineSoftmax(s, row_max, row_sum, o);
    AccumulateValues<HD, kPrefillKeys>(s, L::V(q_s, stage), L::kLd, lane, o);
    __syncthreads();  // this stage is refilled by the next iteration's prefetch
  }

  StoreAttentionRows<HD>(o, row_sum, warp_row0, rows, lane, m.q_start + tile.y, num_heads, head,
                         out);
}

}  // namespace pdpool::agent::cuda
