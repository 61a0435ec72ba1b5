// Desired state: the Kubernetes objects an InferencePool should own (a ReplicaSet per worker role
// and template revision, the router Deployment and Service, the pool-token Secret), the rollout
// plan between template
// revisions, and the comparison that tells the reconciler whether an existing object needs a
// write. Everything here is a pure function of its arguments: no client, no clock, no shared
// state; safe to call from any thread.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/json.h"
#include "common/status.h"
#include "controller/placement.h"
#include "controller/pool_spec.h"

namespace pdpool::controller {

namespace wellknown {
inline constexpr char kRoleLabel[] = "pdpool.dev/role";
inline constexpr char kTemplateHashLabel[] = "pdpool.dev/template-hash";
// On the router Deployment (metadata.annotations): the hash of the pod template last written.
inline constexpr char kTemplateHashAnnotation[] = "pdpool.dev/template-hash";
inline constexpr char kNameLabel[] = "app.kubernetes.io/name";
inline constexpr char kManagedByLabel[] = "app.kubernetes.io/managed-by";
inline constexpr char kManagedByValue[] = "pdpool";
inline constexpr char kWorkerAppName[] = "pdpool-worker";
inline constexpr char kRouterAppName[] = "pdpool-router";
inline constexpr char kRouterRole[] = "router";
inline constexpr char kPoolApiVersion[] = "pdpool.dev/v1alpha1";
inline constexpr char kPoolKind[] = "InferencePool";
inline constexpr char kWorkerContainer[] = "worker";
inline constexpr char kRouterContainer[] = "router";
inline constexpr int32_t kWorkerPort = 8000;
inline constexpr int32_t kRouterPort = 8080;
inline constexpr int32_t kRouterServicePort = 80;
// The pool's shared token: Secret `<pool>-token`, key `token`, mounted into every worker and
// router pod; each reads it with --auth-token-file.
inline constexpr char kTokenSecretSuffix[] = "-token";
inline constexpr char kTokenKey[] = "token";
inline constexpr char kTokenVolume[] = "pool-token";
inline constexpr char kTokenMountPath[] = "/var/run/pdpool/token";
inline constexpr char kTokenFile[] = "/var/run/pdpool/token/token";
// Workers: a downward-API volume with the pod's labels, read with --labels-file (the role label
// decides the worker's role after an in-place move).
inline constexpr char kPodInfoVolume[] = "podinfo";
inline constexpr char kPodInfoMountPath[] = "/etc/pdpool/podinfo";
inline constexpr char kPodInfoLabelsFile[] = "labels";
}  // namespace wellknown

enum class WorkerRole { kPrefill, kDecode };
std::string_view WorkerRoleName(WorkerRole role);  // "prefill" | "decode"

// What owner references and names need from the pool object.
struct PoolIdentity {
  std::string name;
  std::string namespace_name;
  std::string uid;
  int64_t generation = 0;
};

// Reads metadata.name/namespace/uid (required) and generation. InvalidArgument naming the field
// when one is missing, or when the name cannot be a label value (over 63 characters).
StatusOr<PoolIdentity> ReadPoolIdentity(const Json& pool);

// {apiVersion: pdpool.dev/v1alpha1, kind: InferencePool, name, uid, controller: true,
//  blockOwnerDeletion: true}
Json PoolOwnerReference(const PoolIdentity& pool);

// The pod template (a PodTemplateSpec) of a worker role, without the template-hash label:
// labels, the `worker` container (image, `pdpool-agent worker --role --backend --model
// --served-model-name --weights --tensor-parallel --kv-transport --port --auth-token-file
// --labels-file`,
// downward-API env, port 8000 `http`, nvidia.com/gpu requests and limits of gpusPerReplica,
// probes), the `pool-token` volume (Secret `<pool>-token`) mounted read-only at
// /var/run/pdpool/token, the `podinfo` downward-API volume (labels) at /etc/pdpool/podinfo,
// affinity from WorkerAffinity(spec.topology.key, domain, policy), then
// spec.template merged on top (see MergePodTemplate). The identity labels, the token volume and
// the worker's token mount are applied again after the merge: the ReplicaSet selector must
// always match, and an override that lists its own volumes or volumeMounts (lists replace) must
// not cut the worker off from its pool.
StatusOr<Json> BuildWorkerPodTemplate(const Json& pool, const PoolSpec& spec, WorkerRole role,
                                      std::string_view domain, TopologyPolicy policy);

// Merges `overrides` (spec.template, a partial PodTemplateSpec) onto `base` with JSON merge-patch
// semantics (RFC 7386: objects merge key by key, null deletes, anything else replaces) with one
// strategic-merge-like exception: spec.containers and spec.initContainers are merged by
// container name (a named container is merge-patched into ours, an unknown name is appended),
// and inside a merged container `env` entries are matched by name (an override entry replaces
// ours whole, new names are appended). Without that, adding one env var or a volume mount to
// `worker` would wipe the command, GPU requests and probes. Other lists replace.
Json MergePodTemplate(const Json& base, const Json& overrides);

// Stable revision id of a pod template: FNV-1a 64 of the canonical JSON dump (object keys
// sorted), first 10 hex digits.
std::string TemplateHash(const Json& pod_template);

// The desired ReplicaSet `<pool>-<role>-<hash>` of a worker role with `replicas` replicas:
// labels {name, managed-by, pool, role, template-hash}, selector {pool, role, template-hash},
// the pool as controlling owner, the pod template with its template-hash label.
StatusOr<Json> BuildWorkerReplicaSet(const Json& pool, const PoolSpec& spec, WorkerRole role,
                                     std::string_view domain, TopologyPolicy policy,
                                     int32_t replicas);

// The router Deployment `<pool>-router`: spec.router.replicas replicas of
// `pdpool-agent router --pool=<name> --namespace=<ns> [--served-model-name=<spec.model.name>]
// --port=8080 --auth-token-file=/var/run/pdpool/token/token` with the `pool-token` volume
// mounted as on workers, no GPUs, probes; selector {pool, role=router}.
// spec.template is not applied to it (GPU-node tolerations and affinity are for workers), except
// spec.imagePullSecrets, since the router runs the same image. The template's hash is kept in
// the annotation pdpool.dev/template-hash.
StatusOr<Json> BuildRouterDeployment(const Json& pool, const PoolSpec& spec);

// The router Service `<pool>-router`: ClusterIP, port 80 (`http`) → 8080, selector
// {pool, role=router}. InvalidArgument when `<pool>-router` is not a DNS-1035 label.
StatusOr<Json> BuildRouterService(const Json& pool);

// `<pool>-token`.
std::string PoolTokenSecretName(std::string_view pool_name);

// The Secret `<pool>-token` holding the pool's shared token: type Opaque, data.token = base64 of
// `token`, labels {managed-by: pdpool, pool: <pool>}, the pool as controlling owner
// (so the garbage collector deletes it with the pool). InvalidArgument when `token` is empty or
// the name is not a DNS subdomain (lower-case letters, digits, '-' and '.', at most 253).
StatusOr<Json> BuildPoolTokenSecret(const Json& pool, std::string_view token);

struct DesiredObjects {
  Json prefill_replica_set;
  Json decode_replica_set;
  Json router_deployment;
  Json router_service;
};

// All four at once.
StatusOr<DesiredObjects> BuildDesiredObjects(const Json& pool, const PoolSpec& spec,
                                             std::string_view domain, TopologyPolicy policy,
                                             int32_t prefill_replicas, int32_t decode_replicas);

// ---- Rollout between template revisions ----

struct ReplicaSetState {
  std::string name;
  std::string creation_timestamp;  // RFC 3339; orders revisions (oldest first)
  int32_t replicas = 0;            // spec.replicas
  int32_t ready_replicas = 0;      // status.readyReplicas
};

// Reads a ReplicaSet object; absent spec.replicas is 1 (the API default), absent ready is 0.
ReplicaSetState ReadReplicaSetState(const Json& replica_set);

struct ReplicaSetScale {
  std::string name;
  int32_t replicas = 0;
};

struct RolloutPlan {
  int32_t new_replicas = 0;          // for the current-revision ReplicaSet
  std::vector<ReplicaSetScale> old;  // for each old one, oldest first
  bool complete = false;             // new one fully ready, old ones all at zero
};

// New ReplicaSet → `desired`. Old ones together may keep
// max(0, desired − current.ready_replicas − max_unavailable) replicas; the cut is taken from the
// oldest first (by creation time, then name), down to zero, and an old ReplicaSet is never scaled
// up. max_unavailable = 0 keeps full serving capacity at all times but needs room for a second
// copy of the pool; when the domain has no spare GPUs the new pods stay Pending and only
// max_unavailable > 0 lets the rollout progress (each step frees GPUs for the next new pod).
// Both roles roll together because the reconciler applies the plan to both on every pass.
RolloutPlan PlanRollout(int32_t desired, const std::optional<ReplicaSetState>& current,
                        std::vector<ReplicaSetState> old, int32_t max_unavailable = 0);

// The pool's ReplicaSets of one role: the one with the current template hash and the others.
struct RoleReplicaSets {
  std::optional<Json> current;
  std::vector<Json> old;
};
// Keeps only ReplicaSets controlled by `pool_uid` with label pdpool.dev/role=<role>.
RoleReplicaSets SplitReplicaSets(const std::vector<Json>& replica_sets, std::string_view pool_uid,
                                 WorkerRole role, std::string_view current_hash);

// uid of the ownerReference with controller: true, or "" when none.
std::string ControllerUid(const Json& object);

// ---- Comparing existing objects with desired ones ----

struct ObjectUpdate {
  std::vector<std::string> changed_fields;  // e.g. "spec.replicas", "metadata.labels"
  Json object;  // `existing` with the desired values applied: ready to PUT (keeps
                // resourceVersion, server-assigned fields such as clusterIP, others' labels)
};

// nullopt when `existing` already matches `desired` in everything pdpool manages, so the
// reconciler writes only on a change. Labels and annotations: pdpool's keys must match, other
// keys are left alone. Owner references: the pool's controller reference must be present.
// ReplicaSet: also spec.replicas (its template is fixed by the hash in its name).
std::optional<ObjectUpdate> ReplicaSetUpdate(const Json& existing, const Json& desired);
// Deployment: also spec.replicas and spec.template (the hash annotation differs, or a field we
// set was changed by someone else; fields the API server defaults are not differences).
std::optional<ObjectUpdate> DeploymentUpdate(const Json& existing, const Json& desired);
// Service: also spec.type, spec.selector and spec.ports; clusterIP(s) stay as assigned.
std::optional<ObjectUpdate> ServiceUpdate(const Json& existing, const Json& desired);

}  // namespace pdpool::controller
