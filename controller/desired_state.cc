// Desired state: builders for the pool's children, the rollout plan and the update comparison.
// Pure functions; see desired_state.h for the thread-safety contract. JSON is only read through
// type-checked accessors and dumped with invalid UTF-8 replaced, so nothing here throws; the
// StatusOr builders still catch, as a last line, so no exception can cross the module boundary.
#include "controller/desired_state.h"

#include <algorithm>
#include <cstdio>
#include <exception>
#include <tuple>
#include <utility>

#include "common/base64.h"

namespace pdpool::controller {
namespace {

using namespace wellknown;

int64_t IntAt(const Json& obj, std::initializer_list<std::string_view> keys, int64_t fallback) {
  const Json* v = JsonPath(obj, keys);
  if (v == nullptr || !v->is_number_integer()) return fallback;
  return v->get<int64_t>();
}

// Object at `key`, or an empty object (never throws, never null).
Json ObjectAt(const Json& obj, std::initializer_list<std::string_view> keys) {
  const Json* v = JsonPath(obj, keys);
  return v != nullptr && v->is_object() ? *v : Json::object();
}

bool IsLabelValue(std::string_view v) {
  if (v.size() > 63) return false;
  if (v.empty()) return true;
  auto alnum = [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
  };
  if (!alnum(v.front()) || !alnum(v.back())) return false;
  return std::all_of(v.begin(), v.end(),
                     [&](char c) { return alnum(c) || c == '-' || c == '_' || c == '.'; });
}

bool IsDns1035Label(std::string_view v) {
  if (v.empty() || v.size() > 63) return false;
  auto lower_alnum = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); };
  if (!(v.front() >= 'a' && v.front() <= 'z') || !lower_alnum(v.back())) return false;
  return std::all_of(v.begin(), v.end(), [&](char c) { return lower_alnum(c) || c == '-'; });
}

Json FieldRefEnv(const char* name, const char* field_path) {
  return {{"name", name}, {"valueFrom", {{"fieldRef", {{"fieldPath", field_path}}}}}};
}

Json HttpProbe(const char* path, int period, int failures) {
  return {{"httpGet", {{"path", path}, {"port", "http"}}},
          {"periodSeconds", period},
          {"failureThreshold", failures}};
}

Json PodLabels(const std::string& app, const std::string& pool, std::string_view role) {
  return {{kNameLabel, app},
          {kManagedByLabel, kManagedByValue},
          {kPoolLabel, pool},
          {kRoleLabel, std::string(role)}};
}

// RFC 7386 merge patch of `patch` onto `target`.
Json MergePatch(const Json& target, const Json& patch) {
  if (!patch.is_object()) return patch;
  Json result = target.is_object() ? target : Json::object();
  for (auto it = patch.begin(); it != patch.end(); ++it) {
    if (it->is_null()) {
      result.erase(it.key());
    } else {
      auto existing = result.find(it.key());
      result[it.key()] = MergePatch(existing != result.end() ? *existing : Json(), *it);
    }
  }
  return result;
}

std::string NameOf(const Json& item) { return JsonStringAt(item, {"name"}); }

// Lists of named items: an override entry with a name already in `base` is combined with it by
// `merge`; others are appended (merge-patched onto nothing, which drops their nulls).
template <typename MergeFn>
Json MergeNamedList(const Json& base, const Json& patch, MergeFn merge) {
  Json result = base.is_array() ? base : Json::array();
  for (const Json& item : patch) {
    const std::string name = NameOf(item);
    bool merged = false;
    if (!name.empty()) {
      for (Json& existing : result) {
        if (NameOf(existing) == name) {
          existing = merge(existing, item);
          merged = true;
          break;
        }
      }
    }
    if (!merged) result.push_back(MergePatch(Json(), item));
  }
  return result;
}

Json MergeContainer(const Json& base, const Json& patch) {
  if (!patch.is_object()) return patch;
  Json result = base.is_object() ? base : Json::object();
  for (auto it = patch.begin(); it != patch.end(); ++it) {
    if (it->is_null()) {
      result.erase(it.key());
    } else if (it.key() == "env" && it->is_array()) {
      auto existing = result.find("env");
      result["env"] = MergeNamedList(existing != result.end() ? *existing : Json(), *it,
                                     [](const Json&, const Json& item) { return item; });
    } else {
      auto existing = result.find(it.key());
      result[it.key()] = MergePatch(existing != result.end() ? *existing : Json(), *it);
    }
  }
  return result;
}

