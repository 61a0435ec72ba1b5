// NcclCommunicatorFactory: the real KvCommunicator (kv_communicator.h) on NCCL, for the nccl KV
// transport (nccl_kv_transport.h). Communicators are non-blocking (ncclConfig_t.blocking = 0)
// so joining and waiting honour deadlines and a failed peer is aborted (ncclCommAbort) instead
// of hanging a thread. Each communicator has its own CUDA stream and completion event; Post
// groups the sends and receives (ncclGroupStart/End) and records the event after them.
// Multi-node NVLink (GB200 NVL72 trays): NCCL_MNNVL=1 in the worker's environment makes NCCL use
// the NVLink fabric between nodes of one NVLink domain (NCCL's default detects it). No NCCL or
// CUDA header here: the agent library includes this file in CPU code.
// The factory is thread-safe; a communicator is used by one thread at a time.
#pragma once

#include <memory>

#include "agent/transport/kv_communicator.h"

namespace pdpool::agent {

std::unique_ptr<KvCommunicatorFactory> NewNcclCommunicatorFactory();

}  // namespace pdpool::agent
