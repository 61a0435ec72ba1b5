// PoolReconciler implementation: spec → children → status, for one pool per call.
#include "controller/pool_reconciler.h"

#include <sys/random.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <sstream>

#include "common/base64.h"
#include "common/log.h"
#include "controller/conditions.h"
#include "controller/desired_state.h"
#include "controller/placement.h"
#include "controller/pool_spec.h"

namespace pdpool::controller {
namespace {

// How often a pool waiting for GPUs looks again even without a node or pod event.
constexpr auto kCapacityRecheck = std::chrono::seconds(30);

std::vector<Json> Snapshot(const std::vector<kube::ObjectPtr>& objects) {
  std::vector<Json> out;
  out.reserve(objects.size());
  for (const auto& o : objects) out.push_back(*o);
  return out;
}

std::vector<const Json*> Borrow(const std::vector<kube::ObjectPtr>& objects) {
  std::vector<const Json*> out;
  out.reserve(objects.size());
  for (const auto& o : objects) out.push_back(o.get());
  return out;
}

int32_t StatusInt(const Json& object, const char* pointer) {
  return JsonGet<int32_t>(object, pointer, 0);
}

std::string Join(const std::vector<std::string>& parts) {
  std::string out;
  for (const auto& p : parts) out += (out.empty() ? "" : ",") + p;
  return out;
}

std::string JoinErrors(const std::vector<SpecError>& errors) {
  std::string out;
  for (const auto& e : errors) {
    if (!out.empty()) out += "; ";
    out += e.field + ": " + e.message;
  }
  return out;
}

// Ready replicas of one role, all revisions of the pool's ReplicaSets together.
int32_t ReadyOfRole(const std::vector<Json>& owned, const std::string& pool_uid, WorkerRole role) {
  int32_t ready = 0;
  for (const Json& rs : owned) {
    if (ControllerUid(rs) != pool_uid) continue;
    if (JsonGet<std::string>(rs, "/metadata/labels/pdpool.dev~1role", "") != WorkerRoleName(role)) {
      continue;
    }
    ready += StatusInt(rs, "/status/readyReplicas");
  }
  return ready;
}

// GPUs the pool's workers may hold after the planner's decision: the budget, and what the
// domain has for the pool (its own GPUs included: placement does not count them as used).
int PlannerGpuLimit(const PlacementResult& placement, const std::string& domain,
                    const PoolSpec& spec, TopologyPolicy policy) {
  int64_t limit = 0;
  if (policy != TopologyPolicy::kNone) {
    for (const DomainCapacity& d : placement.domains) {
      if (d.name == domain) limit = d.free_gpus;
    }
  }
  if (spec.autoscaling.gpu_budget > 0) {
    limit = limit > 0 ? std::min<int64_t>(limit, spec.autoscaling.gpu_budget)
                      : spec.autoscaling.gpu_budget;
  }
  return static_cast<int>(std::min<int64_t>(limit, 1 << 20));
}

// nvidia.com/gpu.product of a node in `domain` (GPU feature discovery sets it), or "".
std::string DomainGpuProduct(const std::vector<kube::ObjectPtr>& nodes,
                             const std::string& topology_key, const std::string& domain) {
  const std::string key = topology_key.empty() ? wellknown::kDefaultTopologyKey : topology_key;
  for (const auto& node : nodes) {
    if (!domain.empty() && JsonStringAt(*node, {"metadata", "labels", key}) != domain) continue;
    std::string product = JsonStringAt(*node, {"metadata", "labels", "nvidia.com/gpu.product"});
    if (!product.empty()) return product;
  }
  return "";
}

// The pool's pods as the planner's metrics sources need them.
std::vector<planner::PoolPod> PlannerPods(const std::vector<kube::ObjectPtr>& pods) {
  std::vector<planner::PoolPod> out;
  for (const auto& pod : pods) {
    if (!JsonGet<std::string>(*pod, "/metadata/deletionTimestamp", "").empty()) continue;
    planner::PoolPod p;
    p.name = JsonGet<std::string>(*pod, "/metadata/name", "");
    p.ip = JsonGet<std::string>(*pod, "/status/podIP", "");
    p.role = JsonGet<std::string>(*pod, "/metadata/labels/pdpool.dev~1role", "");
    p.port = p.role == wellknown::kRouterRole ? wellknown::kRouterPort : wellknown::kWorkerPort;
    for (const auto& c : JsonGet<Json>(*pod, "/status/conditions", Json::array())) {
      if (!c.is_object() || c.value("type", "") != "Ready") continue;
      p.ready = c.value("status", "") == "True";
      ParseRfc3339(c.value("lastTransitionTime", ""), &p.ready_since);
    }
    out.push_back(std::move(p));
  }
  return out;
}

// A JSON number that the API server accepts (no NaN/Inf), rounded for a stable status.
Json Rounded(double v, double scale = 1000) {
  if (!std::isfinite(v)) return nullptr;
  return std::round(v * scale) / scale;
}

struct RoleOutcome {
  int32_t replicas = 0;  // pods the role's ReplicaSets have (status.replicas, all revisions)
  int32_t ready = 0;     // ready pods of the current revision and old ones still serving
  int32_t desired = 0;
  bool rolled_out = true;  // only the current revision has pods
};

// The pool's token Secret: found in the cache, or created with a fresh token. An existing one is
// never rewritten: a new token would break every in-flight KV transfer and router call until all
// pods reloaded it. `conflict` gets a message (naming the Secret, never showing its contents)
// when the Secret of that name cannot be used: someone else's, or ours without a token.
Status EnsurePoolToken(kube::KubeClient* client, kube::Informer* cache, kube::EventRecorder* events,
                       const Json& pool, const PoolIdentity& id, const std::string& key,
                       std::string* conflict) {
  const std::string name = PoolTokenSecretName(id.name);
  auto check = [&](const Json& secret) {
    if (ControllerUid(secret) != id.uid) {
      *conflict = "Secret " + name +
                  " exists and is not owned by this pool; pdpool will not overwrite it: delete "
                  "or rename it so the pool's token Secret can be created";
    } else if (JsonStringAt(secret, {"data", wellknown::kTokenKey}).empty()) {
      *conflict = "Secret " + name + " has no data under key \"" + wellknown::kTokenKey +
                  "\"; pdpool does not rewrite a pool's token: delete the Secret to have a new "
                  "one created";
    }
    return Status::Ok();
  };
  if (kube::ObjectPtr cached = cache->Get(id.namespace_name + "/" + name)) return check(*cached);

  StatusOr<std::string> token = GeneratePoolToken();
  if (!token.ok()) return token.status();
  StatusOr<Json> desired = BuildPoolTokenSecret(pool, *token);
  if (!desired.ok()) return desired.status();
  auto created = client->Create(kube::kSecrets, id.namespace_name, *desired);
  if (created.ok()) {
    events->Record(pool, "Normal", "CreatedSecret", "Created token Secret " + name);
    LogInfo("created token secret", {{"pool", key}, {"secret", name}});
    return Status::Ok();
  }
  if (!created.status().IsAlreadyExists()) return created.status();
  // Not in the cache but there: a Secret without pdpool's label, or ours created so recently
  // that the cache has not seen it yet.
  auto existing = client->Get(kube::kSecrets, id.namespace_name, name);
  if (!existing.ok()) return existing.status();  // deleted meanwhile: the retry creates it
  return check(*existing);
}

}  // namespace

StatusOr<std::string> GeneratePoolToken() {
  unsigned char bytes[32];
  size_t got = 0;
  while (got < sizeof bytes) {
    const ssize_t n = getrandom(bytes + got, sizeof bytes - got, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::Internal(std::string("getrandom: ") + std::strerror(errno));
    }
    got += static_cast<size_t>(n);
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string token;
  token.reserve(2 * sizeof bytes);
  for (unsigned char b : bytes) {
    token.push_back(kHex[b >> 4]);
    token.push_back(kHex[b & 15]);
  }
  explicit_bzero(bytes, sizeof bytes);
  return token;
}

std::vector<std::string> PoolIndexValues(const Json& object) {
  std::string pool = JsonGet<std::string>(object, "/metadata/labels/pdpool.dev~1pool", "");
  if (pool.empty()) return {};
  return {JsonGet<std::string>(object, "/metadata/namespace", "") + "/" + pool};
}

PoolReconciler::PoolReconciler(kube::KubeClient* client, ClusterCaches caches,
                               kube::EventRecorder* events, Clock* clock,
                               planner::PoolAutoscaler* autoscaler, RoleNotifier* notifier)
    : client_(client),
      caches_(caches),
      events_(events),
      clock_(clock),
      autoscaler_(autoscaler),
      notifier_(notifier) {}

void PoolReconciler::ApplyPlannerResult(const planner::AutoscaleResult& planned, WallTime now,
                                        const Json& pool, Json* status, Json* conditions,
                                        int64_t generation) {
  const planner::PlannerDecision& d = planned.decision;
  const char* kind = planner::DecisionKindName(d.kind);
  Json autoscaling = {{"lastEvaluationTime", FormatRfc3339(now)},
                      {"decision", kind},
                      {"reason", d.reason},
                      {"metricsSource", planned.source_name},
                      {"neededPrefill", d.needed_prefill},
                      {"neededDecode", d.needed_decode}};
  if (Json rate = Rounded(d.predicted_request_rate); !rate.is_null()) {
    autoscaling["predictedRequestRate"] = rate;
  }
  (*status)["autoscaling"] = autoscaling;
  if (planned.metrics_status.ok()) {
    SetCondition(conditions, "MetricsAvailable", kConditionTrue, "MetricsRead",
                 "reading the pool's metrics from " + planned.source_name, generation, now);
    Json observed = Json::object();
    const planner::PoolSignals& s = planned.signals;
    if (Json v = Rounded(s.request_rate); !v.is_null()) observed["requestRate"] = v;
    if (Json v = Rounded(s.ttft_seconds, 1e4); !v.is_null()) observed["ttftP90"] = v;
    if (Json v = Rounded(s.tpot_seconds, 1e5); !v.is_null()) observed["tpotP90"] = v;
    (*status)["observed"] = observed;
  } else {
    const bool unreachable = planned.metrics_status.code() == StatusCode::kUnavailable;
    const std::string message =
        planned.metrics_status.message() + "; holding the current size until metrics return";
    if (SetCondition(conditions, "MetricsAvailable", kConditionFalse,
                     unreachable ? "MetricsUnreachable" : "NoMetrics", message, generation, now)) {
      events_->Record(pool, "Warning", unreachable ? "MetricsUnreachable" : "NoMetrics", message);
    }
  }
  if (d.kind == planner::DecisionKind::kScaleUp || d.kind == planner::DecisionKind::kScaleDown ||
      d.kind == planner::DecisionKind::kRebalance) {
    (*status)["lastScale"] = {{"time", FormatRfc3339(now)}, {"reason", d.reason}};
    static constexpr const char* kReasons[] = {"PlannerHold",       "PlannerScaledUp",
                                               "PlannerScaledDown", "PlannerRebalanced",
                                               "PlannerPending",    "PlannerNoMetrics"};
    events_->Record(pool, "Normal", kReasons[static_cast<int>(d.kind)], d.reason);
  }
  LogInfo("planner decision", {{"pool", JsonGet<std::string>(pool, "/metadata/namespace", "") +
                                            "/" + JsonGet<std::string>(pool, "/metadata/name", "")},
                               {"decision", kind},
                               {"prefill", d.prefill},
                               {"decode", d.decode},
                               {"moves_to_prefill", d.moves_to_prefill},
                               {"reason", d.reason}});
}

Status PoolReconciler::MoveWorkers(const Json& pool, const std::string& key, const std::string& ns,
                                   const std::vector<kube::ObjectPtr>& pool_pods, WorkerRole from,
                                   WorkerRole to, const std::string& from_hash,
                                   const std::string& to_hash, int count, WallTime now) {
  const std::string from_name(WorkerRoleName(from));
  const std::string to_name(WorkerRoleName(to));
  std::string token;
  const std::string pool_name = JsonGet<std::string>(pool, "/metadata/name", "");
  if (kube::ObjectPtr secret = caches_.secrets->Get(ns + "/" + PoolTokenSecretName(pool_name))) {
    auto decoded =
        Base64Decode(JsonStringAt(*secret, {"data", wellknown::kTokenKey}), "pool token");
    if (decoded.ok()) token = *decoded;
  }
  for (const Json* pod : PickWorkersToMove(Borrow(pool_pods), from_name, from_hash, count)) {
    const std::string name = JsonGet<std::string>(*pod, "/metadata/name", "");
    kube::PatchOptions po;
    po.field_manager = "pdpool-controller";
    auto patched = client_->Patch(kube::kPods, ns, name, kube::PatchType::kMerge,
                                  MovePatch(from_name, to_name, to_hash, now), po);
    if (!patched.ok()) {
      if (patched.status().IsNotFound()) continue;
      return patched.status();
    }
    events_->Record(pool, "Normal", "MovedWorker",
                    "Moved worker " + name + " from " + from_name + " to " + to_name +
                        " in place (no restart, weights kept)");
    LogInfo("moving worker in place",
            {{"pool", key}, {"pod", name}, {"from", from_name}, {"to", to_name}});
    const std::string ip = JsonGet<std::string>(*pod, "/status/podIP", "");
    if (notifier_ && !ip.empty() && !token.empty()) {
      notifier_->Notify({ns + "/" + name, ip, wellknown::kWorkerPort, to_name, token});
    }
  }
  return Status::Ok();
}

ReconcileResult PoolReconciler::Reconcile(const std::string& key) {
  kube::ObjectPtr cached = caches_.pools->Get(key);
  if (!cached) {  // deleted: owner references let the garbage collector remove children
    if (autoscaler_ && key.find('/') != std::string::npos) {
      autoscaler_->Forget(key.substr(0, key.find('/')), key.substr(key.find('/') + 1));
    }
    return {};
  }
  const Json& pool = *cached;
  if (!JsonGet<std::string>(pool, "/metadata/deletionTimestamp", "").empty()) return {};

  auto identity = ReadPoolIdentity(pool);
  if (!identity.ok()) return {identity.status()};
  const std::string& ns = identity->namespace_name;
  const Json old_status = JsonGet<Json>(pool, "/status", Json::object());
  Json status = old_status.is_object() ? old_status : Json::object();
  Json conditions = status.value("conditions", Json::array());
  const int64_t generation = identity->generation;
  const WallTime now = clock_->WallNow();
  ReconcileResult result;

  auto write_status = [&]() -> Status {
    status["observedGeneration"] = generation;
    status["conditions"] = conditions;
    if (status == old_status) return Status::Ok();
    LogDebug("writing status", {{"pool", key}, {"old", old_status.dump()}, {"new", status.dump()}});
    Json patch = {{"status", status}};
    kube::PatchOptions po;
    po.subresource = "status";
    po.field_manager = "pdpool-controller";
    auto s = client_->Patch(kube::kInferencePools, ns, identity->name, kube::PatchType::kMerge,
                            patch, po);
    if (!s.ok() && !s.status().IsNotFound()) return s.status();
    return Status::Ok();
  };

  // A child that cannot be written: say so on the pool (best effort: the API server may be
  // what is failing), then return the error so the queue retries with backoff.
  auto fail = [&](const Status& error) -> ReconcileResult {
    // Conflicts are routine (a stale cache) and fixed by the retry; not worth a condition.
    if (!error.IsConflict()) {
      SetCondition(&conditions, "Degraded", kConditionTrue, "ReconcileError", error.ToString(),
                   generation, now);
      (void)write_status();
    }
    return {error};
  };

  // 1. The spec: parse and check what the schema cannot. A bad spec changes nothing else.
  auto spec_or = ParsePoolSpec(JsonGet<Json>(pool, "/spec", Json::object()));
  std::vector<SpecError> errors;
  if (!spec_or.ok()) {
    errors.push_back({"spec", spec_or.status().message()});
  } else {
    errors = ValidatePoolSpec(*spec_or);
  }
  if (!errors.empty()) {
    std::string message = "invalid spec: " + JoinErrors(errors);
    SetCondition(&conditions, "Ready", kConditionFalse, "InvalidSpec", message, generation, now);
    SetCondition(&conditions, "Degraded", kConditionTrue, "InvalidSpec", message, generation, now);
    SetCondition(&conditions, "Progressing", kConditionFalse, "InvalidSpec",
                 "waiting for a valid spec", generation, now);
    events_->Record(pool, "Warning", "InvalidSpec", message);
    LogInfo("pool spec rejected", {{"pool", key}, {"reason", message}});
    result.status = write_status();
    result.invalid_spec = true;
    return result;
  }
  const PoolSpec& spec = *spec_or;

  // 2. The pool's shared token, before any pod that mounts it. A Secret in the way is the
  // user's to remove: say so and touch nothing else.
  std::string token_conflict;
  if (Status s =
          EnsurePoolToken(client_, caches_.secrets, events_, pool, *identity, key, &token_conflict);
      !s.ok()) {
    return fail(s);
  }
  if (!token_conflict.empty()) {
    events_->Record(pool, "Warning", "TokenSecretConflict", token_conflict);
    LogWarn("pool token secret unusable", {{"pool", key}, {"reason", token_conflict}});
    SetCondition(&conditions, "Degraded", kConditionTrue, "TokenSecretConflict", token_conflict,
                 generation, now);
    result.status = write_status();
    // Its removal may not reach the cache (a Secret without pdpool's label): look again.
    result.requeue_after = kCapacityRecheck;
    return result;
  }
  const TopologyPolicy policy = TopologyPolicyFromString(spec.topology.policy);
  // The sizes: the spec's, or with autoscaling the planner's last ones (kept in status, so a new
  // leader carries on from them), within the bounds.
  int32_t prefill_replicas = spec.prefill.replicas;
  int32_t decode_replicas = spec.decode.replicas;
  if (spec.autoscaling.enabled) {
    int planned_prefill = 0, planned_decode = 0;
    if (autoscaler_ &&
        autoscaler_->LastSizes(ns, identity->name, &planned_prefill, &planned_decode)) {
      status["prefill"]["desiredReplicas"] = planned_prefill;
      status["decode"]["desiredReplicas"] = planned_decode;
    }
    prefill_replicas = std::clamp(
        JsonGet<int32_t>(status, "/prefill/desiredReplicas", spec.prefill.replicas),
        spec.prefill.min_replicas, std::max(spec.prefill.min_replicas, spec.prefill.max_replicas));
    decode_replicas = std::clamp(
        JsonGet<int32_t>(status, "/decode/desiredReplicas", spec.decode.replicas),
        spec.decode.min_replicas, std::max(spec.decode.min_replicas, spec.decode.max_replicas));
  } else if (autoscaler_) {
    autoscaler_->Forget(ns, identity->name);
    status.erase("autoscaling");
    RemoveCondition(&conditions, "MetricsAvailable");
  }

  // 3. Placement: one NVLink domain that holds every worker.
  PoolSpec sized = spec;
  sized.prefill.replicas = prefill_replicas;
  sized.decode.replicas = decode_replicas;
  const std::string current_domain = JsonGet<std::string>(status, "/placement/domain", "");
  PlacementRequest request = MakePlacementRequest(
      sized, ns, identity->name, current_domain,
      JsonGet<Json>(spec.template_overrides, "/spec/tolerations", Json::array()));
  const std::vector<kube::ObjectPtr> nodes = caches_.nodes->List();
  const std::vector<kube::ObjectPtr> pods = caches_.pods->List();
  PlacementResult placement = ChoosePlacement(Borrow(nodes), Borrow(pods), request);
  std::string domain = placement.domain;
  bool create_workers = true;
  if (!placement.fits && policy != TopologyPolicy::kNone) {
    if (domain.empty() && !current_domain.empty()) domain = current_domain;
    // Required with nowhere to go and nothing running yet: creating Pending pods would only
    // hold GPUs piecemeal. Wait for capacity instead.
    if (domain.empty() && policy == TopologyPolicy::kRequired) create_workers = false;
    result.requeue_after = kCapacityRecheck;
  }
  if (placement.fits || !domain.empty()) {
    status["placement"] = {{"gpus", sized.TotalGpus()},
                           {"policy", std::string(TopologyPolicyName(policy))}};
    // Empty strings are left out rather than written: a "" in a custom resource is refused by
    // Kubernetes API servers built with Go >= 1.16 before kube-openapi#230.
    if (!domain.empty()) status["placement"]["domain"] = domain;
  }

  std::vector<Json> owned = Snapshot(caches_.replica_sets->ByIndex(kPoolIndex, key));
  const std::vector<kube::ObjectPtr> pool_pods = caches_.pods->ByIndex(kPoolIndex, key);

  // 3b. The planner: at most once per interval, new sizes from the pool's metrics.
  int moves_to_prefill = 0;
  if (autoscaler_ && spec.autoscaling.enabled && create_workers) {
    planner::PoolView view;
    view.namespace_name = ns;
    view.name = identity->name;
    view.spec = &spec;
    view.prefill = {prefill_replicas, ReadyOfRole(owned, identity->uid, WorkerRole::kPrefill),
                    spec.prefill.min_replicas, spec.prefill.max_replicas,
                    spec.prefill.gpus_per_replica};
    view.decode = {decode_replicas, ReadyOfRole(owned, identity->uid, WorkerRole::kDecode),
                   spec.decode.min_replicas, spec.decode.max_replicas,
                   spec.decode.gpus_per_replica};
    view.gpu_limit = PlannerGpuLimit(placement, domain, spec, policy);
    view.gpu_product = DomainGpuProduct(nodes, spec.topology.key, domain);
    view.pods = PlannerPods(pool_pods);
    planner::AutoscaleResult planned = autoscaler_->Evaluate(view, now);
    if (planned.next_in.count() > 0 &&
        (result.requeue_after.count() == 0 || planned.next_in < result.requeue_after)) {
      result.requeue_after = planned.next_in;
    }
    if (!planned.error.ok()) {
      SetCondition(&conditions, "MetricsAvailable", kConditionFalse, "PlannerUnavailable",
                   planned.error.message(), generation, now);
    } else if (planned.evaluated) {
      ApplyPlannerResult(planned, now, pool, &status, &conditions, generation);
      const planner::PlannerDecision& decision = planned.decision;
      // Moves only between settled revisions (a rollout replaces every pod anyway).
      moves_to_prefill = decision.moves_to_prefill;
      prefill_replicas = decision.prefill;
      decode_replicas = decision.decode;
    }
  }

  // 4. Worker ReplicaSets, one revision per pod template; old revisions drain as the new
  // one becomes ready. With in-place moves the receiving role goes first, then the moved pods
  // are relabelled, then the giving role shrinks (see in_place_move.h).
  std::map<WorkerRole, RoleOutcome> outcomes;
  std::map<WorkerRole, std::string> current_hash;
  for (WorkerRole role : {WorkerRole::kPrefill, WorkerRole::kDecode}) {
    auto built = BuildWorkerReplicaSet(pool, spec, role, domain, policy, 0);
    if (!built.ok()) return {built.status()};
    current_hash[role] =
        JsonGet<std::string>(*built, "/metadata/labels/pdpool.dev~1template-hash", "");
  }
  const WorkerRole receiver = moves_to_prefill < 0 ? WorkerRole::kDecode : WorkerRole::kPrefill;
  const WorkerRole giver =
      receiver == WorkerRole::kPrefill ? WorkerRole::kDecode : WorkerRole::kPrefill;
  for (WorkerRole role : {receiver, giver}) {
    if (role == giver && moves_to_prefill != 0) {
      if (Status s = MoveWorkers(pool, key, ns, pool_pods, giver, receiver, current_hash[giver],
                                 current_hash[receiver], std::abs(moves_to_prefill), now);
          !s.ok()) {
        return fail(s);
      }
    }
    const int32_t desired = role == WorkerRole::kPrefill ? prefill_replicas : decode_replicas;
    RoleOutcome& outcome = outcomes[role];
    outcome.desired = desired;
    const std::string role_name(WorkerRoleName(role));
    auto desired_rs = BuildWorkerReplicaSet(pool, spec, role, domain, policy, desired);
    if (!desired_rs.ok()) return {desired_rs.status()};
    std::string hash =
        JsonGet<std::string>(*desired_rs, "/metadata/labels/pdpool.dev~1template-hash", "");
    RoleReplicaSets sets = SplitReplicaSets(owned, identity->uid, role, hash);
    for (const Json* rs : [&] {
           std::vector<const Json*> all;
           if (sets.current) all.push_back(&*sets.current);
           for (const auto& o : sets.old) all.push_back(&o);
           return all;
         }()) {
      outcome.replicas += StatusInt(*rs, "/status/replicas");
      outcome.ready += StatusInt(*rs, "/status/readyReplicas");
    }
    if (!create_workers) {
      outcome.rolled_out = sets.old.empty();
      continue;
    }
    std::optional<ReplicaSetState> current_state;
    if (sets.current) current_state = ReadReplicaSetState(*sets.current);
    std::vector<ReplicaSetState> old_states;
    for (const auto& o : sets.old) old_states.push_back(ReadReplicaSetState(o));
    RolloutPlan plan = PlanRollout(desired, current_state, old_states);
    // Rolled out when no older revision still has pods; readiness is tracked separately.
    outcome.rolled_out = true;
    for (const auto& o : sets.old)
      if (JsonGet<int32_t>(o, "/spec/replicas", 0) > 0 || StatusInt(o, "/status/replicas") > 0)
        outcome.rolled_out = false;

    (*desired_rs)["spec"]["replicas"] = plan.new_replicas;
    const std::string rs_name = JsonGet<std::string>(*desired_rs, "/metadata/name", "");
    if (!sets.current) {
      auto created = client_->Create(kube::kReplicaSets, ns, *desired_rs);
      if (!created.ok() && !created.status().IsAlreadyExists()) return fail(created.status());
      if (created.ok()) {
        events_->Record(pool, "Normal", "CreatedReplicaSet",
                        "Created " + role_name + " ReplicaSet " + rs_name + " with " +
                            std::to_string(plan.new_replicas) + " replicas");
        LogInfo("created replicaset",
                {{"pool", key}, {"replicaset", rs_name}, {"replicas", plan.new_replicas}});
      }
    } else if (auto update = ReplicaSetUpdate(*sets.current, *desired_rs)) {
      LogDebug("updating replicaset",
               {{"pool", key}, {"replicaset", rs_name}, {"fields", Join(update->changed_fields)}});
      int32_t before = JsonGet<int32_t>(*sets.current, "/spec/replicas", 0);
      auto updated = client_->Update(kube::kReplicaSets, update->object);
      if (!updated.ok()) return fail(updated.status());
      if (before != plan.new_replicas) {
        events_->Record(pool, "Normal", "ScaledReplicaSet",
                        "Scaled " + role_name + " ReplicaSet " + rs_name + " from " +
                            std::to_string(before) + " to " + std::to_string(plan.new_replicas));
        LogInfo(
            "scaled replicaset",
            {{"pool", key}, {"replicaset", rs_name}, {"from", before}, {"to", plan.new_replicas}});
      }
    }
    for (const auto& scale : plan.old) {
      const Json* old_rs = nullptr;
      for (const auto& o : sets.old)
        if (JsonGet<std::string>(o, "/metadata/name", "") == scale.name) old_rs = &o;
      if (!old_rs) continue;
      int32_t before = JsonGet<int32_t>(*old_rs, "/spec/replicas", 0);
      if (scale.replicas == 0 && before == 0 && StatusInt(*old_rs, "/status/replicas") == 0) {
        // Fully drained old revision: remove it.
        kube::DeleteOptions del;
        del.precondition_uid = JsonGet<std::string>(*old_rs, "/metadata/uid", "");
        Status s = client_->Delete(kube::kReplicaSets, ns, scale.name, del);
        if (!s.ok() && !s.IsNotFound()) return fail(s);
        if (s.ok())
          events_->Record(pool, "Normal", "DeletedReplicaSet",
                          "Deleted drained " + role_name + " ReplicaSet " + scale.name);
        continue;
      }
      if (before == scale.replicas) continue;
      Json copy = *old_rs;
      copy["spec"]["replicas"] = scale.replicas;
      auto updated = client_->Update(kube::kReplicaSets, copy);
      if (!updated.ok()) return fail(updated.status());
      events_->Record(pool, "Normal", "ScaledReplicaSet",
                      "Scaled old " + role_name + " ReplicaSet " + scale.name + " from " +
                          std::to_string(before) + " to " + std::to_string(scale.replicas));
    }
  }

  // 5. Router Deployment and Service.
  int32_t router_ready = 0;
  int32_t router_replicas = 0;
  {
    auto desired_dep = BuildRouterDeployment(pool, spec);
    if (!desired_dep.ok()) return {desired_dep.status()};
    std::string dep_name = JsonGet<std::string>(*desired_dep, "/metadata/name", "");
    kube::ObjectPtr existing = caches_.deployments->Get(ns + "/" + dep_name);
    if (existing && ControllerUid(*existing) != identity->uid) {
      std::string message = "Deployment " + dep_name + " exists and is not owned by this pool";
      events_->Record(pool, "Warning", "NameConflict", message);
      SetCondition(&conditions, "Degraded", kConditionTrue, "NameConflict", message, generation,
                   now);
      result.status = write_status();
      result.requeue_after = kCapacityRecheck;
      return result;
    }
    if (!existing) {
      auto created = client_->Create(kube::kDeployments, ns, *desired_dep);
      if (!created.ok() && !created.status().IsAlreadyExists()) return fail(created.status());
      if (created.ok())
        events_->Record(pool, "Normal", "CreatedDeployment",
                        "Created router Deployment " + dep_name);
    } else {
      router_ready = StatusInt(*existing, "/status/readyReplicas");
      router_replicas = StatusInt(*existing, "/status/replicas");
      if (auto update = DeploymentUpdate(*existing, *desired_dep)) {
        LogInfo(
            "updating deployment",
            {{"pool", key}, {"deployment", dep_name}, {"fields", Join(update->changed_fields)}});
        auto updated = client_->Update(kube::kDeployments, update->object);
        if (!updated.ok()) return fail(updated.status());
      }
    }
    auto desired_svc = BuildRouterService(pool);
    if (!desired_svc.ok()) return {desired_svc.status()};
    std::string svc_name = JsonGet<std::string>(*desired_svc, "/metadata/name", "");
    kube::ObjectPtr svc = caches_.services->Get(ns + "/" + svc_name);
    if (!svc) {
      auto created = client_->Create(kube::kServices, ns, *desired_svc);
      if (!created.ok() && !created.status().IsAlreadyExists()) return fail(created.status());
      if (created.ok())
        events_->Record(pool, "Normal", "CreatedService", "Created router Service " + svc_name);
    } else if (ControllerUid(*svc) == identity->uid) {
      if (auto update = ServiceUpdate(*svc, *desired_svc)) {
        LogInfo("updating service",
                {{"pool", key}, {"service", svc_name}, {"fields", Join(update->changed_fields)}});
        auto updated = client_->Update(kube::kServices, update->object);
        if (!updated.ok()) return fail(updated.status());
      }
    }
  }

  // 6. Status.
  const RoleOutcome& p = outcomes[WorkerRole::kPrefill];
  const RoleOutcome& d = outcomes[WorkerRole::kDecode];
  status["prefill"] = {
      {"replicas", p.replicas}, {"readyReplicas", p.ready}, {"desiredReplicas", p.desired}};
  status["decode"] = {
      {"replicas", d.replicas}, {"readyReplicas", d.ready}, {"desiredReplicas", d.desired}};
  status["router"] = {{"replicas", router_replicas}, {"readyReplicas", router_ready}};

  const bool capacity_ok = placement.fits || policy == TopologyPolicy::kNone;
  const bool all_ready =
      p.ready >= p.desired && d.ready >= d.desired && router_ready >= spec.router_replicas;
  const bool rolled_out = p.rolled_out && d.rolled_out;
  if (!capacity_ok) {
    std::string message = placement.message;
    SetCondition(&conditions, "Degraded", kConditionTrue, "InsufficientCapacity", message,
                 generation, now);
    if (!all_ready)
      SetCondition(&conditions, "Ready", kConditionFalse, "InsufficientCapacity", message,
                   generation, now);
    events_->Record(pool, "Warning", "InsufficientCapacity", message);
  } else {
    // A stable message: free-GPU counts change with other pools and would rewrite status.
    std::string message = domain.empty()
                              ? "workers not pinned to an NVLink domain (topology policy None)"
                              : "workers placed in NVLink domain " + domain + " (" +
                                    std::to_string(sized.TotalGpus()) + " GPUs)";
    SetCondition(&conditions, "Degraded", kConditionFalse, "AsExpected", message, generation, now);
  }
  if (all_ready && rolled_out) {
    std::ostringstream msg;
    msg << "prefill " << p.ready << "/" << p.desired << ", decode " << d.ready << "/" << d.desired
        << ", router " << router_ready << "/" << spec.router_replicas << " ready";
    SetCondition(&conditions, "Ready", kConditionTrue, "AllReplicasReady", msg.str(), generation,
                 now);
    SetCondition(&conditions, "Progressing", kConditionFalse, "Complete", "all replicas ready",
                 generation, now);
  } else {
    std::ostringstream msg;
    msg << "prefill " << p.ready << "/" << p.desired << ", decode " << d.ready << "/" << d.desired
        << ", router " << router_ready << "/" << spec.router_replicas << " ready";
    if (!rolled_out) msg << "; rolling out a new pod template";
    if (capacity_ok)
      SetCondition(&conditions, "Ready", kConditionFalse, "ReplicasNotReady", msg.str(), generation,
                   now);
    SetCondition(&conditions, "Progressing", kConditionTrue,
                 rolled_out ? "ScalingReplicas" : "RollingOut", msg.str(), generation, now);
  }
  Status written = write_status();
  if (!written.ok()) return {written};
  return result;
}

}  // namespace pdpool::controller