Json MergePodSpec(const Json& base, const Json& patch) {
  if (!patch.is_object()) return patch;
  Json result = base.is_object() ? base : Json::object();
  for (auto it = patch.begin(); it != patch.end(); ++it) {
    if (it->is_null()) {
      result.erase(it.key());
    } else if ((it.key() == "containers" || it.key() == "initContainers") && it->is_array()) {
      auto existing = result.find(it.key());
      result[it.key()] =
          MergeNamedList(existing != result.end() ? *existing : Json(), *it, MergeContainer);
    } else {
      auto existing = result.find(it.key());
      result[it.key()] = MergePatch(existing != result.end() ? *existing : Json(), *it);
    }
  }
  return result;
}

std::string Dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

// The agent's canonical flags (its aliases --model-preset, --model-name, --model-path and
// --dummy-seed still parse, but templates written with them would hash differently for nothing).
std::vector<std::string> WorkerArgs(const PoolSpec& spec, WorkerRole role) {
  const RoleSpec& r = role == WorkerRole::kPrefill ? spec.prefill : spec.decode;
  std::vector<std::string> args = {"worker", "--role=" + std::string(WorkerRoleName(role)),
                                   "--backend=" + spec.backend};
  if (!spec.model.preset.empty()) args.push_back("--model=" + spec.model.preset);
  if (!spec.model.name.empty()) args.push_back("--served-model-name=" + spec.model.name);
  if (!spec.model.source_path.empty()) {
    args.push_back("--weights=" + spec.model.source_path);
  } else if (spec.model.dummy_seed.has_value()) {
    args.push_back("--weights=dummy:" + std::to_string(*spec.model.dummy_seed));
  }
  args.push_back("--tensor-parallel=" + std::to_string(r.gpus_per_replica));
  args.push_back("--kv-transport=" + spec.kv_transport);
  args.push_back("--port=" + std::to_string(kWorkerPort));
  args.push_back(std::string("--auth-token-file=") + kTokenFile);
  // The pod's labels: a worker moved in place to the other role (its pod relabelled) comes back
  // in that role after a restart, although these args still name the old one.
  args.push_back(std::string("--labels-file=") + kPodInfoMountPath + "/" + kPodInfoLabelsFile);
  return args;
}

// The worker's environment: its pod identity and address, and where it runs, which its KV
// transport choice (--kv-transport auto) reads: the node (downward API) and, when the pool is
// pinned to one NVLink domain (policy Required), that domain (a node label the downward API
// cannot give a pod).
Json WorkerEnv(std::string_view domain, TopologyPolicy policy) {
  Json env = Json::array(
      {FieldRefEnv("POD_NAME", "metadata.name"), FieldRefEnv("POD_NAMESPACE", "metadata.namespace"),
       FieldRefEnv("POD_IP", "status.podIP"), FieldRefEnv("PDPOOL_NODE_NAME", "spec.nodeName")});
  if (policy == TopologyPolicy::kRequired && !domain.empty()) {
    env.push_back({{"name", "PDPOOL_NVLINK_DOMAIN"}, {"value", std::string(domain)}});
  }
  return env;
}

Json PodInfoVolume() {
  return {{"name", kPodInfoVolume},
          {"downwardAPI",
           {{"items", Json::array({{{"path", kPodInfoLabelsFile},
                                    {"fieldRef", {{"fieldPath", "metadata.labels"}}}}})}}}};
}

Json PodInfoMount() {
  return {{"name", kPodInfoVolume}, {"mountPath", kPodInfoMountPath}, {"readOnly", true}};
}

Json TokenVolume(const PoolIdentity& id) {
  // 0440, not the default 0644: nothing but the pod's own user and group needs the token (a
  // sidecar under another uid should not read it). The kubelet gives the files the pod's
  // fsGroup, so a pod that runs as non-root must set spec.securityContext.fsGroup (through
  // spec.template) to read it.
  return {{"name", kTokenVolume},
          {"secret", {{"secretName", PoolTokenSecretName(id.name)}, {"defaultMode", 0440}}}};
}

