// The body of the skinny GEMM (skinny_gemm.cu): y[rows, out] = x[rows, in] · Wᵀ for decode steps
// of at most kSkinnyGemmMaxRows rows, where the product is a pass over the weights and nothing
// else. W (Hugging Face [out, in] row-major) is read once, straight from global memory into
// tensor-core fragments with 16-byte streaming loads (no shared-memory staging, several loads in
// flight per lane); the step's rows are the 8 columns of an m16n8k16 MMA.
//
// Each block owns 16 weight rows (the MMA's 16 rows) and splits the reduction over its
// kSkinnyWarps warps, which are summed through shared memory in a fixed order (the same inputs
// give the same bits). The reduction index k is permuted so that lane (g, t) loads 8 consecutive
// elements: for every 32-element step, lane (g, t) reads W[row g][8t .. 8t+7],
// W[row g+8][8t .. 8t+7] and x[row g][8t .. 8t+7], and fragment positions (2t, 2t+1, 2t+8, 2t+9)
// of the first MMA take physical elements 8t+0 … 8t+3, those of the second MMA 8t+4 … 8t+7. A and
// B use the same permutation, so the sum over k is unchanged.
//
// Epilogues: bf16 or fp32 output; or SwiGLU, where W is the fused [gate; up] matrix of
// 2·out rows and a block's fragment rows g and g+8 are gate row i and up row out + i, so one lane
// holds both and writes bf16(silu(bf16 gate) · bf16 up), what the GEMM + SwiGluKernel pair gives.
// Launched as a dependent grid (grid_dependency.cuh): the weights do not depend on the kernels
// before it, so each warp starts its first steps' weight lines towards L2 while the previous
// kernel finishes, and waits for that kernel only before it reads x.
// A header so that tests can also run it on the host under tests/cuda_emulation; device code only.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <cstring>

#include "agent/engine/cuda/grid_dependency.cuh"
#include "agent/engine/cuda/kernels.h"
#include "agent/engine/cuda/vector_memory.cuh"
#include "agent/engine/cuda/warp_mma.cuh"

namespace pdpool::agent::cuda {

constexpr int kSkinnyWarps = 8;   // the reduction is split over a block's warps
constexpr int kSkinnyUnroll = 4;  // 32-element steps whose loads each lane has in flight
constexpr int kSkinnyThreads = kSkinnyWarps * 32;

// Per warp and lane, the four accumulators of its share of the reduction.
struct SkinnyShared {
  float partial[kSkinnyWarps][32][4];
};

// 16 bytes of weights that this step reads once: not kept in L1.
__device__ __forceinline__ uint4 LoadStreaming16(const bf16* p) {
#if defined(PDPOOL_CUDA_EMULATION)
  CheckAligned16(p);
  uint4 v;
  memcpy(&v, p, sizeof(v));
  return v;
#else
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
#endif
}

__device__ __forceinline__ float RoundToBf16(float v) {
  return __bfloat162float(__float2bfloat16(v));
}

// One block of kSkinnyThreads threads; block b owns weight rows [16b, 16b + 16) (SwiGLU: gate
// rows [8b, 8b + 8) and their up rows). in % 8 == 0, and w, x 16-byte aligned (the launcher
// checks). Rows of x past `rows` are not read.
template <SkinnyEpilogue E>
__device__ __forceinline__ void SkinnyGemmBlock(const bf16* __restrict__ x,
                                                const bf16* __restrict__ w, void* __restrict__ y,
                                                int rows, int out, int in, SkinnyShared& shared) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;  // fragment row and column pair (warp_mma.cuh)
  // The output (column of y) of fragment rows g and g + 8, and the weight rows they read.
  int out_lo, out_hi;
  int64_t w_lo, w_hi;
  if constexpr (E == SkinnyEpilogue::kSwiGlu) {
    out_lo = out_hi = blockIdx.x * 8 + g;
    w_lo = min(out_lo, out - 1);  // rows past the end read a valid row and store nothing
    w_hi = w_lo + out;
  } else {
    out_lo = blockIdx.x * 16 + g;
    out_hi = out_lo + 8;
    w_lo = min(out_lo, out - 1);
    w_hi = min(out_hi, out - 1);
  }
  const bf16* w_lo_p = w + w_lo * in + t * 8;
  const bf16* w_hi_p = w + w_hi * in + t * 8;
  const bool x_valid = g < rows;
  const bf16* x_p = x + int64_t{x_valid ? g : 0} * in + t * 8;
  const int steps = (in + 31) / 32;

