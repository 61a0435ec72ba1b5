// The bodies of the paged decode attention kernels (decode_attention.cu): one new token per
// sequence, grouped-query heads, split along the context (flash-decoding), on tensor cores.
// Each attention block is one warp and takes one (split, KV head, sequence). The group's query
// heads are the 16 rows of an m16n8k16 MMA (rows past the group are zeros), so K and V are read
// from the paged cache once for the whole group, 16 keys at a time, through a four-stage
// cp.async pipeline; scores, softmax state and the output stay in registers (the per-tile steps
// are attention_tile.cuh's). Each block writes a partial (weighted V, max, sum) per query head;
// the combine block merges the splits. Memory-bound by design: the bytes are the context's K and
// V, read once, and the loads are 16-byte, coalesced and several tiles deep. A header so that
// tests can also run it on the host under tests/cuda_emulation; device code only.
#pragma once

#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>

#include "agent/engine/cuda/attention_tile.cuh"
#include "agent/engine/cuda/kernels.h"
#include "agent/engine/cuda/warp_mma.cuh"

namespace pdpool::agent::cuda {

constexpr int kDecodeMaxGroup = 16;  // query heads per KV head (405B: 128 / 8): the MMA's rows
constexpr int kDecodeKeys = 16;      // keys per pipeline stage
constexpr int kDecodeStages = 4;

// Shared memory of one block (one warp): the group's query rows, then kDecodeStages × (K, V)
// tiles. Rows are padded by 16 bytes so that the eight rows one ldmatrix reads fall in different
// banks. Under the 48 KB that needs no opt-in, so the launch is the same inside a CUDA graph
// capture.
template <int HD>
struct DecodeSmem {
  static constexpr int kLd = HD + 8;  // bf16 per row
  static constexpr int kQ = kDecodeMaxGroup * kLd;
  static constexpr int kTile = kDecodeKeys * kLd;
  static constexpr size_t kBytes = sizeof(bf16) * (kQ + 2 * kDecodeStages * kTile);
  static __device__ bf16* K(bf16* q_s, int stage) { return q_s + kQ + 2 * stage * kTile; }
  static __device__ bf16* V(bf16* q_s, int stage) { return q_s + kQ + (2 * stage + 1) * kTile; }
};
static_assert(DecodeSmem<128>::kBytes <= 48 * 1024, "decode attention must not need opt-in");

// One block of one warp; smem is DecodeSmem<HD>::kBytes of shared memory.
template <int HD>
__device__ __forceinline__ void DecodeAttentionBlock(
    const bf16* __restrict__ q, const SeqMeta* __restrict__ meta,
    const int32_t* __restrict__ seq_index, const int32_t* __restrict__ block_tables,
    const bf16* __restrict__ layer_cache, const KvCacheGeometry& g, int num_heads, float scale_log2,
    int num_splits, float* __restrict__ partial, unsigned char* smem) {
  using L = DecodeSmem<HD>;
  constexpr int kChunks = HD / 8;
  bf16* q_s = reinterpret_cast<bf16*>(smem);
  const int split = blockIdx.x, kv_head = blockIdx.y, s = blockIdx.z;
  const int group = num_heads / g.num_kv_heads;
  const SeqMeta m = meta[seq_index[s]];
  const int ctx = m.context_len;
  const int split_len =
      ((ctx + num_splits - 1) / num_splits + kDecodeKeys - 1) / kDecodeKeys * kDecodeKeys;
  const int begin = split * split_len;
  const int end = min(ctx, begin + split_len);
  const int num_tiles = end > begin ? (end - begin + kDecodeKeys - 1) / kDecodeKeys : 0;
  const int32_t* table = block_tables + m.block_table_offset;
  const int lane = threadIdx.x;
  const int g8 = lane / 4, t4 = lane % 4;  // fragment row and column pair (warp_mma.cuh)

  // The group's query rows of this sequence's one new token; rows past the group are zeros.
  const int64_t q_row = int64_t{m.q_start + m.num_new - 1} * num_heads + int64_t{kv_head} * group;
  for (int e = lane; e < kDecodeMaxGroup * kChunks; e += 32) {
    const int r = e / kChunks, c = e % kChunks;
    const bool valid = r < group;
    CopyAsync16(SharedAddress(q_s + r * L::kLd + c * 8), valid ? q + (q_row + r) * HD + c * 8 : q,
                valid);
  }
  CommitAsyncCopies();
  // Prologue: the first kDecodeStages − 1 tiles. Every stage commits a group, empty or not, so that
  // WaitAsyncCopies<kDecodeStages − 1> below always means "tile i has landed".
#pragma unroll
  for (int st = 0; st < kDecodeStages - 1; ++st) {
    if (st < num_tiles) {
      CopyPagedKvTile<HD, kDecodeKeys, 32>(layer_cache, table, g, kv_head, begin + st * kDecodeKeys,
                                           end, L::K(q_s, st), L::V(q_s, st), L::kLd, lane);
    }
    CommitAsyncCopies();
  }

  uint32_t q_frag[HD / 16][4];
  float o[HD / 8][4];
#pragma unroll
  for (int n = 0; n < HD / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float row_max[2] = {-INFINITY, -INFINITY};  // rows g8 and g8 + 8
  float row_sum[2] = {0.0f, 0.0f};            // this lane's share, summed over the quad at the end

  for (int i = 0; i < num_tiles; ++i) {
    const int ahead = i + kDecodeStages - 1;
    if (ahead < num_tiles) {
      CopyPagedKvTile<HD, kDecodeKeys, 32>(
          layer_cache, table, g, kv_head, begin + ahead * kDecodeKeys, end,
          L::K(q_s, ahead % kDecodeStages), L::V(q_s, ahead % kDecodeStages), L::kLd, lane);
    }
    CommitAsyncCopies();
    WaitAsyncCopies<kDecodeStages - 1>();
    __syncwarp();
    if (i == 0) LoadQueryFragments<HD>(q_frag, q_s, L::kLd, lane);
    float sc[kDecodeKeys / 8][4];
    ScoreTile<HD, kDecodeKeys>(q_frag, L::K(q_s, i % kDecodeStages), L::kLd, lane, sc);
    // Log2 units; keys past the split's end are masked.
    const int key0 = begin + i * kDecodeKeys;
#pragma unroll
    for (int n = 0; n < kDecodeKeys / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = key0 + n * 8 + 2 * t4 + (e & 1);
        sc[n][e] = key < end ? sc[n][e] * scale_log2 : -INFINITY;
      }
    }
    OnlineSoftmax(sc, row_max, row_sum, o);
    AccumulateValues<HD, kDecodeKeys>(sc, L::V(q_s, i % kDecodeStages), L::kLd, lane, o);
    __syncwarp();  // this stage is refilled kDecodeStages − 1 tiles from now
  }
  WaitAsyncCopies<0>();  // no copy may land after the block exits

  // Partials of the group's rows; an empty split writes (0, −inf, 0), which the combine weighs
  // by zero.
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const float sum = QuadSum(row_sum[h]);
    const int r = g8 + 8 * h;
    if (r >= group) continue;
    float* out = partial + ((int64_t{s} * num_heads + kv_head * group + r) * num_splits + split) *
                               DecodePartialStride(HD);
#pragma unroll
    for (int n = 0; n < HD / 8; ++n) {
      *reinterpret_cast<float2*>(out + n * 8 + 2 * t4) = make_float2(o[n][2 * h], o[n][2 * h + 1]);
    }
    if (t4 == 0) {
      out[HD] = row_max[h];
      out[HD + 1] = sum;
    }
  }
}

