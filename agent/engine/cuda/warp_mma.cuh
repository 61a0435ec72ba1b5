// Warp-level tensor-core primitives for sm_80 and newer, as thin wrappers over their PTX: the
// bf16 m16n8k16 MMA with fp32 accumulators, ldmatrix (plain and transposed) from shared memory,
// and cp.async 16-byte copies from global to shared memory with zero fill. Device code only;
// every lane of the warp must call the warp-wide ones (Mma, LoadMatrixX4*) together.
//
// Fragment layouts (PTX ISA, "mma.m16n8k16"), with g = lane / 4 and t = lane % 4:
//   A (16×16, row-major), four .b32 registers of two bf16 each, low half the lower column:
//     a[0] = (row g,   cols 2t, 2t+1)    a[1] = (row g+8, cols 2t, 2t+1)
//     a[2] = (row g,   cols 2t+8, 2t+9)  a[3] = (row g+8, cols 2t+8, 2t+9)
//   B (16×8, k × n), two registers:
//     b[0] = (k 2t, 2t+1; col g)         b[1] = (k 2t+8, 2t+9; col g)
//   C/D (16×8 fp32), four floats:
//     d[0], d[1] = (row g,   cols 2t, 2t+1)   d[2], d[3] = (row g+8, cols 2t, 2t+1)
// ldmatrix .x4 loads four 8×8 bf16 matrices; lanes 8i … 8i+7 give the row addresses of matrix
// i, and register i of every lane receives (row g, cols 2t, 2t+1) of matrix i (of its transpose
// with .trans).
//
// Built with PDPOOL_CUDA_EMULATION (by a host compiler, for tests only), each primitive calls
// its emulation instead: tests/cuda_emulation runs kernel bodies on the CPU, one fiber per
// thread, so that their fragment and pipeline logic is checked on machines without a GPU.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <cstring>

namespace pdpool::agent::cuda {

#if defined(PDPOOL_CUDA_EMULATION)
namespace emulation {  // defined in tests/cuda_emulation/warp_emulator.cc
uint32_t SharedAddress(const void* pointer);
void CopyAsync16(uint32_t dst, const void* src, bool valid);
void CommitAsyncCopies();
void WaitAsyncCopies(int pending);
void LoadMatrixX4(uint32_t (&r)[4], uint32_t address, bool transposed);
void MmaBf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
}  // namespace emulation
#endif

__device__ __forceinline__ uint32_t SharedAddress(const void* pointer) {
#if defined(PDPOOL_CUDA_EMULATION)
  return emulation::SharedAddress(pointer);
#else
  return static_cast<uint32_t>(__cvta_generic_to_shared(pointer));
#endif
}

// 16 bytes from global `src` to shared `dst`, or 16 zero bytes when !valid (src is then not
// read, but must still be a valid address).
__device__ __forceinline__ void CopyAsync16(uint32_t dst, const void* src, bool valid) {
#if defined(PDPOOL_CUDA_EMULATION)
  emulation::CopyAsync16(dst, src, valid);
#else
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(valid ? 16 : 0));
#endif
}
__device__ __forceinline__ void CommitAsyncCopies() {
#if defined(PDPOOL_CUDA_EMULATION)
  emulation::CommitAsyncCopies();
#else
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}
// Waits until at most `kPending` committed groups of this thread are still in flight.
template <int kPending>
__device__ __forceinline__ void WaitAsyncCopies() {
#if defined(PDPOOL_CUDA_EMULATION)
  emulation::WaitAsyncCopies(kPending);
#else
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
#endif
}

__device__ __forceinline__ void LoadMatrixX4(uint32_t (&r)[4], uint32_t address) {
#if defined(PDPOOL_CUDA_EMULATION)
  emulation::LoadMatrixX4(r, address, false);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
#endif
}
__device__ __forceinline__ void LoadMatrixX4Transposed(uint32_t (&r)[4], uint32_t address) {
#if defined(PDPOOL_CUDA_EMULATION)
  emulation::LoadMatrixX4(r, address, true);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
#endif
}

// d += a · b for one 16×16 A fragment and one 16×8 B fragment (b0, b1).
__device__ __forceinline__ void MmaBf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                        uint32_t b1) {
#if defined(PDPOOL_CUDA_EMULATION)
  emulation::MmaBf16(d, a, b0, b1);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// Two floats as one bf16x2 register, `low` in the low half (the lower column of a fragment).
__device__ __forceinline__ uint32_t PackBf16x2(float low, float high) {
  const __nv_bfloat162 pair = __floats2bfloat162_rn(low, high);
  uint32_t bits;
  memcpy(&bits, &pair, sizeof(bits));  // a register move on the device
  return bits;
}

}  // namespace pdpool::agent::cuda
