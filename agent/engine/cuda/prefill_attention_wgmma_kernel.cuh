// The body of the causal prefill attention kernel for Hopper (prefill_attention_sm90a.cu), on
// warpgroup MMA (wgmma, warpgroup_mma.cuh). Same work split and results as the mma.sync kernel
// (prefill_attention_kernel.cuh): a block takes a tile of query rows of one sequence and one query
// head, walks the keys in 64-token tiles up to its last row's position with an online softmax,
// and nothing of size T×T exists. What differs is where the operands live, and the tile size:
//   S = Q·Kᵀ is one m64n64k16 wgmma per 16 dims, A (Q) and B (K) read by the tensor cores
//     straight from 128-byte-swizzled shared memory, so no warp loads K into registers;
//   O += P·V is one m64nHDk16 wgmma per 16 keys, P from the score registers (the accumulator
//     layout is the A fragment layout) and V from shared memory as an N-major B.
// The block is two warpgroups (8 warps, 256 threads) and 128 query rows (kWgmmaPrefillTileRows),
// so each K/V tile it copies serves twice the rows of the mma.sync kernel's 64: half the L2
// traffic per FLOP. Warpgroup i owns rows 64i … 64i+63 as its MMAs' M, its warp w rows
// 64i + 16w … +15, exactly the mma.sync kernel's per-warp rows, so the softmax and the per-lane
// bookkeeping are attention_tile.cuh's. K/V tiles are double-buffered with cp.async. A header
// so that tests can also run it on the host under tests/cuda_emulation; device code only.
#pragma once

#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>

#include "agent/engine/cuda/attention_tile.cuh"
#include "agent/engine/cuda/kernels.h"
#include "agent/engine/cuda/warp_mma.cuh"
#include "agent/engine/cuda/warpgroup_mma.cuh"

