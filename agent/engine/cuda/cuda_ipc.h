// NewCudaIpc: the real KvIpc (kv_ipc.h) on CUDA IPC, for the cuda-ipc KV transport
// (cuda_ipc_kv_transport.h): cudaIpcGetMemHandle on the receiving side (once per region),
// cudaIpcOpenMemHandle on the sending side (once per peer handle, cached; at most 64 open, the
// least recently used closed first), cudaMemcpyAsync device to device on a pooled stream, and a
// CUDA event recorded after the copies and synchronized before Copy returns. A handle this
// process exported itself is not opened (CUDA refuses that): copies go to its own allocation.
// No CUDA header here: the agent library includes this file in CPU code. Thread-safe.
#pragma once

#include <memory>

#include "agent/transport/kv_ipc.h"

namespace pdpool::agent {

std::unique_ptr<KvIpc> NewCudaIpc();

}  // namespace pdpool::agent
