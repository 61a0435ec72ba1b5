// PoolReconciler implementation: spec → children → status, for one pool per call.
#include "controller/pool_reconciler.h"

#include <sys/random.h>

#include <cerrno>
#include <cstring>
#include <sstream>

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
                               kube::EventRecorder* events, Clock* clock)
    : client_(client), caches_(caches), events_(events), clock_(clock) {}

ReconcileResult PoolReconciler::Reconcile(const std::string& key) {
  kube::ObjectPtr cached = caches_.pools->Get(key);
  if (!cached) return {};  // deleted: owner references let the garbage collector remove children
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
  const int32_t prefill_replicas = spec.prefill.replicas;
  const int32_t decode_replicas = spec.decode.replicas;

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

  // 4. Worker ReplicaSets, one revision per pod template; old revisions drain as the new
  // one becomes ready.
  std::vector<Json> owned = Snapshot(caches_.replica_sets->ByIndex(kPoolIndex, key));
  std::map<WorkerRole, RoleOutcome> outcomes;
  for (WorkerRole role : {WorkerRole::kPrefill, WorkerRole::kDecode}) {
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
