// cuBLAS and NCCL, loaded at run time (dlopen) instead of linked: pdpool-agent links neither, so
// the processes that never touch a GPU (routers, node agents, cpu and sim workers) start in
// milliseconds without mapping cuBLAS's hundreds of megabytes, and a machine without NCCL still
// runs the cuda backend (without the nccl transport). The headers give the types; each library
// is opened once, on first use, and its error names the library and the missing symbol.
// Thread-safe.
#pragma once

#include <cublas_v2.h>
#include <nccl.h>

#include "common/status.h"

namespace pdpool::agent::cuda {

struct CublasApi {
  decltype(&cublasCreate_v2) Create;
  decltype(&cublasDestroy_v2) Destroy;
  decltype(&cublasSetStream_v2) SetStream;
  decltype(&cublasSetWorkspace_v2) SetWorkspace;
  // C++ also sees inline overloads of cublasGemmEx: name the C entry point's type.
  cublasStatus_t (*GemmEx)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                           const void*, const void*, cudaDataType, int, const void*, cudaDataType,
                           int, const void*, void*, cudaDataType, int, cublasComputeType_t,
                           cublasGemmAlgo_t);
  decltype(&cublasGetStatusName) GetStatusName;
  decltype(&cublasGetStatusString) GetStatusString;
};

struct NcclApi {
  decltype(&ncclGetUniqueId) GetUniqueId;
  decltype(&ncclCommInitRankConfig) CommInitRankConfig;
  decltype(&ncclSend) Send;
  decltype(&ncclRecv) Recv;
  decltype(&ncclGroupStart) GroupStart;
  decltype(&ncclGroupEnd) GroupEnd;
  decltype(&ncclCommAbort) CommAbort;
  decltype(&ncclCommGetAsyncError) CommGetAsyncError;
  decltype(&ncclGetErrorString) GetErrorString;
  decltype(&ncclGetLastError) GetLastError;
};

// libcublas.so.13 (then libcublas.so), from the loader's search path: LD_LIBRARY_PATH, the
// binary's RUNPATH (/usr/local/cuda/lib64 when built there), the system's.
StatusOr<const CublasApi*> LoadCublas();
// libnccl.so.2 (then libnccl.so).
StatusOr<const NcclApi*> LoadNccl();

}  // namespace pdpool::agent::cuda
