// The bodies of the cuda backend's elementwise and row kernels (elementwise_kernels.cu): dummy
// weights, embedding, fused residual + RMSNorm, the last-token gather, RoPE with the KV cache
// write, SwiGLU. See kernels.h for what each computes. Rows move 8 elements at a time in 16-byte
// accesses (vector_memory.cuh), so hidden and intermediate sizes are multiples of 8 (the backend
// checks at load) and head_dim a multiple of 16. A header so that tests can also run them on the
// host under tests/cuda_emulation; device code only.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "agent/engine/cuda/kernels.h"
#include "agent/engine/cuda/splitmix.cuh"
#include "agent/engine/cuda/vector_memory.cuh"

namespace pdpool::agent::cuda {

constexpr int kRowThreads = 256;

// Same arithmetic as DummyWeights (agent/model/weights.cc), in IEEE double, then float, bf16.
__device__ __forceinline__ void DummyInitBody(bf16* out, int64_t n, uint64_t stream_id,
                                              double bound, double center) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const uint64_t x =
        SplitMix64(stream_id + (static_cast<uint64_t>(i) + 1) * 0x9E3779B97F4A7C15ull);
    const double u = static_cast<double>(x >> 40) * (1.0 / 16777216.0);
    // Explicitly rounded: nvcc would otherwise fuse this into one fma, which the host does not.
    const float value = static_cast<float>(__dadd_rn(center, __dmul_rn(2.0 * u - 1.0, bound)));
    out[i] = __float2bfloat16(value);
  }
}

__device__ __forceinline__ void EmbeddingBody(const int32_t* tokens, const bf16* embed, float* x,
                                              int hidden) {
  const int r = blockIdx.x;
  const bf16* src = embed + int64_t{tokens[r]} * hidden;
  float* dst = x + int64_t{r} * hidden;
  for (int c = threadIdx.x; c < hidden / 8; c += blockDim.x) {
    float v[8];
    Bf16x8ToFloats(Load16(src + 8 * c), v);
    StoreFloats8(dst + 8 * c, v);
  }
}

// Block-wide sum over kRowThreads threads (fixed order: the same inputs give the same bits).
__device__ __forceinline__ float BlockSum(float v, float* shared) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  float total = 0.0f;
  for (int w = 0; w < kRowThreads / 32; ++w) total += shared[w];
  __syncthreads();
  return total;
}

// shared: kRowThreads / 32 floats of shared memory.
__device__ __forceinline__ void AddRmsNormBody(float* x, const bf16* delta, const bf16* weight,
                                               bf16* out, int hidden, float eps, float* shared) {
  const int64_t row = blockIdx.x;
  float* xr = x + row * hidden;
  const int chunks = hidden / 8;
  float sum_sq = 0.0f;
  for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
    float v[8];
    LoadFloats8(xr + 8 * c, v);
    if (delta != nullptr) {
      float d[8];
      Bf16x8ToFloats(Load16(delta + row * hidden + 8 * c), d);
#pragma unroll
      for (int i = 0; i < 8; ++i) v[i] += d[i];
      StoreFloats8(xr + 8 * c, v);
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) sum_sq += v[i] * v[i];
  }
  const float inv = rsqrtf(BlockSum(sum_sq, shared) / static_cast<float>(hidden) + eps);
  bf16* o = out + row * hidden;
  for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
    float v[8], w[8];
    LoadFloats8(xr + 8 * c, v);  // this thread's own chunk, written above
    Bf16x8ToFloats(Load16(weight + 8 * c), w);
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = (v[i] * inv) * w[i];
    Store16(o + 8 * c, FloatsToBf16x8(v));
  }
}

__device__ __forceinline__ void GatherResidualBody(const float* x, const bf16* delta,
                                                   const int32_t* rows, float* out, int hidden) {
  const int64_t src = rows[blockIdx.x];
  float* o = out + int64_t{blockIdx.x} * hidden;
  for (int c = threadIdx.x; c < hidden / 8; c += blockDim.x) {
    float v[8], d[8];
    LoadFloats8(x + src * hidden + 8 * c, v);
    Bf16x8ToFloats(Load16(delta + src * hidden + 8 * c), d);
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] += d[i];
    StoreFloats8(o + 8 * c, v);
  }
}

// One block per row. A work item is 8 rotation pairs (i … i+7, i+half … i+half+7) of one head,
// or 8 elements of one value head.
__device__ __forceinline__ void RopeAndCacheWriteBody(const bf16* qkv, const int32_t* positions,
                                                      const int64_t* slots, const float2* rope,
                                                      bf16* q_out, bf16* layer_cache,
                                                      KvCacheGeometry g, int num_heads) {
  const int r = blockIdx.x;
  const int hd = g.head_dim, half = hd / 2, kvh = g.num_kv_heads;
  const int64_t row_width = int64_t{num_heads + 2 * kvh} * hd;
  const bf16* src = qkv + r * row_width;
  const float2* cs = rope + int64_t{positions[r]} * half;
  const int64_t slot = slots[r];
  // Rotated heads: num_heads query heads, then kvh key heads; then kvh value heads copied.
  const int chunks_per_head = half / 8;
  const int rotated = (num_heads + kvh) * chunks_per_head;
  for (int item = threadIdx.x; item < rotated; item += blockDim.x) {
    const int head = item / chunks_per_head, i = (item - head * chunks_per_head) * 8;
    float a[8], b[8], first[8], second[8];  // (cos, sin) of pairs i … i+3, then i+4 … i+7
    Bf16x8ToFloats(Load16(src + head * hd + i), a);
    Bf16x8ToFloats(Load16(src + head * hd + i + half), b);
    LoadFloats8(&cs[i].x, first);
    LoadFloats8(&cs[i + 4].x, second);
    float lo[8], hi[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const float* c = j < 4 ? first + 2 * j : second + 2 * (j - 4);
      const float cos = c[0], sin = c[1];
      lo[j] = a[j] * cos - b[j] * sin;
      hi[j] = b[j] * cos + a[j] * sin;
    }
    bf16* dst = head < num_heads ? q_out + int64_t{r} * num_heads * hd + head * hd
                                 : layer_cache + g.Offset(0, head - num_heads, slot);
    Store16(dst + i, FloatsToBf16x8(lo));
    Store16(dst + i + half, FloatsToBf16x8(hi));
  }
  const bf16* v_src = src + int64_t{num_heads + kvh} * hd;
  for (int item = threadIdx.x; item < kvh * hd / 8; item += blockDim.x) {
    const int head = item / (hd / 8), d = (item - head * (hd / 8)) * 8;
    Store16(layer_cache + g.Offset(1, head, slot) + d, Load16(v_src + head * hd + d));
  }
}

// Work item: 8 adjacent outputs of one row.
__device__ __forceinline__ void SwiGluBody(const bf16* gate_up, bf16* out, int64_t n, int inter) {
  const int chunks = inter / 8;
  for (int64_t item = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; item < n * chunks;
       item += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = item / chunks, i = (item - r * chunks) * 8;
    float gate[8], up[8];
    Bf16x8ToFloats(Load16(gate_up + r * 2 * inter + i), gate);
    Bf16x8ToFloats(Load16(gate_up + r * 2 * inter + inter + i), up);
#pragma unroll
    for (int j = 0; j < 8; ++j) gate[j] = gate[j] / (1.0f + __expf(-gate[j])) * up[j];
    Store16(out + r * inter + i, FloatsToBf16x8(gate));
  }
}

}  // namespace pdpool::agent::cuda