  AllowDependentGridsToLaunch();
  // Lanes t = 0 … 3 of the first kSkinnyUnroll steps: 4 · 64 bytes of row g and of row g + 8.
  if (warp + t * kSkinnyWarps < steps) {
    PrefetchToL2(w_lo_p + (warp + t * kSkinnyWarps) * 32 - t * 8);
    PrefetchToL2(w_hi_p + (warp + t * kSkinnyWarps) * 32 - t * 8);
  }
  WaitForPrerequisiteGrids();

  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (int first = warp; first < steps; first += kSkinnyWarps * kSkinnyUnroll) {
    uint4 a_lo[kSkinnyUnroll], a_hi[kSkinnyUnroll], b[kSkinnyUnroll];
#pragma unroll
    for (int u = 0; u < kSkinnyUnroll; ++u) {
      const int step = first + u * kSkinnyWarps;
      const bool valid = step < steps && step * 32 + t * 8 < in;
      const uint4 zero = make_uint4(0, 0, 0, 0);
      a_lo[u] = valid ? LoadStreaming16(w_lo_p + step * 32) : zero;
      a_hi[u] = valid ? LoadStreaming16(w_hi_p + step * 32) : zero;
      b[u] = valid && x_valid ? Load16(x_p + step * 32) : zero;
    }
#pragma unroll
    for (int u = 0; u < kSkinnyUnroll; ++u) {
      const uint32_t first_k[4] = {a_lo[u].x, a_hi[u].x, a_lo[u].y, a_hi[u].y};
      MmaBf16(acc, first_k, b[u].x, b[u].y);
      const uint32_t second_k[4] = {a_lo[u].z, a_hi[u].z, a_lo[u].w, a_hi[u].w};
      MmaBf16(acc, second_k, b[u].z, b[u].w);
    }
  }

#pragma unroll
  for (int i = 0; i < 4; ++i) shared.partial[warp][lane][i] = acc[i];
  __syncthreads();
  if (warp != 0) return;
  float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (int w8 = 0; w8 < kSkinnyWarps; ++w8) {
#pragma unroll
    for (int i = 0; i < 4; ++i) d[i] += shared.partial[w8][lane][i];
  }
  // d[c] is (output out_lo, row 2t + c) and d[2 + c] is (output out_hi, row 2t + c).
#pragma unroll
  for (int c = 0; c < 2; ++c) {
    const int r = 2 * t + c;
    if (r >= rows) continue;
    if constexpr (E == SkinnyEpilogue::kSwiGlu) {
      if (out_lo < out) {
        const float gate = RoundToBf16(d[c]), up = RoundToBf16(d[2 + c]);
        static_cast<bf16*>(y)[int64_t{r} * out + out_lo] =
            __float2bfloat16(gate / (1.0f + __expf(-gate)) * up);
      }
    } else if constexpr (E == SkinnyEpilogue::kFloat) {
      float* yf = static_cast<float*>(y) + int64_t{r} * out;
      if (out_lo < out) yf[out_lo] = d[c];
      if (out_hi < out) yf[out_hi] = d[2 + c];
    } else {
      bf16* yb = static_cast<bf16*>(y) + int64_t{r} * out;
      if (out_lo < out) yb[out_lo] = __float2bfloat16(d[c]);
      if (out_hi < out) yb[out_hi] = __float2bfloat16(d[2 + c]);
    }
  }
}

}  // namespace pdpool::agent::cuda