Json TokenMount() {
  return {{"name", kTokenVolume}, {"mountPath", kTokenMountPath}, {"readOnly", true}};
}

// Puts `item` into the array at (*obj)[key], replacing an entry with the same name.
void UpsertNamed(Json* obj, const char* key, const Json& item) {
  Json& list = (*obj)[key];
  if (!list.is_array()) list = Json::array();
  for (Json& existing : list) {
    if (NameOf(existing) == NameOf(item)) {
      existing = item;
      return;
    }
  }
  list.push_back(item);
}

// The token volume in the pod spec and its mount in `container`, whatever overrides did to them.
void ApplyTokenVolume(const PoolIdentity& id, const char* container, Json* tmpl) {
  Json& pod_spec = (*tmpl)["spec"];
  if (!pod_spec.is_object()) pod_spec = Json::object();
  UpsertNamed(&pod_spec, "volumes", TokenVolume(id));
  Json& containers = pod_spec["containers"];
  if (!containers.is_array()) return;
  for (Json& c : containers) {
    if (c.is_object() && NameOf(c) == container) UpsertNamed(&c, "volumeMounts", TokenMount());
  }
}

StatusOr<Json> WorkerPodTemplate(const PoolIdentity& id, const PoolSpec& spec, WorkerRole role,
                                 std::string_view domain, TopologyPolicy policy) {
  const RoleSpec& r = role == WorkerRole::kPrefill ? spec.prefill : spec.decode;
  Json container = {
      {"name", kWorkerContainer},
      {"image", spec.image},
      {"command", Json::array({"pdpool-agent"})},
      {"args", WorkerArgs(spec, role)},
      {"env", WorkerEnv(domain, policy)},
      {"ports",
       Json::array({{{"name", "http"}, {"containerPort", kWorkerPort}, {"protocol", "TCP"}}})},
      {"readinessProbe", HttpProbe("/readyz", 5, 3)},
      {"livenessProbe", HttpProbe("/healthz", 10, 3)},
      // Loading a large model's weights can take minutes; liveness only starts after this.
      {"startupProbe", HttpProbe("/healthz", 10, 90)},
      {"volumeMounts", Json::array({TokenMount(), PodInfoMount()})},
  };
  if (r.gpus_per_replica > 0) {
    const Json gpus = {{kGpuResource, std::to_string(r.gpus_per_replica)}};
    container["resources"] = {{"requests", gpus}, {"limits", gpus}};
  }
  Json pod_spec = {{"containers", Json::array({container})},
                   {"volumes", Json::array({TokenVolume(id), PodInfoVolume()})},
                   {"terminationGracePeriodSeconds", 60}};
  const std::string key = spec.topology.key.empty() ? kDefaultTopologyKey : spec.topology.key;
  if (Json affinity = WorkerAffinity(key, domain, policy); !affinity.is_null()) {
    pod_spec["affinity"] = std::move(affinity);
  }
  const Json labels = PodLabels(kWorkerAppName, id.name, WorkerRoleName(role));
  Json tmpl = {{"metadata", {{"labels", labels}}}, {"spec", pod_spec}};
  if (spec.template_overrides.is_object() && !spec.template_overrides.empty()) {
    tmpl = MergePodTemplate(tmpl, spec.template_overrides);
  } else if (!spec.template_overrides.is_null() && !spec.template_overrides.is_object()) {
    return Status::InvalidArgument("spec.template: must be an object (a PodTemplateSpec)");
  }
  // Overrides may have replaced metadata or labels with something else; the selector needs them.
  if (!tmpl["metadata"].is_object()) tmpl["metadata"] = Json::object();
  if (!tmpl["metadata"]["labels"].is_object()) tmpl["metadata"]["labels"] = Json::object();
  for (auto it = labels.begin(); it != labels.end(); ++it) {
    tmpl["metadata"]["labels"][it.key()] = *it;
  }
  ApplyTokenVolume(id, kWorkerContainer, &tmpl);
  UpsertNamed(&tmpl["spec"], "volumes", PodInfoVolume());
  for (Json& c : tmpl["spec"]["containers"]) {
    if (c.is_object() && NameOf(c) == kWorkerContainer)
      UpsertNamed(&c, "volumeMounts", PodInfoMount());
  }
  return tmpl;
}

