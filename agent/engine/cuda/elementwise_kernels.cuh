// The bodies of the cuda backend's elementwise and row kernels (elementwise_kernels.cu): dummy
// weights, embedding, fused residual + RMSNorm, the last-token gather, RoPE with the KV cache
// write, SwiGLU. See kernels.h for what each computes. A header so that tests can also run them
// on the host under tests/cuda_emulation; device code only.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "agent/engine/cuda/kernels.h"
#include "agent/engine/cuda/splitmix.cuh"

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
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) dst[i] = __bfloat162float(src[i]);
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
  float sum_sq = 0.0f;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
    float v = xr[i];
    if (delta != nullptr) {
      v += __bfloat162float(delta[row * hidden + i]);
      xr[i] = v;
    }
    sum_sq += v * v;
  }
  const float inv = rsqrtf(BlockSum(sum_sq, shared) / static_cast<float>(hidden) + eps);
  bf16* o = out + row * hidden;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
    o[i] = __float2bfloat16((xr[i] * inv) * __bfloat162float(weight[i]));
  }
}

__device__ __forceinline__ void GatherResidualBody(const float* x, const bf16* delta,
                                                   const int32_t* rows, float* out, int hidden) {
  const int64_t src = rows[blockIdx.x];
  float* o = out + int64_t{blockIdx.x} * hidden;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
    o[i] = x[src * hidden + i] + __bfloat162float(delta[src * hidden + i]);
  }
}

// One block per row; thread t handles rotation pairs (i, i + half) of every head, i = t mod half.
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
  const int rotated_pairs = (num_heads + kvh) * half;
  for (int p = threadIdx.x; p < rotated_pairs; p += blockDim.x) {
    const int head = p / half, i = p - head * half;
    const float a = __bfloat162float(src[head * hd + i]);
    const float b = __bfloat162float(src[head * hd + i + half]);
    const float2 c = cs[i];  // (cos, sin)
    const bf16 lo = __float2bfloat16(a * c.x - b * c.y);
    const bf16 hi = __float2bfloat16(b * c.x + a * c.y);
    if (head < num_heads) {
      bf16* q = q_out + int64_t{r} * num_heads * hd + head * hd;
      q[i] = lo;
      q[i + half] = hi;
    } else {
      bf16* k = layer_cache + g.Offset(0, head - num_heads, slot);
      k[i] = lo;
      k[i + half] = hi;
    }
  }
  const bf16* v_src = src + int64_t{num_heads + kvh} * hd;
  for (int e = threadIdx.x; e < kvh * hd; e += blockDim.x) {
    const int head = e / hd, d = e - head * hd;
    layer_cache[g.Offset(1, head, slot) + d] = v_src[e];
  }
}

__device__ __forceinline__ void SwiGluBody(const bf16* gate_up, bf16* out, int64_t n, int inter) {
  for (int64_t e = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; e < n * inter;
       e += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = e / inter, i = e - r * inter;
    const float gate = __bfloat162float(gate_up[r * 2 * inter + i]);
    const float up = __bfloat162float(gate_up[r * 2 * inter + inter + i]);
    out[e] = __float2bfloat16(gate / (1.0f + __expf(-gate)) * up);
  }
}

}  // namespace pdpool::agent::cuda
