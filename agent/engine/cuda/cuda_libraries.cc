// Run-time loading of cuBLAS and NCCL: see cuda_libraries.h.
#include "agent/engine/cuda/cuda_libraries.h"

#include <dlfcn.h>

#include <initializer_list>
#include <mutex>
#include <string>

namespace pdpool::agent::cuda {
namespace {

// Opens the first of `names` that loads; keeps it open for the process's life.
StatusOr<void*> Open(std::initializer_list<const char*> names) {
  std::string errors;
  for (const char* name : names) {
    if (void* handle = dlopen(name, RTLD_NOW | RTLD_LOCAL)) return handle;
    const char* why = dlerror();
    errors += std::string(errors.empty() ? "" : "; ") + (why != nullptr ? why : name);
  }
  return Status::Unavailable("cannot load " + std::string(*names.begin()) + ": " + errors);
}

template <typename Fn>
Status Resolve(void* handle, const char* library, const char* symbol, Fn* out) {
  *out = reinterpret_cast<Fn>(dlsym(handle, symbol));
  if (*out == nullptr) {
    return Status::Unavailable(std::string(library) + " has no symbol " + symbol +
                               " (an older version?)");
  }
  return Status::Ok();
}

#define PDPOOL_RESOLVE(api, field, symbol) \
  if (Status s = Resolve(*handle, library, symbol, &api.field); !s.ok()) return s

StatusOr<CublasApi> OpenCublas() {
  const char* library = "libcublas.so.13";
  auto handle = Open({library, "libcublas.so"});
  if (!handle.ok()) return handle.status();
  CublasApi api{};
  PDPOOL_RESOLVE(api, Create, "cublasCreate_v2");
  PDPOOL_RESOLVE(api, Destroy, "cublasDestroy_v2");
  PDPOOL_RESOLVE(api, SetStream, "cublasSetStream_v2");
  PDPOOL_RESOLVE(api, SetWorkspace, "cublasSetWorkspace_v2");
  PDPOOL_RESOLVE(api, GemmEx, "cublasGemmEx");
  PDPOOL_RESOLVE(api, GetStatusName, "cublasGetStatusName");
  PDPOOL_RESOLVE(api, GetStatusString, "cublasGetStatusString");
  return api;
}

StatusOr<NcclApi> OpenNccl() {
  const char* library = "libnccl.so.2";
  auto handle = Open({library, "libnccl.so"});
  if (!handle.ok()) return handle.status();
  NcclApi api{};
  PDPOOL_RESOLVE(api, GetUniqueId, "ncclGetUniqueId");
  PDPOOL_RESOLVE(api, CommInitRankConfig, "ncclCommInitRankConfig");
  PDPOOL_RESOLVE(api, Send, "ncclSend");
  PDPOOL_RESOLVE(api, Recv, "ncclRecv");
  PDPOOL_RESOLVE(api, GroupStart, "ncclGroupStart");
  PDPOOL_RESOLVE(api, GroupEnd, "ncclGroupEnd");
  PDPOOL_RESOLVE(api, CommAbort, "ncclCommAbort");
  PDPOOL_RESOLVE(api, CommGetAsyncError, "ncclCommGetAsyncError");
  PDPOOL_RESOLVE(api, GetErrorString, "ncclGetErrorString");
  PDPOOL_RESOLVE(api, GetLastError, "ncclGetLastError");
  return api;
}

#undef PDPOOL_RESOLVE

// Loads once; every caller gets the same result.
template <typename Api, typename OpenFn>
StatusOr<const Api*> LoadOnce(OpenFn open) {
  static std::once_flag once;
  static StatusOr<Api>* loaded = nullptr;
  std::call_once(once, [&] { loaded = new StatusOr<Api>(open()); });  // lives with the process
  if (!loaded->ok()) return loaded->status();
  return &**loaded;
}

}  // namespace

StatusOr<const CublasApi*> LoadCublas() { return LoadOnce<CublasApi>(OpenCublas); }
StatusOr<const NcclApi*> LoadNccl() { return LoadOnce<NcclApi>(OpenNccl); }

}  // namespace pdpool::agent::cuda