Json ObjectMeta(const PoolIdentity& id, const std::string& name, Json labels) {
  return {{"name", name},
          {"namespace", id.namespace_name},
          {"labels", std::move(labels)},
          {"ownerReferences", Json::array({PoolOwnerReference(id)})}};
}

StatusOr<Json> WorkerReplicaSet(const PoolIdentity& id, const PoolSpec& spec, WorkerRole role,
                                std::string_view domain, TopologyPolicy policy, int32_t replicas) {
  StatusOr<Json> tmpl = WorkerPodTemplate(id, spec, role, domain, policy);
  if (!tmpl.ok()) return tmpl.status();
  const std::string hash = TemplateHash(*tmpl);
  const std::string role_name(WorkerRoleName(role));
  (*tmpl)["metadata"]["labels"][kTemplateHashLabel] = hash;
  Json labels = PodLabels(kWorkerAppName, id.name, role_name);
  labels[kTemplateHashLabel] = hash;
  const Json selector = {
      {kPoolLabel, id.name}, {kRoleLabel, role_name}, {kTemplateHashLabel, hash}};
  return Json{{"apiVersion", "apps/v1"},
              {"kind", "ReplicaSet"},
              {"metadata", ObjectMeta(id, id.name + "-" + role_name + "-" + hash, labels)},
              {"spec",
               {{"replicas", std::max(0, replicas)},
                {"selector", {{"matchLabels", selector}}},
                {"template", std::move(*tmpl)}}}};
}

std::vector<std::string> RouterArgs(const PoolIdentity& id, const PoolSpec& spec) {
  std::vector<std::string> args = {"router", "--pool=" + id.name,
                                   "--namespace=" + id.namespace_name};
  if (!spec.model.name.empty()) args.push_back("--served-model-name=" + spec.model.name);
  args.push_back("--port=" + std::to_string(kRouterPort));
  args.push_back(std::string("--auth-token-file=") + kTokenFile);
  return args;
}

Json RouterDeployment(const PoolIdentity& id, const PoolSpec& spec) {
  const Json labels = PodLabels(kRouterAppName, id.name, kRouterRole);
  Json container = {
      {"name", kRouterContainer},
      {"image", spec.image},
      {"command", Json::array({"pdpool-agent"})},
      {"args", RouterArgs(id, spec)},
      {"env", Json::array({FieldRefEnv("POD_NAME", "metadata.name"),
                           FieldRefEnv("POD_NAMESPACE", "metadata.namespace")})},
      {"ports",
       Json::array({{{"name", "http"}, {"containerPort", kRouterPort}, {"protocol", "TCP"}}})},
      {"readinessProbe", HttpProbe("/readyz", 5, 3)},
      {"livenessProbe", HttpProbe("/healthz", 10, 3)},
      {"volumeMounts", Json::array({TokenMount()})},
  };
  Json pod_spec = {{"containers", Json::array({container})},
                   {"volumes", Json::array({TokenVolume(id)})},
                   {"terminationGracePeriodSeconds", 30}};
  if (const Json* secrets = JsonPath(spec.template_overrides, {"spec", "imagePullSecrets"});
      secrets != nullptr && secrets->is_array()) {
    pod_spec["imagePullSecrets"] = *secrets;
  }
  const Json tmpl = {{"metadata", {{"labels", labels}}}, {"spec", pod_spec}};
  Json meta = ObjectMeta(id, id.name + "-router", labels);
  meta["annotations"] = {{kTemplateHashAnnotation, TemplateHash(tmpl)}};
  const Json selector = {{kPoolLabel, id.name}, {kRoleLabel, kRouterRole}};
  return {{"apiVersion", "apps/v1"},
          {"kind", "Deployment"},
          {"metadata", std::move(meta)},
          {"spec",
           {{"replicas", std::max(0, spec.router_replicas)},
            {"selector", {{"matchLabels", selector}}},
            {"template", tmpl}}}};
}

