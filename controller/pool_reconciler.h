// PoolReconciler: turns one InferencePool (by key, "namespace/name") into its children —
// the pool's token Secret (created once, never rewritten), prefill and decode ReplicaSets (one
// per pod-template revision), the router Deployment and Service — placed in one NVLink domain,
// and writes the pool's status. Level-triggered and
// idempotent: it reads everything from the informer caches, so running it twice changes
// nothing the second time. Thread-safe for different keys (the work queue never hands one
// key to two workers).
#pragma once

#include <memory>
#include <string>

#include "common/clock.h"
#include "common/kube/event_recorder.h"
#include "common/kube/informer.h"
#include "common/kube/kube_client.h"
#include "common/status.h"
#include "controller/desired_state.h"
#include "controller/in_place_move.h"
#include "controller/planner/pool_autoscaler.h"

namespace pdpool::controller {

// Read-only caches the reconciler reads from. Indexed by kPoolIndex ("namespace/pool").
struct ClusterCaches {
  kube::Informer* pools = nullptr;
  kube::Informer* replica_sets = nullptr;
  kube::Informer* deployments = nullptr;
  kube::Informer* services = nullptr;
  kube::Informer* pods = nullptr;
  kube::Informer* nodes = nullptr;
  // Secrets selected by kTokenSecretSelector: the pools' token Secrets, so a reconcile reads
  // them without a GET. A user's Secret in the way (no such label) is only found by a GET after
  // the Create is refused.
  kube::Informer* secrets = nullptr;
};

inline constexpr char kTokenSecretSelector[] = "app.kubernetes.io/managed-by=pdpool";

// 32 bytes from the kernel's CSPRNG (getrandom), as 64 lower-case hex digits.
StatusOr<std::string> GeneratePoolToken();

inline constexpr char kPoolIndex[] = "pool";
inline constexpr char kPoolLabel[] = "pdpool.dev/pool";
inline constexpr char kRoleLabel[] = "pdpool.dev/role";
// "namespace/pool" for objects labelled with a pool; used as the children caches' index.
std::vector<std::string> PoolIndexValues(const Json& object);

struct ReconcileResult {
  Status status;             // not ok: requeue with backoff
  Duration requeue_after{};  // > 0: check again later (e.g. waiting for capacity)
  bool invalid_spec = false;
};

class PoolReconciler {
 public:
  // `autoscaler` (may be null: pools then keep spec replicas) sizes pools with
  // spec.autoscaling.enabled; `notifier` (may be null: moved workers learn their role from
  // their labels file only) tells moved workers their new role.
  PoolReconciler(kube::KubeClient* client, ClusterCaches caches, kube::EventRecorder* events,
                 Clock* clock, planner::PoolAutoscaler* autoscaler = nullptr,
                 RoleNotifier* notifier = nullptr);
  ReconcileResult Reconcile(const std::string& key);

 private:
  // Status, condition, Event and log of one planner evaluation.
  void ApplyPlannerResult(const planner::AutoscaleResult& planned, WallTime now, const Json& pool,
                          Json* status, Json* conditions, int64_t generation);
  // Relabels up to `count` ready pods of `from` (current revision) to `to` and tells them.
  Status MoveWorkers(const Json& pool, const std::string& key, const std::string& ns,
                     const std::vector<kube::ObjectPtr>& pool_pods, WorkerRole from, WorkerRole to,
                     const std::string& from_hash, const std::string& to_hash, int count,
                     WallTime now);

  kube::KubeClient* client_;
  ClusterCaches caches_;
  kube::EventRecorder* events_;
  Clock* clock_;
  planner::PoolAutoscaler* autoscaler_;
  RoleNotifier* notifier_;
};

}  // namespace pdpool::controller
