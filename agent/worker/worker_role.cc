// WorkerRole: see worker_role.h.
#include "agent/worker/worker_role.h"

namespace pdpool::agent {

const char* WorkerRoleName(WorkerRole role) {
  switch (role) {
    case WorkerRole::kPrefill:
      return "prefill";
    case WorkerRole::kDecode:
      return "decode";
    case WorkerRole::kBoth:
      return "both";
  }
  return "unknown";
}

std::optional<WorkerRole> ParseWorkerRole(std::string_view name) {
  if (name == "prefill") return WorkerRole::kPrefill;
  if (name == "decode") return WorkerRole::kDecode;
  if (name == "both") return WorkerRole::kBoth;
  return std::nullopt;
}

}  // namespace pdpool::agent