StatusOr<Json> RouterService(const PoolIdentity& id) {
  const std::string name = id.name + "-router";
  if (!IsDns1035Label(name)) {
    return Status::InvalidArgument(
        "metadata.name \"" + id.name + "\": the router Service name \"" + name +
        "\" must be a DNS-1035 label (lower-case letters, digits and '-', starting with a "
        "letter, at most 63 characters), so the pool name must be at most 56 characters and "
        "contain no '.'");
  }
  Json labels = PodLabels(kRouterAppName, id.name, kRouterRole);
  const Json selector = {{kPoolLabel, id.name}, {kRoleLabel, kRouterRole}};
  return Json{{"apiVersion", "v1"},
              {"kind", "Service"},
              {"metadata", ObjectMeta(id, name, std::move(labels))},
              {"spec",
               {{"type", "ClusterIP"},
                {"selector", selector},
                {"ports", Json::array({{{"name", "http"},
                                        {"port", kRouterServicePort},
                                        {"targetPort", kRouterPort},
                                        {"protocol", "TCP"}}})}}}};
}

// RFC 1123 subdomain, what Kubernetes requires of most object names (Secrets included).
bool IsDnsSubdomain(std::string_view v) {
  if (v.empty() || v.size() > 253) return false;
  auto lower_alnum = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); };
  if (!lower_alnum(v.front()) || !lower_alnum(v.back())) return false;
  return std::all_of(v.begin(), v.end(),
                     [&](char c) { return lower_alnum(c) || c == '-' || c == '.'; });
}

StatusOr<Json> PoolTokenSecret(const PoolIdentity& id, std::string_view token) {
  const std::string name = PoolTokenSecretName(id.name);
  if (!IsDnsSubdomain(name)) {
    return Status::InvalidArgument(
        "metadata.name \"" + id.name + "\": the token Secret name \"" + name +
        "\" must be a DNS subdomain (lower-case letters, digits, '-' and '.', starting and "
        "ending with a letter or digit, at most 253 characters)");
  }
  if (token.empty()) return Status::InvalidArgument("pool token: empty");
  const Json labels = {{kManagedByLabel, kManagedByValue}, {kPoolLabel, id.name}};
  return Json{{"apiVersion", "v1"},
              {"kind", "Secret"},
              {"metadata", ObjectMeta(id, name, labels)},
              {"type", "Opaque"},
              {"data", {{kTokenKey, Base64Encode(token)}}}};
}

template <typename Fn>
auto Guarded(const char* what, Fn fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const std::exception& e) {
    return Status::Internal(std::string(what) + ": " + e.what());
  } catch (...) {
    return Status::Internal(std::string(what) + ": unknown exception");
  }
}

// ---- updates ----

// Every key of desired.metadata.<field> present with the same value in existing.
bool MapContains(const Json& existing, const Json& desired, std::string_view field) {
  return JsonContains(ObjectAt(existing, {"metadata", field}),
                      ObjectAt(desired, {"metadata", field}));
}

// existing.metadata.<field> with desired's keys written over it.
void MergeMap(Json* object, const Json& desired, std::string_view field) {
  const Json want = ObjectAt(desired, {"metadata", field});
  if (want.empty()) return;
  Json merged = ObjectAt(*object, {"metadata", field});
  for (auto it = want.begin(); it != want.end(); ++it) merged[it.key()] = *it;
  (*object)["metadata"][std::string(field)] = std::move(merged);
}

bool HasOwnerRefs(const Json& existing, const Json& desired) {
  const Json* want = JsonPath(desired, {"metadata", "ownerReferences"});
  if (want == nullptr || !want->is_array()) return true;
  const Json* have = JsonPath(existing, {"metadata", "ownerReferences"});
  for (const Json& ref : *want) {
    bool found = false;
    if (have != nullptr && have->is_array()) {
      for (const Json& h : *have) {
        if (JsonContains(h, ref)) {
          found = true;
          break;
        }
      }
    }
    if (!found) return false;
  }
  return true;
}

// Replaces the references with desired's uids by desired's, keeping everyone else's.
void MergeOwnerRefs(Json* object, const Json& desired) {
  const Json* want = JsonPath(desired, {"metadata", "ownerReferences"});
  if (want == nullptr || !want->is_array()) return;
  Json refs = Json::array();
  if (const Json* have = JsonPath(*object, {"metadata", "ownerReferences"});
      have != nullptr && have->is_array()) {
    for (const Json& h : *have) {
      const std::string uid = JsonStringAt(h, {"uid"});
      const bool replaced = std::any_of(want->begin(), want->end(), [&](const Json& w) {
        return JsonStringAt(w, {"uid"}) == uid;
      });
      if (!replaced) refs.push_back(h);
    }
  }
  for (const Json& w : *want) refs.push_back(w);
  (*object)["metadata"]["ownerReferences"] = std::move(refs);
}

