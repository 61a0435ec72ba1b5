// Checked NCCL calls, the NCCL counterpart of agent/engine/cuda/cuda_check.h: a call's result
// becomes a Status naming the call, its file:line, NCCL's error string and NCCL's last error
// message, so an NCCL failure surfaces as a transfer error instead of a hang or a crash.
// Host code only; thread-safe (pure functions).
#pragma once

#include <nccl.h>

#include "common/status.h"

namespace pdpool::agent::cuda {

Status NcclStatus(ncclResult_t result, const char* call, const char* file, int line);

}  // namespace pdpool::agent::cuda

// Returns from the enclosing function (which returns Status or StatusOr) when `call` fails.
#define PDPOOL_NCCL_RETURN_IF_ERROR(call)                                                       \
  do {                                                                                          \
    if (ncclResult_t pdpool_nccl_result_ = (call); pdpool_nccl_result_ != ncclSuccess) {        \
      return ::pdpool::agent::cuda::NcclStatus(pdpool_nccl_result_, #call, __FILE__, __LINE__); \
    }                                                                                           \
  } while (0)

// The same for calls on a non-blocking communicator, where ncclInProgress means "enqueued, poll
// ncclCommGetAsyncError".
#define PDPOOL_NCCL_RETURN_IF_FAILED(call)                                                      \
  do {                                                                                          \
    if (ncclResult_t pdpool_nccl_result_ = (call);                                              \
        pdpool_nccl_result_ != ncclSuccess && pdpool_nccl_result_ != ncclInProgress) {          \
      return ::pdpool::agent::cuda::NcclStatus(pdpool_nccl_result_, #call, __FILE__, __LINE__); \
    }                                                                                           \
  } while (0)
