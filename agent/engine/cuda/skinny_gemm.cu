// The skinny GEMM of decode steps (its body is skinny_gemm_kernel.cuh): kernels per epilogue,
// the shape checks and the launcher. See kernels.h.
#include <cuda_bf16.h>

#include <cstdint>
#include <string>

#include "agent/engine/cuda/cuda_check.h"
#include "agent/engine/cuda/grid_dependency.cuh"
#include "agent/engine/cuda/kernels.h"
#include "agent/engine/cuda/skinny_gemm_kernel.cuh"

namespace pdpool::agent::cuda {
namespace {

template <SkinnyEpilogue E>
__global__ void __launch_bounds__(kSkinnyThreads, 3)
    SkinnyGemmKernel(const bf16* __restrict__ x, const bf16* __restrict__ w, void* __restrict__ y,
                     int rows, int out, int in) {
  __shared__ SkinnyShared shared;
  SkinnyGemmBlock<E>(x, w, y, rows, out, in, shared);
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

Status CheckSkinnyGemm(const bf16* x, const bf16* w, int rows, int out, int in) {
  if (rows < 1 || rows > kSkinnyGemmMaxRows || out < 1 || in < 8 || in % 8 != 0) {
    return Status::InvalidArgument("skinny GEMM: rows " + std::to_string(rows) + " (1.." +
                                   std::to_string(kSkinnyGemmMaxRows) + "), out " +
                                   std::to_string(out) + ", in " + std::to_string(in) +
                                   " (a multiple of 8): not supported");
  }
  if (!Aligned16(x) || !Aligned16(w)) {
    return Status::InvalidArgument("skinny GEMM: x and W must be 16-byte aligned");
  }
  return Status::Ok();
}

Status LaunchSkinnyGemm(const bf16* x, const bf16* w, void* y, int rows, int out, int in,
                        SkinnyEpilogue epilogue, cudaStream_t stream) {
  if (Status s = CheckSkinnyGemm(x, w, rows, out, in); !s.ok()) return s;
  switch (epilogue) {
    case SkinnyEpilogue::kBf16:
      PDPOOL_CUDA_RETURN_IF_ERROR(LaunchDependent(SkinnyGemmKernel<SkinnyEpilogue::kBf16>,
                                                  (out + 15) / 16, kSkinnyThreads, 0, stream, x,
                                                  w, y, rows, out, in));
      break;
    case SkinnyEpilogue::kFloat:
      PDPOOL_CUDA_RETURN_IF_ERROR(LaunchDependent(SkinnyGemmKernel<SkinnyEpilogue::kFloat>,
                                                  (out + 15) / 16, kSkinnyThreads, 0, stream, x,
                                                  w, y, rows, out, in));
      break;
    case SkinnyEpilogue::kSwiGlu:
      PDPOOL_CUDA_RETURN_IF_ERROR(LaunchDependent(SkinnyGemmKernel<SkinnyEpilogue::kSwiGlu>,
                                                  (out + 7) / 8, kSkinnyThreads, 0, stream, x, w,
                                                  y, rows, out, in));
      break;
  }
  return Status::Ok();
}

}  // namespace pdpool::agent::cuda