// The common part of every update: labels, annotations, owner references.
void CompareMetadata(const Json& existing, const Json& desired, ObjectUpdate* update) {
  if (!update->object.is_object()) update->object = Json::object();
  if (!update->object["metadata"].is_object()) update->object["metadata"] = Json::object();
  if (!MapContains(existing, desired, "labels")) {
    update->changed_fields.push_back("metadata.labels");
    MergeMap(&update->object, desired, "labels");
  }
  if (!MapContains(existing, desired, "annotations")) {
    update->changed_fields.push_back("metadata.annotations");
    MergeMap(&update->object, desired, "annotations");
  }
  if (!HasOwnerRefs(existing, desired)) {
    update->changed_fields.push_back("metadata.ownerReferences");
    MergeOwnerRefs(&update->object, desired);
  }
}

void CompareReplicas(const Json& existing, const Json& desired, ObjectUpdate* update) {
  // The API server defaults an absent spec.replicas to 1.
  const int64_t want = IntAt(desired, {"spec", "replicas"}, 1);
  if (IntAt(existing, {"spec", "replicas"}, 1) != want) {
    update->changed_fields.push_back("spec.replicas");
    if (!update->object["spec"].is_object()) update->object["spec"] = Json::object();
    update->object["spec"]["replicas"] = want;
  }
}

std::optional<ObjectUpdate> Result(ObjectUpdate update) {
  if (update.changed_fields.empty()) return std::nullopt;
  return update;
}

}  // namespace

std::string_view WorkerRoleName(WorkerRole role) {
  return role == WorkerRole::kPrefill ? "prefill" : "decode";
}

StatusOr<PoolIdentity> ReadPoolIdentity(const Json& pool) {
  PoolIdentity id;
  id.name = JsonStringAt(pool, {"metadata", "name"});
  id.namespace_name = JsonStringAt(pool, {"metadata", "namespace"});
  id.uid = JsonStringAt(pool, {"metadata", "uid"});
  id.generation = IntAt(pool, {"metadata", "generation"}, 0);
  if (id.name.empty()) return Status::InvalidArgument("metadata.name: missing");
  if (id.namespace_name.empty()) return Status::InvalidArgument("metadata.namespace: missing");
  if (id.uid.empty()) return Status::InvalidArgument("metadata.uid: missing");
  if (!IsLabelValue(id.name)) {
    return Status::InvalidArgument("metadata.name \"" + id.name +
                                   "\": must be at most 63 characters, to be the value of "
                                   "label " +
                                   kPoolLabel + " on the pool's objects");
  }
  return id;
}

Json PoolOwnerReference(const PoolIdentity& pool) {
  return {{"apiVersion", kPoolApiVersion},
          {"kind", kPoolKind},
          {"name", pool.name},
          {"uid", pool.uid},
          {"controller", true},
          {"blockOwnerDeletion", true}};
}

Json MergePodTemplate(const Json& base, const Json& overrides) {
  if (!overrides.is_object()) return base;
  Json result = base.is_object() ? base : Json::object();
  for (auto it = overrides.begin(); it != overrides.end(); ++it) {
    if (it->is_null()) {
      result.erase(it.key());
    } else if (it.key() == "spec") {
      auto existing = result.find("spec");
      result["spec"] = MergePodSpec(existing != result.end() ? *existing : Json(), *it);
    } else {
      auto existing = result.find(it.key());
      result[it.key()] = MergePatch(existing != result.end() ? *existing : Json(), *it);
    }
  }
  return result;
}

std::string TemplateHash(const Json& pod_template) {
  uint64_t h = 14695981039346656037ULL;
  for (unsigned char c : Dump(pod_template)) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return std::string(buf, 10);
}

StatusOr<Json> BuildWorkerPodTemplate(const Json& pool, const PoolSpec& spec, WorkerRole role,
                                      std::string_view domain, TopologyPolicy policy) {
  return Guarded("building worker pod template", [&]() -> StatusOr<Json> {
    StatusOr<PoolIdentity> id = ReadPoolIdentity(pool);
    if (!id.ok()) return id.status();
    return WorkerPodTemplate(*id, spec, role, domain, policy);
  });
}