// One block per (head, seq): out = Σ_s 2^(max_s − M) · acc_s / Σ_s 2^(max_s − M) · sum_s.
template <int HD>
__device__ __forceinline__ void DecodeCombineBlock(const SeqMeta* __restrict__ meta,
                                                   const int32_t* __restrict__ seq_index,
                                                   const float* __restrict__ partial, int num_heads,
                                                   int num_splits, bf16* __restrict__ out) {
  const int head = blockIdx.x, s = blockIdx.y, tid = threadIdx.x;
  const float* p = partial + (int64_t{s} * num_heads + head) * num_splits * DecodePartialStride(HD);
  float global_max = -INFINITY;
  for (int k = 0; k < num_splits; ++k)
    global_max = fmaxf(global_max, p[k * DecodePartialStride(HD) + HD]);
  float numerator = 0.0f, denominator = 0.0f;
  for (int k = 0; k < num_splits; ++k) {
    const float* part = p + k * DecodePartialStride(HD);
    if (part[HD] == -INFINITY) continue;
    const float w = exp2f(part[HD] - global_max);
    numerator += w * part[tid];
    denominator += w * part[HD + 1];
  }
  const SeqMeta m = meta[seq_index[s]];
  const int64_t row = m.q_start + m.num_new - 1;
  out[(row * num_heads + head) * HD + tid] = __float2bfloat16(numerator / denominator);
}

}  // namespace pdpool::agent::cuda
