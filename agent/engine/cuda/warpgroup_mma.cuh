// Warpgroup-level tensor-core primitives for sm_90a (Hopper), as thin wrappers over their PTX:
// wgmma.mma_async bf16 → fp32 with shared-memory matrix descriptors, its fence / commit / wait,
// and the proxy fence that makes generic shared-memory writes (st.shared, cp.async) visible to
// wgmma. Device code only; the 128 threads of a warpgroup (warps 4i … 4i+3 of a block) call each
// of them together. A kernel using them must be compiled for sm_90a.
//
// Shared-memory operands use the 128-byte swizzle (PTX ISA, "Shared Memory Matrix Layout"): a
// swizzle atom is 8 rows of 128 bytes (64 bf16), 1024-byte aligned, and the 16-byte chunk c of
// row r of an atom is stored at chunk c ^ (r % 8). Swizzle128Offset gives that placement.
//   K-major operand (A of Q·Kᵀ, and B = K, keys as N): rows are M or N, 64 K-elements per
//     atom row; 8-row groups SBO bytes apart. One k16 step is 32 bytes further along the row.
//   MN-major B (imm-trans-b = 1, used for V, keys as K): rows are K, 64 N-elements per atom row;
//     8-row groups SBO bytes apart, the next 64 N-elements LBO bytes further.
// Register fragments (PTX ISA, "Register Fragments", m64nNk16), with warp w of the warpgroup,
// g = lane / 4, t = lane % 4:
//   A: four registers, as mma.m16n8k16's A fragment for rows 16w … 16w+15 (warp_mma.cuh);
//   D: N/2 floats; d[4i + 2h + c] is (row 16w + g + 8h, column 8i + 2t + c).
// wgmma reads its registers and shared memory asynchronously: the accumulators and A registers
// must not be touched, nor the operands' shared memory overwritten, until WarpgroupWait says
// the group that issued them has completed.
//
// Built with PDPOOL_CUDA_EMULATION each primitive calls its emulation instead
// (tests/cuda_emulation/warp_emulator.cc), which is written from the PTX ISA.
#pragma once

#include <cstdint>

namespace pdpool::agent::cuda {

#if defined(PDPOOL_CUDA_EMULATION)
namespace emulation {  // defined in tests/cuda_emulation/warp_emulator.cc
void WarpgroupFence();
void WarpgroupCommit();
void WarpgroupWait(int pending);
void FenceProxyAsyncShared();
void WarpgroupMmaSS(float* d, int n, uint64_t desc_a, uint64_t desc_b, bool accumulate,
                    bool trans_b);
void WarpgroupMmaRS(float* d, int n, const uint32_t* a, uint64_t desc_b, bool accumulate,
                    bool trans_b);
}  // namespace emulation
#endif

// Byte offset of bf16 element (row, col) (col < 64) inside a 128-byte-swizzled region whose
// 8-row groups are 1024 bytes apart (rows 128 bytes apart).
__device__ __forceinline__ uint32_t Swizzle128Offset(int row, int col) {
  const uint32_t chunk = static_cast<uint32_t>(col / 8) ^ static_cast<uint32_t>(row % 8);
  return static_cast<uint32_t>(row) * 128u + chunk * 16u + static_cast<uint32_t>(col % 8) * 2u;
}

// A shared-memory matrix descriptor with the 128-byte swizzle; `address` is a shared-window
// address (SharedAddress), lbo and sbo in bytes.
__device__ __forceinline__ uint64_t Swizzle128Descriptor(uint32_t address, uint32_t lbo,
                                                         uint32_t sbo) {
  return (static_cast<uint64_t>((address & 0x3FFFF) >> 4)) |
         (static_cast<uint64_t>((lbo & 0x3FFFF) >> 4) << 16) |
         (static_cast<uint64_t>((sbo & 0x3FFFF) >> 4) << 32) | (uint64_t{1} << 62);
}

__device__ __forceinline__ void WarpgroupFence() {
#if defined(PDPOOL_CUDA_EMULATION)
  emulation::WarpgroupFence();
#else
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void WarpgroupCommit() {
#if defined(PDPOOL_CUDA_EMULATION)
  emulation::WarpgroupCommit();
#else
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
// Waits until at most kPending committed wgmma groups of this warpgroup are still in flight.
template <int kPending>
__device__ __forceinline__ void WarpgroupWait() {
#if defined(PDPOOL_CUDA_EMULATION)
  emulation::WarpgroupWait(kPending);
#else
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
#endif
}
// Makes this thread's earlier generic-proxy shared-memory writes visible to wgmma (the async
// proxy); then a barrier publishes them to the warpgroup.
__device__ __forceinline__ void FenceProxyAsyncShared() {
#if defined(PDPOOL_CUDA_EMULATION)
  emulation::FenceProxyAsyncShared();
#else
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

// Keeps the compiler from moving reads or writes of these registers across the wgmma
// instructions that use them asynchronously (the fence/commit/wait asm statements do not name
// them): an empty asm statement that "modifies" each one. No instruction is emitted.
template <int N>
__device__ __forceinline__ void WarpgroupFenceOperands(float (&r)[N]) {
#if !defined(PDPOOL_CUDA_EMULATION)
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
#else
  (void)r;
#endif
}
template <int N>
__device__ __forceinline__ void WarpgroupFenceOperands(uint32_t (&r)[N]) {
#if !defined(PDPOOL_CUDA_EMULATION)
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+r"(r[i])::"memory");
#else
  (void)r;
#endif
}

// d (+)= A · B for m64nNk16, bf16 inputs, fp32 accumulators: A from shared memory (K-major) or
// registers, B from shared memory (K-major, or N-major with kTransB). accumulate = false
// overwrites d.
template <bool kTransB>
__device__ __forceinline__ void WarpgroupMmaSS64(float (&d)[32], uint64_t desc_a, uint64_t desc_b,
                                                 bool accumulate) {
#if defined(PDPOOL_CUDA_EMULATION)
  emulation::WarpgroupMmaSS(d, 64, desc_a, desc_b, accumulate, kTransB);
#else
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
      "%32, %33, p, 1, 1, 0, %35;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(desc_a), "l"(desc_b), "r"(static_cast<int>(accumulate)), "n"(kTransB ? 1 : 0));
#endif
}

template <bool kTransB>
__device__ __forceinline__ void WarpgroupMmaRS64(float (&d)[32], const uint32_t (&a)[4],
                                                 uint64_t desc_b, bool accumulate) {
#if defined(PDPOOL_CUDA_EMULATION)
  emulation::WarpgroupMmaRS(d, 64, a, desc_b, accumulate, kTransB);
#else
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
      "{%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b),
        "r"(static_cast<int>(accumulate)), "n"(kTransB ? 1 : 0));
#endif
}

template <bool kTransB>
__device__ __forceinline__ void WarpgroupMmaRS128(float (&d)[64], const uint32_t (&a)[4],
                                                 uint64_t desc_b, bool accumulate) {
#if defined(PDPOOL_CUDA_EMULATION)
  emulation::WarpgroupMmaRS(d, 128, a, desc_b, accumulate, kTransB);
#else
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "{%64, %65, %66, %67}, %68, p, 1, 1, %70;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b),
        "r"(static_cast<int>(accumulate)), "n"(kTransB ? 1 : 0));
#endif
}

}  // namespace pdpool::agent::cuda