StatusOr<Json> BuildWorkerReplicaSet(const Json& pool, const PoolSpec& spec, WorkerRole role,
                                     std::string_view domain, TopologyPolicy policy,
                                     int32_t replicas) {
  return Guarded("building worker ReplicaSet", [&]() -> StatusOr<Json> {
    StatusOr<PoolIdentity> id = ReadPoolIdentity(pool);
    if (!id.ok()) return id.status();
    return WorkerReplicaSet(*id, spec, role, domain, policy, replicas);
  });
}

StatusOr<Json> BuildRouterDeployment(const Json& pool, const PoolSpec& spec) {
  return Guarded("building router Deployment", [&]() -> StatusOr<Json> {
    StatusOr<PoolIdentity> id = ReadPoolIdentity(pool);
    if (!id.ok()) return id.status();
    return RouterDeployment(*id, spec);
  });
}

StatusOr<Json> BuildRouterService(const Json& pool) {
  return Guarded("building router Service", [&]() -> StatusOr<Json> {
    StatusOr<PoolIdentity> id = ReadPoolIdentity(pool);
    if (!id.ok()) return id.status();
    return RouterService(*id);
  });
}

std::string PoolTokenSecretName(std::string_view pool_name) {
  return std::string(pool_name) + kTokenSecretSuffix;
}

StatusOr<Json> BuildPoolTokenSecret(const Json& pool, std::string_view token) {
  return Guarded("building pool token Secret", [&]() -> StatusOr<Json> {
    StatusOr<PoolIdentity> id = ReadPoolIdentity(pool);
    if (!id.ok()) return id.status();
    return PoolTokenSecret(*id, token);
  });
}

StatusOr<DesiredObjects> BuildDesiredObjects(const Json& pool, const PoolSpec& spec,
                                             std::string_view domain, TopologyPolicy policy,
                                             int32_t prefill_replicas, int32_t decode_replicas) {
  return Guarded("building desired objects", [&]() -> StatusOr<DesiredObjects> {
    StatusOr<PoolIdentity> id = ReadPoolIdentity(pool);
    if (!id.ok()) return id.status();
    StatusOr<Json> prefill =
        WorkerReplicaSet(*id, spec, WorkerRole::kPrefill, domain, policy, prefill_replicas);
    if (!prefill.ok()) return prefill.status();
    StatusOr<Json> decode =
        WorkerReplicaSet(*id, spec, WorkerRole::kDecode, domain, policy, decode_replicas);
    if (!decode.ok()) return decode.status();
    StatusOr<Json> service = RouterService(*id);
    if (!service.ok()) return service.status();
    return DesiredObjects{std::move(*prefill), std::move(*decode), RouterDeployment(*id, spec),
                          std::move(*service)};
  });
}

ReplicaSetState ReadReplicaSetState(const Json& replica_set) {
  ReplicaSetState s;
  s.name = JsonStringAt(replica_set, {"metadata", "name"});
  s.creation_timestamp = JsonStringAt(replica_set, {"metadata", "creationTimestamp"});
  s.replicas =
      static_cast<int32_t>(std::max<int64_t>(0, IntAt(replica_set, {"spec", "replicas"}, 1)));
  s.ready_replicas = static_cast<int32_t>(
      std::max<int64_t>(0, IntAt(replica_set, {"status", "readyReplicas"}, 0)));
  return s;
}

RolloutPlan PlanRollout(int32_t desired, const std::optional<ReplicaSetState>& current,
                        std::vector<ReplicaSetState> old, int32_t max_unavailable) {
  RolloutPlan plan;
  desired = std::max(0, desired);
  plan.new_replicas = desired;
  const int64_t new_ready = current.has_value() ? std::max(0, current->ready_replicas) : 0;
  int64_t allowed =
      std::max<int64_t>(0, int64_t{desired} - new_ready - std::max(0, max_unavailable));

  // Oldest first. RFC 3339 timestamps in the API server's one format sort as strings.
  std::sort(old.begin(), old.end(), [](const ReplicaSetState& a, const ReplicaSetState& b) {
    return std::tie(a.creation_timestamp, a.name) < std::tie(b.creation_timestamp, b.name);
  });
  int64_t total_old = 0;
  for (const ReplicaSetState& s : old) total_old += std::max(0, s.replicas);
  int64_t cut = std::max<int64_t>(0, total_old - allowed);
  bool old_gone = true;
  for (const ReplicaSetState& s : old) {
    const int64_t have = std::max(0, s.replicas);
    const int64_t take = std::min(have, cut);
    cut -= take;
    const int32_t target = static_cast<int32_t>(have - take);
    plan.old.push_back({s.name, target});
    if (target > 0 || s.replicas > 0) old_gone = false;
  }
  plan.complete = old_gone && new_ready >= desired;
  return plan;
}

