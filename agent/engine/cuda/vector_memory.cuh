// 16-byte loads and stores of 8 bf16 (or 4 floats) and their conversions, for kernels that move
// rows whose widths are multiples of 8 elements from 16-byte-aligned addresses (what the
// backend's cudaMalloc'ed buffers and Llama shapes give). One vector access per 16 bytes keeps
// many bytes in flight per thread, which is what streaming kernels need to reach the copy rate.
// Device code only; also compiled on the host by tests/cuda_emulation.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace pdpool::agent::cuda {

#if defined(PDPOOL_CUDA_EMULATION)
// On the host a misaligned address aborts, as the GPU would fault.
inline void CheckAligned16(const void* p) {
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) {
    std::fprintf(stderr, "vector_memory.cuh: 16-byte access at misaligned address %p\n", p);
    std::abort();
  }
}
#endif

// One 16-byte load or store (p must be 16-byte aligned). A plain memcpy would not do on the
// device: nvcc only knows T's alignment there, and splits it into byte accesses.
template <typename T>
__device__ __forceinline__ uint4 Load16(const T* p) {
#if defined(PDPOOL_CUDA_EMULATION)
  CheckAligned16(p);
  uint4 v;
  memcpy(&v, p, sizeof(v));
  return v;
#else
  return *reinterpret_cast<const uint4*>(p);
#endif
}

template <typename T>
__device__ __forceinline__ void Store16(T* p, const uint4& v) {
#if defined(PDPOOL_CUDA_EMULATION)
  CheckAligned16(p);
  memcpy(static_cast<void*>(p), &v, sizeof(v));
#else
  *reinterpret_cast<uint4*>(p) = v;
#endif
}

// The 8 bf16 of v as floats, lowest address first.
__device__ __forceinline__ void Bf16x8ToFloats(const uint4& v, float (&f)[8]) {
  const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    __nv_bfloat162 pair;
    memcpy(static_cast<void*>(&pair), &words[i], sizeof(pair));
    const float2 two = __bfloat1622float2(pair);
    f[2 * i] = two.x;
    f[2 * i + 1] = two.y;
  }
}

// 8 floats rounded to bf16 (round to nearest even), lowest address first.
__device__ __forceinline__ uint4 FloatsToBf16x8(const float (&f)[8]) {
  uint32_t words[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const __nv_bfloat162 pair = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
    memcpy(&words[i], &pair, sizeof(pair));
  }
  return make_uint4(words[0], words[1], words[2], words[3]);
}

// 8 floats from / to two 16-byte accesses (p 16-byte aligned).
__device__ __forceinline__ void LoadFloats8(const float* p, float (&f)[8]) {
  const uint4 lo = Load16(p), hi = Load16(p + 4);
  memcpy(f, &lo, sizeof(lo));  // register moves on the device
  memcpy(f + 4, &hi, sizeof(hi));
}
__device__ __forceinline__ void StoreFloats8(float* p, const float (&f)[8]) {
  uint4 lo, hi;
  memcpy(&lo, f, sizeof(lo));
  memcpy(&hi, f + 4, sizeof(hi));
  Store16(p, lo);
  Store16(p + 4, hi);
}

}  // namespace pdpool::agent::cuda
