// Checked NCCL calls: see nccl_check.h.
#include "agent/engine/cuda/nccl_check.h"

#include <string>

#include "agent/engine/cuda/cuda_libraries.h"

namespace pdpool::agent::cuda {

Status NcclStatus(ncclResult_t result, const char* call, const char* file, int line) {
  std::string message =
      std::string(call) + " failed at " + file + ":" + std::to_string(line) + ": ";
  auto nccl = LoadNccl();
  if (!nccl.ok()) return Status::Internal(message + "NCCL error " + std::to_string(result));
  message += (*nccl)->GetErrorString(result);
  if (const char* last = (*nccl)->GetLastError(nullptr); last != nullptr && *last != '\0') {
    message += " (" + std::string(last) + ")";
  }
  return Status::Internal(std::move(message));
}

}  // namespace pdpool::agent::cuda