std::string ControllerUid(const Json& object) {
  const Json* refs = JsonPath(object, {"metadata", "ownerReferences"});
  if (refs == nullptr || !refs->is_array()) return "";
  for (const Json& ref : *refs) {
    const Json* controller = JsonChild(ref, "controller");
    if (controller != nullptr && controller->is_boolean() && controller->get<bool>()) {
      return JsonStringAt(ref, {"uid"});
    }
  }
  return "";
}

RoleReplicaSets SplitReplicaSets(const std::vector<Json>& replica_sets, std::string_view pool_uid,
                                 WorkerRole role, std::string_view current_hash) {
  RoleReplicaSets out;
  for (const Json& rs : replica_sets) {
    if (pool_uid.empty() || ControllerUid(rs) != pool_uid) continue;
    if (JsonStringAt(rs, {"metadata", "labels", kRoleLabel}) != WorkerRoleName(role)) continue;
    if (!out.current.has_value() && !current_hash.empty() &&
        JsonStringAt(rs, {"metadata", "labels", kTemplateHashLabel}) == current_hash) {
      out.current = rs;
    } else {
      out.old.push_back(rs);
    }
  }
  return out;
}

std::optional<ObjectUpdate> ReplicaSetUpdate(const Json& existing, const Json& desired) {
  ObjectUpdate update{{}, existing};
  CompareMetadata(existing, desired, &update);
  CompareReplicas(existing, desired, &update);
  return Result(std::move(update));
}

std::optional<ObjectUpdate> DeploymentUpdate(const Json& existing, const Json& desired) {
  ObjectUpdate update{{}, existing};
  CompareMetadata(existing, desired, &update);
  CompareReplicas(existing, desired, &update);
  const std::string want_hash =
      JsonStringAt(desired, {"metadata", "annotations", kTemplateHashAnnotation});
  const std::string have_hash =
      JsonStringAt(existing, {"metadata", "annotations", kTemplateHashAnnotation});
  const Json* want_template = JsonPath(desired, {"spec", "template"});
  const Json* have_template = JsonPath(existing, {"spec", "template"});
  if (want_template != nullptr && (want_hash != have_hash || have_template == nullptr ||
                                   !JsonContains(*have_template, *want_template))) {
    update.changed_fields.push_back("spec.template");
    if (!update.object["spec"].is_object()) update.object["spec"] = Json::object();
    update.object["spec"]["template"] = *want_template;
    // The hash annotation is rewritten with the template even if it alone was dropped.
    MergeMap(&update.object, desired, "annotations");
  }
  return Result(std::move(update));
}

std::optional<ObjectUpdate> ServiceUpdate(const Json& existing, const Json& desired) {
  ObjectUpdate update{{}, existing};
  CompareMetadata(existing, desired, &update);
  // Only the fields pdpool sets: clusterIP, clusterIPs, ipFamilies, sessionAffinity... stay
  // as the API server assigned them.
  for (const char* field : {"type", "selector", "ports"}) {
    const Json* want = JsonPath(desired, {"spec", field});
    if (want == nullptr) continue;
    const Json* have = JsonPath(existing, {"spec", field});
    // Selectors must match exactly: an extra key would select fewer pods.
    const bool same =
        have != nullptr &&
        (std::string_view(field) == "selector" ? *have == *want : JsonContains(*have, *want));
    if (!same) {
      update.changed_fields.push_back(std::string("spec.") + field);
      if (!update.object["spec"].is_object()) update.object["spec"] = Json::object();
      update.object["spec"][field] = *want;
    }
  }
  return Result(std::move(update));
}

}  // namespace pdpool::controller
