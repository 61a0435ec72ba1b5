// KvIpc: the narrow interface between the cuda-ipc KV transport's protocol (CPU code in
// cuda_ipc_kv_transport.cc: control channel, reservation lifecycle, checks) and CUDA IPC itself
// (agent/engine/cuda/cuda_ipc.cc: cudaIpcGetMemHandle / cudaIpcOpenMemHandle and
// cudaMemcpyAsync device to device, completion by a CUDA event). Unit tests put a fake behind
// it that copies host memory. Thread-safe.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "agent/engine/device_kv.h"
#include "common/status.h"

namespace pdpool::agent {

// One copy into the peer's allocation: `bytes` from `source` (a device address in this process)
// to byte `dest_offset` of the allocation the peer exported.
struct IpcCopy {
  uintptr_t source = 0;
  int64_t dest_offset = 0;
  int64_t bytes = 0;
};

class KvIpc {
 public:
  virtual ~KvIpc() = default;
  // Receiving side: the IPC handle of `region`'s allocation (region.base starts it), as hex.
  // Exported once per region; later calls return the same handle.
  virtual StatusOr<std::string> Export(const DeviceKvRegion& region) = 0;
  // Sending side: opens the peer allocation `handle` (once; cached by handle) and runs
  // `copies` device to device on `device`; returns once they are complete in device memory (an
  // event recorded after them has been waited on), so the peer may read them at once.
  virtual Status Copy(const std::string& handle, int device, std::span<const IpcCopy> copies) = 0;
  // Forgets an opened peer allocation (the peer went away or failed); no-op if not open.
  virtual void Close(const std::string& handle) = 0;
};

}  // namespace pdpool::agent
