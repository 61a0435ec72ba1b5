// WorkerRole: what a worker does in its pool — the one definition the worker, the router and
// the protocol between them share. Thread-safe (pure functions).
#pragma once

#include <optional>
#include <string_view>

namespace pdpool::agent {

// The pod label that carries a worker's role (the ReplicaSets select on it; the planner moves a
// worker by relabelling its pod).
inline constexpr const char* kWorkerRoleLabel = "pdpool.dev/role";

// "both": aggregated serving, prefill and decode in one worker.
enum class WorkerRole { kPrefill, kDecode, kBoth };

const char* WorkerRoleName(WorkerRole role);
// "prefill", "decode" or "both"; nullopt otherwise.
std::optional<WorkerRole> ParseWorkerRole(std::string_view name);

}  // namespace pdpool::agent