namespace pdpool::agent::cuda {

constexpr int kWgmmaPrefillKeys = 64;  // keys per tile: the N of S = Q·Kᵀ
constexpr int kWgmmaPrefillThreads = kWgmmaPrefillTileRows / 64 * 128;  // a warpgroup per 64 rows

// Shared memory of one block, every tile 128-byte swizzled: a tile of 64 rows × HD is HD / 64
// regions of 64 rows × 128 bytes (64 bf16 per row), each 8 KB and 1024-byte aligned. One Q tile
// per warpgroup, then two stages of (K, V). kBytes includes 1 KB of slack to align the base to
// 1024 bytes.
template <int HD>
struct WgmmaPrefillSmem {
  static constexpr int kGroups = kWgmmaPrefillTileRows / 64;
  static constexpr uint32_t kRegion = 64 * 128;  // bytes: 64 rows × 64 bf16
  static constexpr uint32_t kTile = HD / 64 * kRegion;
  static constexpr uint32_t Q(int group) { return kTile * group; }
  static constexpr uint32_t K(int stage) { return kTile * (kGroups + 2 * stage); }
  static constexpr uint32_t V(int stage) { return kTile * (kGroups + 1 + 2 * stage); }
  static constexpr size_t kBytes = (kGroups + 4) * size_t{kTile} + 1024;
};
static_assert(WgmmaPrefillSmem<64>::kTile % 1024 == 0 && WgmmaPrefillSmem<128>::kTile % 1024 == 0,
              "every tile starts a 1024-byte swizzle pattern");

// Byte offset, inside a swizzled tile, of the 16-byte chunk `chunk` (8 bf16) of row `row`.
template <int HD>
__device__ __forceinline__ uint32_t SwizzledTileOffset(int row, int chunk) {
  return static_cast<uint32_t>(chunk / 8) * WgmmaPrefillSmem<HD>::kRegion +
         Swizzle128Offset(row, (chunk % 8) * 8);
}

// One block of kWgmmaPrefillThreads threads; smem is WgmmaPrefillSmem<HD>::kBytes of shared
// memory. Arguments as PrefillAttentionBlock's.
template <int HD>
__device__ __forceinline__ void WgmmaPrefillAttentionBlock(
    const bf16* __restrict__ q, const SeqMeta* __restrict__ meta, const int2* __restrict__ tiles,
    int num_tiles, const int32_t* __restrict__ block_tables, const bf16* __restrict__ layer_cache,
    const KvCacheGeometry& g, int num_heads, float scale_log2, bf16* __restrict__ out,
    unsigned char* smem) {
  using L = WgmmaPrefillSmem<HD>;
  constexpr int kChunks = HD / 8;
  // The swizzle pattern is anchored at 1024-byte boundaries of the shared window.
  const uint32_t base = (SharedAddress(smem) + 1023u) & ~1023u;

  const int head = blockIdx.x;
  const int2 tile = tiles[num_tiles - 1 - blockIdx.y];
  const SeqMeta m = meta[tile.x];
  const int kv_head = head / (num_heads / g.num_kv_heads);
  const int rows = min(kWgmmaPrefillTileRows, m.num_new - tile.y);  // valid query rows
  const int first_pos = m.context_len - m.num_new + tile.y;    // position of row 0
  const int key_end = first_pos + rows;                        // keys [0, key_end) are visible
  const int num_key_tiles = (key_end + kWgmmaPrefillKeys - 1) / kWgmmaPrefillKeys;
  const int32_t* table = block_tables + m.block_table_offset;
  const int group = threadIdx.x / 128;  // this thread's warpgroup
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g8 = lane / 4;  // fragment row (warpgroup_mma.cuh)
  const int warp_row0 = warp * 16;  // = 64 · group + 16 · (warp within the warpgroup)
  const int pos[2] = {first_pos + warp_row0 + g8, first_pos + warp_row0 + g8 + 8};

  // Stage 0: the Q tiles (rows past the tile's end are zeros) and the first K/V tile.
  for (int e = threadIdx.x; e < kWgmmaPrefillTileRows * kChunks; e += kWgmmaPrefillThreads) {
    const int r = e / kChunks, c = e % kChunks;
    const bool valid = r < rows;
    const bf16* src =
        valid ? q + (int64_t{m.q_start + tile.y + r} * num_heads + head) * HD + c * 8 : q;
    CopyAsync16(base + L::Q(r / 64) + SwizzledTileOffset<HD>(r % 64, c), src, valid);
  }
  const auto swizzled = [](int row, int chunk) { return SwizzledTileOffset<HD>(row, chunk); };
  CopyPagedKvTileTo<HD, kWgmmaPrefillKeys, kWgmmaPrefillThreads>(
      layer_cache, table, g, kv_head, 0, key_end, base + L::K(0), base + L::V(0), threadIdx.x,
      swizzled);
  CommitAsyncCopies();

  // Accumulators in the wgmma D layout, which is attention_tile.cuh's [8-column block][4].
  float o[HD / 8][4];
#pragma unroll
  for (int n = 0; n < HD / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float row_max[2] = {-INFINITY, -INFINITY};
  float row_sum[2] = {0.0f, 0.0f};

  for (int kt = 0; kt < num_key_tiles; ++kt) {
    const int stage = kt & 1;
    if (kt + 1 < num_key_tiles) {
      CopyPagedKvTileTo<HD, kWgmmaPrefillKeys, kWgmmaPrefillThreads>(
          layer_cache, table, g, kv_head, (kt + 1) * kWgmmaPrefillKeys, key_end,
          base + L::K(stage ^ 1), base + L::V(stage ^ 1), threadIdx.x, swizzled);
      CommitAsyncCopies();
      WaitAsyncCopies<1>();
    } else {
      WaitAsyncCopies<0>();
    }
    FenceProxyAsyncShared();  // the copies, written through the generic proxy, to wgmma
    __syncthreads();

    // S = Q·Kᵀ: K-major A and B, 16 dims (32 bytes of a swizzled row) per step.
    float s[kWgmmaPrefillKeys / 8][4];
    auto& s_flat = reinterpret_cast<float(&)[kWgmmaPrefillKeys / 2]>(s);
    auto& o_flat = reinterpret_cast<float(&)[HD / 2]>(o);
    WarpgroupFenceOperands(s_flat);
    WarpgroupFence();
#pragma unroll
    for (int k16 = 0; k16 < HD / 16; ++k16) {
      const uint32_t step = static_cast<uint32_t>(k16 / 4) * L::kRegion + (k16 % 4) * 32u;
      WarpgroupMmaSS64<false>(s_flat, Swizzle128Descriptor(base + L::Q(group) + step, 16, 1024),
                              Swizzle128Descriptor(base + L::K(stage) + step, 16, 1024),
                              k16 > 0);
    }
    WarpgroupCommit();
    WarpgroupWait<0>();
    WarpgroupFenceOperands(s_flat);

    ScaleAndMaskScores<kWgmmaPrefillKeys>(s, kt * kWgmmaPrefillKeys, pos, lane, scale_log2);
    OnlineSoftmax(s, row_max, row_sum, o);

    // O += P·V: P's A fragments from the weights, V as an N-major B (16 keys = 2 × 8 rows of
    // 128 bytes per step; the next 64 dims one region further).
    // All of P is packed before the first wgmma: registers written between the MMAs of one batch
    // would make the compiler fence each of them.
    uint32_t p[kWgmmaPrefillKeys / 16][4];
#pragma unroll
    for (int k16 = 0; k16 < kWgmmaPrefillKeys / 16; ++k16) {
      p[k16][0] = PackBf16x2(s[2 * k16][0], s[2 * k16][1]);
      p[k16][1] = PackBf16x2(s[2 * k16][2], s[2 * k16][3]);
      p[k16][2] = PackBf16x2(s[2 * k16 + 1][0], s[2 * k16 + 1][1]);
      p[k16][3] = PackBf16x2(s[2 * k16 + 1][2], s[2 * k16 + 1][3]);
    }
    WarpgroupFenceOperands(o_flat);
    WarpgroupFenceOperands(reinterpret_cast<uint32_t(&)[kWgmmaPrefillKeys / 4]>(p));
    WarpgroupFence();
#pragma unroll
    for (int k16 = 0; k16 < kWgmmaPrefillKeys / 16; ++k16) {
      const uint64_t v_desc =
          Swizzle128Descriptor(base + L::V(stage) + k16 * 2048u, L::kRegion, 1024);
      if constexpr (HD == 128) {
        WarpgroupMmaRS128<true>(o_flat, p[k16], v_desc, true);
      } else {
        WarpgroupMmaRS64<true>(o_flat, p[k16], v_desc, true);
      }
    }
    WarpgroupCommit();
    WarpgroupWait<0>();
    WarpgroupFenceOperands(o_flat);
    __syncthreads();  // this stage is refilled by the next iteration's prefetch
  }

  StoreAttentionRows<HD>(o, row_sum, warp_row0, rows, lane, m.q_start + tile.y, num_heads, head,
                         out);
}

}  // namespace pdpool::agent::cuda
