// Programmatic dependent launch (sm_90 and newer), which lets a kernel start while the kernel
// before it on the stream is finishing. Every pdpool kernel is launched with LaunchDependent and
// calls, in this order:
//   AllowDependentGridsToLaunch() first, so that the next kernel's blocks may be scheduled as
//     soon as all of this grid's blocks are running (they then wait in their own
//     WaitForPrerequisiteGrids; a grid never waits for one that is not yet running);
//   work that reads nothing the previous kernels write (the skinny GEMM prefetches its weights);
//   WaitForPrerequisiteGrids() before anything else: it returns once the previous grid has
//     finished and its writes are visible (at once for a kernel launched without the attribute,
//     or after a cuBLAS kernel, which the stream orders as usual).
// Within a step this hides most of each launch's latency (about 300 launches per decode step).
// PDPOOL_CUDA_PDL=0 in the environment launches without the attribute (for comparisons and
// debugging). Built with PDPOOL_CUDA_EMULATION the device functions do nothing: the emulator runs
// one grid after the other.
#pragma once

#if !defined(PDPOOL_CUDA_EMULATION)
#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>
#include <utility>
#endif

namespace pdpool::agent::cuda {

__device__ __forceinline__ void AllowDependentGridsToLaunch() {
#if !defined(PDPOOL_CUDA_EMULATION)
  asm volatile("griddepcontrol.launch_dependents;\n" ::);
#endif
}

__device__ __forceinline__ void WaitForPrerequisiteGrids() {
#if !defined(PDPOOL_CUDA_EMULATION)
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

// Starts bringing the 128-byte line at `p` into L2; no register waits for it.
__device__ __forceinline__ void PrefetchToL2(const void* p) {
#if defined(PDPOOL_CUDA_EMULATION)
  (void)p;
#else
  asm volatile("prefetch.global.L2 [%0];\n" ::"l"(p));
#endif
}

#if !defined(PDPOOL_CUDA_EMULATION)
// Whether launches carry the programmatic-serialization attribute (PDPOOL_CUDA_PDL != "0").
inline bool ProgrammaticLaunchEnabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("PDPOOL_CUDA_PDL");
    return v == nullptr || std::strcmp(v, "0") != 0;
  }();
  return enabled;
}

// kernel<<<grid, block, shared_bytes, stream>>>(args...), allowed to overlap the previous kernel
// on the stream (see above); also inside a CUDA graph capture.
template <typename... Params, typename... Args>
cudaError_t LaunchDependent(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes,
                            cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared_bytes;
  config.stream = stream;
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = ProgrammaticLaunchEnabled() ? 1 : 0;
  config.attrs = attribute;
  config.numAttrs = 1;
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}
#endif

}  // namespace pdpool::agent::cuda
