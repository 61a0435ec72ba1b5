// The cuda backend's own kernels (everything but the GEMMs, which are cuBLAS's), as host launch
// functions on a stream. bf16 storage, fp32 arithmetic and accumulation; the residual stream is
// fp32. Every launcher checks its launch and returns a Status naming the kernel. Kernels for
// head_dim 64 and 128 (the Llama shapes); LaunchSupported says which shapes run. Thread-safe
// (no host state); a stream orders the launches.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>

#include "agent/engine/cuda/kv_cache_layout.h"
#include "common/status.h"

namespace pdpool::agent::cuda {

using bf16 = __nv_bfloat16;

// One sequence of a step, in device memory.
struct SeqMeta {
  int32_t q_start = 0;             // first row of its new tokens in the step's token arrays
  int32_t num_new = 0;             // new tokens this step
  int32_t context_len = 0;         // start_position + num_new: keys its last token sees
  int32_t block_table_offset = 0;  // into the step's flat block table
};

// One row of the sampler, in device memory.
struct SampleRowParams {
  float temperature = 0;  // < 1e-6: greedy
  float top_p = 1;
  uint64_t seed = 0;
  int32_t sample_index = 0;
  int32_t pad = 0;
};

// Which (head_dim, group) shapes the attention kernels run; the error names the limit.
Status CheckAttentionShape(int head_dim, int num_heads, int num_kv_heads);
// The softmax scale 1/√head_dim times log2(e): the kernels take scores in log2 units (exp2).
inline float AttentionScaleLog2(int head_dim) {
  return 1.4426950408889634f / std::sqrt(static_cast<float>(head_dim));
}

// out[i] = bf16(DummyWeights' value i of the tensor with this stream, bound and center).
Status LaunchDummyInit(bf16* out, int64_t n, uint64_t stream_id, double bound, double center,
                       cudaStream_t stream);
// x[r] = float(embed[tokens[r]]) for r < n; x is [n, hidden] fp32.
Status LaunchEmbedding(const int32_t* tokens, const bf16* embed, float* x, int n, int hidden,
                       cudaStream_t stream);
// Fused residual + RMSNorm, one row per block: x[r] += delta[r] (when delta is set), then
// out[r] = bf16(x[r] / rms(x[r]) · weight).
Status LaunchAddRmsNorm(float* x, const bf16* delta, const bf16* weight, bf16* out, int n,
                        int hidden, float eps, cudaStream_t stream);
// out[j] = x[rows[j]] + delta[rows[j]] (fp32): the last-token rows that get sampled.
Status LaunchGatherResidual(const float* x, const bf16* delta, const int32_t* rows, float* out,
                            int count, int hidden, cudaStream_t stream);
// qkv is [n, (num_heads + 2·num_kv_heads)·head_dim] (q, then k, then v of each row). Applies
// rotate-half RoPE at positions[r] to q and k (cos/sin table [position][head_dim/2] as float2),
// writes q to q_out [n, num_heads·head_dim] and k, v into the cache slots slots[r] of one
// layer's view (layer_cache = cache + layer · layer_stride).
Status LaunchRopeAndCacheWrite(const bf16* qkv, const int32_t* positions, const int64_t* slots,
                               const float2* rope, bf16* q_out, bf16* layer_cache,
                               const KvCacheGeometry& geometry, int n, int num_heads,
                               cudaStream_t stream);
// gate_up is [n, 2·inter] (gate, then up); out[r][i] = bf16(silu(gate) · up).
Status LaunchSwiGlu(const bf16* gate_up, bf16* out, int n, int inter, cudaStream_t stream);

// Paged decode attention (one new token per sequence), split along the context: grid
// (num_splits, kv heads, num_seqs) of one-warp blocks; each block reads its split of K and V
// once for all the query heads of its KV head (GQA, on tensor cores), then a combine pass
// merges the splits. DecodeAttentionBlocksPerSm is how many such blocks one SM holds at once
// (the occupancy), for choosing num_splits. q and out are
// [rows, num_heads·head_dim]; seq_index lists the SeqMeta entries to run; partial is scratch of
// DecodePartialFloats(num_seqs, num_heads, num_splits, head_dim) floats.
// A partial of one (seq, head, split): head_dim floats of weighted V, then the max, then the sum.
PDPOOL_HOST_DEVICE constexpr int64_t DecodePartialStride(int head_dim) { return head_dim + 2; }
inline int64_t DecodePartialFloats(int num_seqs, int num_heads, int num_splits, int head_dim) {
  return int64_t{num_seqs} * num_heads * num_splits * DecodePartialStride(head_dim);
}
StatusOr<int> DecodeAttentionBlocksPerSm(int head_dim);
Status LaunchDecodeAttention(const bf16* q, const SeqMeta* meta, const int32_t* seq_index,
                             int num_seqs, const int32_t* block_tables, const bf16* layer_cache,
                             const KvCacheGeometry& geometry, int num_heads, int num_splits,
                             float* partial, bf16* out, cudaStream_t stream);
// Causal prefill attention over the paged cache (the new tokens' K/V already written), tiled
// with an online softmax on tensor cores: no T×T matrix exists anywhere. tiles[i] = (SeqMeta
// index, first new-token row of a 64-row query tile), at most 65535 tiles; grid (num_heads,
// num_tiles), the last tile first.
constexpr int kPrefillTileRows = 64;
Status LaunchPrefillAttention(const bf16* q, const SeqMeta* meta, const int2* tiles, int num_tiles,
                              const int32_t* block_tables, const bf16* layer_cache,
                              const KvCacheGeometry& geometry, int num_heads, bf16* out,
                              cudaStream_t stream);
// The same on Hopper's warpgroup MMA (prefill_attention_sm90a.cu), same arguments and results
// but query tiles of kWgmmaPrefillTileRows rows; built for sm_90a, so it runs only where
// WgmmaPrefillAttentionSupported(compute capability).
constexpr int kWgmmaPrefillTileRows = 128;
bool WgmmaPrefillAttentionSupported(int major, int minor);
Status LaunchPrefillAttentionWgmma(const bf16* q, const SeqMeta* meta, const int2* tiles,
                                   int num_tiles, const int32_t* block_tables,
                                   const bf16* layer_cache, const KvCacheGeometry& geometry,
                                   int num_heads, bf16* out, cudaStream_t stream);
// The launch limits both prefill kernels check (shape, at most 65535 tiles).
Status CheckPrefillAttentionLaunch(int num_tiles, const KvCacheGeometry& geometry, int num_heads);

// Decode-step GEMMs without cuBLAS, for at most kSkinnyGemmMaxRows rows (skinny_gemm.cu):
// y[rows, out] = x[rows, in] · Wᵀ, W [out, in] row-major, read once on tensor cores. kBf16 and
// kFloat store y as bf16 or fp32; kSwiGlu takes the fused [gate; up] matrix of 2·out rows and
// stores y[r][i] = bf16(silu(gate) · up) from the bf16-rounded gate and up, what Gemm +
// LaunchSwiGlu give. CheckSkinnyGemm says whether a shape and its pointers can run (in a multiple
// of 8, x and w 16-byte aligned).
constexpr int kSkinnyGemmMaxRows = 8;
enum class SkinnyEpilogue { kBf16, kFloat, kSwiGlu };
Status CheckSkinnyGemm(const bf16* x, const bf16* w, int rows, int out, int in);
Status LaunchSkinnyGemm(const bf16* x, const bf16* w, void* y, int rows, int out, int in,
                        SkinnyEpilogue epilogue, cudaStream_t stream);

// One token per row of logits [rows, vocab] fp32: greedy (ties to the lowest id, NaN skipped)
// or temperature + top-p with the counter-based draw of agent/engine/sampling.h (same seed and
// sample_index, same token, on every run). weights is scratch of rows · vocab floats.
Status LaunchSample(const float* logits, float* weights, int rows, int vocab,
                    const SampleRowParams* params, int32_t* tokens, cudaStream_t stream);

}  // namespace pdpool::agent::cuda
