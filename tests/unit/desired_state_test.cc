// Tests for controller/desired_state: the objects a pool owns, template hashes, the rollout plan
// and the needs-update comparison. PoolSpec values are built directly (no parser needed).
#include "controller/desired_state.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <string>
#include <vector>

namespace pdpool::controller {
namespace {

using namespace wellknown;

Json Pool(const std::string& name = "llama") {
  return {{"apiVersion", "pdpool.dev/v1alpha1"},
          {"kind", "InferencePool"},
          {"metadata",
           {{"name", name}, {"namespace", "serving"}, {"uid", "uid-1234"}, {"generation", 3}}},
          {"spec", Json::object()}};
}

PoolSpec Spec() {
  PoolSpec spec;
  spec.model.name = "meta-llama/Llama-3.1-70B-Instruct";
  spec.model.preset = "llama-3.1-70b";
  spec.model.source_path = "/models/llama-3.1-70b";
  spec.image = "ghcr.io/pdpool/agent:0.1.0";
  spec.backend = "cuda";
  spec.prefill = {2, 4, 1, 8};
  spec.decode = {4, 2, 1, 12};
  spec.router_replicas = 2;
  spec.kv_transport = "nccl";
  return spec;
}

Json MustTemplate(const PoolSpec& spec, WorkerRole role, const std::string& domain = "nvl72-a",
                  TopologyPolicy policy = TopologyPolicy::kRequired) {
  StatusOr<Json> t = BuildWorkerPodTemplate(Pool(), spec, role, domain, policy);
  EXPECT_TRUE(t.ok()) << t.status().ToString();
  return t.ok() ? *t : Json();
}

Json MustReplicaSet(const PoolSpec& spec, WorkerRole role, int32_t replicas,
                    const std::string& domain = "nvl72-a",
                    TopologyPolicy policy = TopologyPolicy::kRequired) {
  StatusOr<Json> rs = BuildWorkerReplicaSet(Pool(), spec, role, domain, policy, replicas);
  EXPECT_TRUE(rs.ok()) << rs.status().ToString();
  return rs.ok() ? *rs : Json();
}

const Json* Container(const Json& pod_template, const std::string& name) {
  for (const Json& c : pod_template["spec"]["containers"]) {
    if (c.value("name", "") == name) return &c;
  }
  return nullptr;
}

bool HasArg(const Json& container, const std::string& arg) {
  for (const Json& a : container["args"]) {
    if (a == arg) return true;
  }
  return false;
}

const Json* Env(const Json& container, const std::string& name) {
  for (const Json& e : container["env"]) {
    if (e.value("name", "") == name) return &e;
  }
  return nullptr;
}

const Json kOwnerRef = {{"apiVersion", "pdpool.dev/v1alpha1"},
                        {"kind", "InferencePool"},
                        {"name", "llama"},
                        {"uid", "uid-1234"},
                        {"controller", true},
                        {"blockOwnerDeletion", true}};

// ---- worker pod template ----

TEST(WorkerPodTemplate, LabelsContainerArgsEnvPortsProbes) {
  const Json t = MustTemplate(Spec(), WorkerRole::kDecode);
  EXPECT_EQ(t["metadata"]["labels"], (Json{{"app.kubernetes.io/name", "pdpool-worker"},
                                           {"app.kubernetes.io/managed-by", "pdpool"},
                                           {"pdpool.dev/pool", "llama"},
                                           {"pdpool.dev/role", "decode"}}));
  EXPECT_EQ(t["spec"]["terminationGracePeriodSeconds"], 60);
  const Json* worker = Container(t, "worker");
  ASSERT_NE(worker, nullptr);
  EXPECT_EQ((*worker)["image"], "ghcr.io/pdpool/agent:0.1.0");
  EXPECT_EQ((*worker)["command"], Json::array({"pdpool-agent"}));
  // The agent's canonical flags, in order; the token file is where the Secret is mounted, the
  // labels file where the podinfo downward-API volume is.
  EXPECT_EQ((*worker)["args"],
            (Json{"worker", "--role=decode", "--backend=cuda", "--model=llama-3.1-70b",
                  "--served-model-name=meta-llama/Llama-3.1-70B-Instruct",
                  "--weights=/models/llama-3.1-70b", "--tensor-parallel=2", "--kv-transport=nccl",
                  "--port=8000", "--auth-token-file=/var/run/pdpool/token/token",
                  "--labels-file=/etc/pdpool/podinfo/labels"}));
  EXPECT_EQ((*Env(*worker, "POD_NAME"))["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name");
  EXPECT_EQ((*Env(*worker, "POD_NAMESPACE"))["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.namespace");
  EXPECT_EQ((*Env(*worker, "POD_IP"))["valueFrom"]["fieldRef"]["fieldPath"], "status.podIP");
  // Where the worker runs, for its KV transport choice (auto: nccl within a node or domain).
  EXPECT_EQ((*Env(*worker, "PDPOOL_NODE_NAME"))["valueFrom"]["fieldRef"]["fieldPath"],
            "spec.nodeName");
  EXPECT_EQ((*Env(*worker, "PDPOOL_NVLINK_DOMAIN"))["value"], "nvl72-a");
  EXPECT_EQ((*worker)["ports"][0]["name"], "http");
  EXPECT_EQ((*worker)["ports"][0]["containerPort"], 8000);
  EXPECT_EQ((*worker)["readinessProbe"]["httpGet"]["path"], "/readyz");
  EXPECT_EQ((*worker)["livenessProbe"]["httpGet"]["path"], "/healthz");
}

TEST(WorkerPodTemplate, NvlinkDomainEnvOnlyWhenThePoolIsPinnedToIt) {
  // Preferred or None: the pod may land outside the domain, so the worker is not told one.
  for (TopologyPolicy policy : {TopologyPolicy::kPreferred, TopologyPolicy::kNone}) {
    const Json t = MustTemplate(Spec(), WorkerRole::kPrefill, "nvl72-a", policy);
    const Json* worker = Container(t, "worker");
    ASSERT_NE(worker, nullptr);
    EXPECT_EQ(Env(*worker, "PDPOOL_NVLINK_DOMAIN"), nullptr);
    EXPECT_NE(Env(*worker, "PDPOOL_NODE_NAME"), nullptr);
  }
  // Required, but no domain chosen yet.
  const Json t = MustTemplate(Spec(), WorkerRole::kPrefill, "", TopologyPolicy::kRequired);
  EXPECT_EQ(Env(*Container(t, "worker"), "PDPOOL_NVLINK_DOMAIN"), nullptr);
}

TEST(WorkerPodTemplate, GpuRequestsAndLimitsAreGpusPerReplica) {
  const PoolSpec spec = Spec();
  const Json prefill = *Container(MustTemplate(spec, WorkerRole::kPrefill), "worker");
  EXPECT_EQ(prefill["resources"]["requests"]["nvidia.com/gpu"], "4");
  EXPECT_EQ(prefill["resources"]["limits"]["nvidia.com/gpu"], "4");
  EXPECT_TRUE(HasArg(prefill, "--tensor-parallel=4"));
  const Json decode = *Container(MustTemplate(spec, WorkerRole::kDecode), "worker");
  EXPECT_EQ(decode["resources"]["requests"]["nvidia.com/gpu"], "2");
  EXPECT_EQ(decode["resources"]["limits"]["nvidia.com/gpu"], "2");
}

TEST(WorkerPodTemplate, DummyWeightsWhenNoPath) {
  PoolSpec spec = Spec();
  spec.model.source_path.clear();
  spec.model.dummy_seed = 7;
  const Json worker = *Container(MustTemplate(spec, WorkerRole::kPrefill), "worker");
  EXPECT_TRUE(HasArg(worker, "--weights=dummy:7")) << worker["args"].dump();
  int weights = 0;
  for (const Json& a : worker["args"]) weights += a.get<std::string>().rfind("--weights", 0) == 0;
  EXPECT_EQ(weights, 1) << worker["args"].dump();
}

// The pool-token volume from Secret <pool>-token and its read-only mount in `container`.
void ExpectTokenMounted(const Json& pod_template, const std::string& container) {
  const Json* volume = nullptr;
  for (const Json& v : pod_template["spec"]["volumes"])
    if (v.value("name", "") == "pool-token") volume = &v;
  ASSERT_NE(volume, nullptr) << pod_template["spec"].dump();
  EXPECT_EQ(*volume, (Json{{"name", "pool-token"},
                           {"secret", {{"secretName", "llama-token"}, {"defaultMode", 0440}}}}));
  const Json* c = Container(pod_template, container);
  ASSERT_NE(c, nullptr);
  const Json* mount = nullptr;
  for (const Json& m : (*c)["volumeMounts"])
    if (m.value("name", "") == "pool-token") mount = &m;
  ASSERT_NE(mount, nullptr) << c->dump();
  EXPECT_EQ(
      *mount,
      (Json{{"name", "pool-token"}, {"mountPath", "/var/run/pdpool/token"}, {"readOnly", true}}));
  // The file the flag names is the Secret's key inside the mount.
  EXPECT_TRUE(HasArg(*c, std::string("--auth-token-file=/var/run/pdpool/token/") + kTokenKey))
      << (*c)["args"].dump();
}

TEST(WorkerPodTemplate, MountsThePoolTokenForBothRoles) {
  for (WorkerRole role : {WorkerRole::kPrefill, WorkerRole::kDecode}) {
    SCOPED_TRACE(std::string(WorkerRoleName(role)));
    ExpectTokenMounted(MustTemplate(Spec(), role), "worker");
  }
}

TEST(WorkerPodTemplate, OverridesCannotDropTheTokenVolumeOrMount) {
  // Lists replace under spec.template, so an override's own volumes and volumeMounts, or one
  // redefining pool-token, would otherwise cut the worker off from its pool.
  PoolSpec spec = Spec();
  spec.template_overrides = Json::parse(R"({"spec": {
    "volumes": [{"name": "models", "hostPath": {"path": "/models"}},
                {"name": "pool-token", "emptyDir": {}}],
    "containers": [{"name": "worker",
                    "volumeMounts": [{"name": "models", "mountPath": "/models"}]}]}})");
  const Json t = MustTemplate(spec, WorkerRole::kPrefill);
  ExpectTokenMounted(t, "worker");
  // models (theirs), pool-token and podinfo (ours, put back).
  EXPECT_EQ(t["spec"]["volumes"].size(), 3u) << t["spec"]["volumes"].dump();
  EXPECT_EQ(t["spec"]["volumes"][0]["name"], "models");
  EXPECT_EQ(t["spec"]["volumes"][2]["name"], "podinfo");
  EXPECT_EQ((*Container(t, "worker"))["volumeMounts"][0]["mountPath"], "/models");
}

TEST(WorkerPodTemplate, AffinityPerPolicy) {
  const PoolSpec spec = Spec();
  const Json required =
      MustTemplate(spec, WorkerRole::kPrefill, "nvl72-a", TopologyPolicy::kRequired);
  EXPECT_EQ(
      required["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
              ["nodeSelectorTerms"][0]["matchExpressions"][0],
      (Json{{"key", "nvidia.com/gpu.clique"}, {"operator", "In"}, {"values", {"nvl72-a"}}}));

  const Json preferred =
      MustTemplate(spec, WorkerRole::kPrefill, "nvl72-a", TopologyPolicy::kPreferred);
  const Json& term = preferred["spec"]["affinity"]["nodeAffinity"]
                              ["preferredDuringSchedulingIgnoredDuringExecution"][0];
  EXPECT_EQ(term["weight"], 100);
  EXPECT_EQ(term["preference"]["matchExpressions"][0]["values"], Json::array({"nvl72-a"}));

  EXPECT_FALSE(
      MustTemplate(spec, WorkerRole::kPrefill, "nvl72-a", TopologyPolicy::kNone)["spec"].contains(
          "affinity"));
  EXPECT_FALSE(
      MustTemplate(spec, WorkerRole::kPrefill, "", TopologyPolicy::kRequired)["spec"].contains(
          "affinity"));

  PoolSpec custom = spec;
  custom.topology.key = "example.com/rack";
  EXPECT_EQ(MustTemplate(
                custom, WorkerRole::kPrefill)["spec"]["affinity"]["nodeAffinity"]
                                             ["requiredDuringSchedulingIgnoredDuringExecution"]
                                             ["nodeSelectorTerms"][0]["matchExpressions"][0]["key"],
            "example.com/rack");
}

TEST(WorkerPodTemplate, OverridesMergeWithContainersByName) {
  PoolSpec spec = Spec();
  spec.template_overrides = Json::parse(R"({
    "metadata": {"labels": {"team": "search", "pdpool.dev/role": "hijacked"},
                 "annotations": {"prometheus.io/scrape": "true"}},
    "spec": {
      "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
      "nodeSelector": {"gpu": "gb200"},
      "terminationGracePeriodSeconds": null,
      "containers": [
        {"name": "worker",
         "env": [{"name": "HF_TOKEN", "value": "t"}, {"name": "POD_IP", "value": "override"}],
         "volumeMounts": [{"name": "models", "mountPath": "/models"}],
         "resources": {"requests": {"memory": "200Gi"}}},
        {"name": "sidecar", "image": "busybox", "args": null}
      ],
      "volumes": [{"name": "models", "hostPath": {"path": "/models"}}]
    }
  })");
  const Json t = MustTemplate(spec, WorkerRole::kPrefill);
  // Labels and annotations added; identity labels cannot be overridden (the selector needs them).
  EXPECT_EQ(t["metadata"]["labels"]["team"], "search");
  EXPECT_EQ(t["metadata"]["labels"]["pdpool.dev/role"], "prefill");
  EXPECT_EQ(t["metadata"]["annotations"]["prometheus.io/scrape"], "true");
  // Pod spec fields: added, and null deletes.
  EXPECT_EQ(t["spec"]["tolerations"][0]["key"], "nvidia.com/gpu");
  EXPECT_EQ(t["spec"]["nodeSelector"]["gpu"], "gb200");
  EXPECT_FALSE(t["spec"].contains("terminationGracePeriodSeconds"));
  EXPECT_EQ(t["spec"]["volumes"][0]["name"], "models");
  EXPECT_TRUE(t["spec"].contains("affinity"));
  // The worker container is merged, not replaced.
  ASSERT_EQ(t["spec"]["containers"].size(), 2u);
  const Json& worker = t["spec"]["containers"][0];
  EXPECT_EQ(worker["name"], "worker");
  EXPECT_TRUE(HasArg(worker, "--role=prefill"));
  EXPECT_EQ(worker["resources"]["requests"]["nvidia.com/gpu"], "4");
  EXPECT_EQ(worker["resources"]["requests"]["memory"], "200Gi");
  EXPECT_EQ(worker["resources"]["limits"]["nvidia.com/gpu"], "4");
  EXPECT_EQ(worker["volumeMounts"][0]["mountPath"], "/models");
  EXPECT_EQ(worker["readinessProbe"]["httpGet"]["path"], "/readyz");
  ExpectTokenMounted(t, "worker");
  // env merged by name: ours kept, a same-named entry replaced whole, new ones appended.
  EXPECT_NE(Env(worker, "POD_NAME"), nullptr);
  EXPECT_EQ(*Env(worker, "POD_IP"), (Json{{"name", "POD_IP"}, {"value", "override"}}));
  EXPECT_EQ((*Env(worker, "HF_TOKEN"))["value"], "t");
  EXPECT_EQ(worker["env"].size(), 6u);
  // An unknown container is appended, its nulls dropped.
  EXPECT_EQ(t["spec"]["containers"][1], (Json{{"name", "sidecar"}, {"image", "busybox"}}));
}

TEST(WorkerPodTemplate, OverridesCanReplaceTheAffinity) {
  PoolSpec spec = Spec();
  spec.template_overrides = {{"spec", {{"affinity", {{"nodeAffinity", nullptr}}}}}};
  EXPECT_FALSE(
      MustTemplate(spec, WorkerRole::kPrefill)["spec"]["affinity"].contains("nodeAffinity"));
}

TEST(MergePodTemplate, PlainMergePatchSemanticsElsewhere) {
  const Json base = {{"spec", {{"tolerations", Json::array({{{"key", "a"}}})}, {"x", 1}}}};
  const Json merged =
      MergePodTemplate(base, {{"spec", {{"tolerations", Json::array({{{"key", "b"}}})}}}});
  EXPECT_EQ(merged["spec"]["tolerations"], Json::array({{{"key", "b"}}}));  // lists replace
  EXPECT_EQ(merged["spec"]["x"], 1);
  EXPECT_EQ(MergePodTemplate(base, Json::object()), base);
  EXPECT_EQ(MergePodTemplate(base, Json("junk")), base);
}

TEST(WorkerPodTemplate, NonObjectOverridesAreAnError) {
  PoolSpec spec = Spec();
  spec.template_overrides = Json::array();
  const StatusOr<Json> t =
      BuildWorkerPodTemplate(Pool(), spec, WorkerRole::kPrefill, "d", TopologyPolicy::kRequired);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(t.status().message().find("spec.template"), std::string::npos);
}

// ---- template hash ----

TEST(TemplateHash, TenHexDigitsStableAndSensitive) {
  const PoolSpec spec = Spec();
  const std::string h = TemplateHash(MustTemplate(spec, WorkerRole::kPrefill));
  EXPECT_EQ(h.size(), 10u);
  EXPECT_TRUE(
      std::all_of(h.begin(), h.end(), [](char c) { return std::isxdigit(c) && !std::isupper(c); }));
  EXPECT_EQ(h, TemplateHash(MustTemplate(spec, WorkerRole::kPrefill)));
  EXPECT_NE(h, TemplateHash(MustTemplate(spec, WorkerRole::kDecode)));
  EXPECT_NE(h, TemplateHash(MustTemplate(spec, WorkerRole::kPrefill, "nvl72-b")));
  // Key order in the input does not matter (objects dump sorted).
  EXPECT_EQ(TemplateHash(Json::parse(R"({"a":1,"b":2})")),
            TemplateHash(Json::parse(R"({"b":2,"a":1})")));
}

TEST(TemplateHash, ChangesWithTheImageNotWithReplicas) {
  PoolSpec spec = Spec();
  const Json rs = MustReplicaSet(spec, WorkerRole::kPrefill, 2);
  const std::string hash = rs["metadata"]["labels"]["pdpool.dev/template-hash"];

  PoolSpec scaled = spec;
  scaled.prefill.replicas = 7;
  scaled.decode.replicas = 1;
  const Json rs_scaled = MustReplicaSet(scaled, WorkerRole::kPrefill, 7);
  EXPECT_EQ(rs_scaled["metadata"]["labels"]["pdpool.dev/template-hash"], hash);
  EXPECT_EQ(rs_scaled["metadata"]["name"], rs["metadata"]["name"]);

  PoolSpec upgraded = spec;
  upgraded.image = "ghcr.io/pdpool/agent:0.2.0";
  const Json rs_upgraded = MustReplicaSet(upgraded, WorkerRole::kPrefill, 2);
  EXPECT_NE(rs_upgraded["metadata"]["labels"]["pdpool.dev/template-hash"], hash);
  EXPECT_NE(rs_upgraded["metadata"]["name"], rs["metadata"]["name"]);
}

// ---- ReplicaSet ----

TEST(WorkerReplicaSet, NameLabelsSelectorOwnerAndReplicas) {
  const Json rs = MustReplicaSet(Spec(), WorkerRole::kPrefill, 3);
  const std::string hash = TemplateHash(MustTemplate(Spec(), WorkerRole::kPrefill));
  EXPECT_EQ(rs["apiVersion"], "apps/v1");
  EXPECT_EQ(rs["kind"], "ReplicaSet");
  EXPECT_EQ(rs["metadata"]["name"], "llama-prefill-" + hash);
  EXPECT_EQ(rs["metadata"]["namespace"], "serving");
  EXPECT_EQ(rs["metadata"]["ownerReferences"], Json::array({kOwnerRef}));
  const Json& labels = rs["metadata"]["labels"];
  EXPECT_EQ(labels["pdpool.dev/pool"], "llama");
  EXPECT_EQ(labels["pdpool.dev/role"], "prefill");
  EXPECT_EQ(labels["pdpool.dev/template-hash"], hash);
  EXPECT_EQ(labels["app.kubernetes.io/managed-by"], "pdpool");
  EXPECT_EQ(rs["spec"]["replicas"], 3);
  EXPECT_EQ(rs["spec"]["selector"]["matchLabels"], (Json{{"pdpool.dev/pool", "llama"},
                                                         {"pdpool.dev/role", "prefill"},
                                                         {"pdpool.dev/template-hash", hash}}));
  // The selector matches the pod template's labels, or the API server refuses the ReplicaSet.
  EXPECT_TRUE(JsonContains(rs["spec"]["template"]["metadata"]["labels"],
                           rs["spec"]["selector"]["matchLabels"]));
  EXPECT_EQ(
      rs["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"],
      "4");
}

TEST(PoolIdentity, MissingFieldsAndBadNamesAreInvalidArgument) {
  Json no_uid = Pool();
  no_uid["metadata"].erase("uid");
  StatusOr<Json> rs = BuildWorkerReplicaSet(no_uid, Spec(), WorkerRole::kPrefill, "d",
                                            TopologyPolicy::kRequired, 1);
  ASSERT_FALSE(rs.ok());
  EXPECT_EQ(rs.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(rs.status().message().find("metadata.uid"), std::string::npos);

  EXPECT_FALSE(ReadPoolIdentity(Json("junk")).ok());
  EXPECT_FALSE(ReadPoolIdentity(Pool(std::string(64, 'a'))).ok());
  const StatusOr<PoolIdentity> id = ReadPoolIdentity(Pool());
  ASSERT_TRUE(id.ok());
  EXPECT_EQ(id->generation, 3);
  EXPECT_EQ(PoolOwnerReference(*id), kOwnerRef);
}

// ---- router ----

TEST(RouterDeployment, OwnedLabelledNoGpus) {
  const StatusOr<Json> d = BuildRouterDeployment(Pool(), Spec());
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_EQ((*d)["kind"], "Deployment");
  EXPECT_EQ((*d)["metadata"]["name"], "llama-router");
  EXPECT_EQ((*d)["metadata"]["ownerReferences"], Json::array({kOwnerRef}));
  EXPECT_EQ((*d)["metadata"]["labels"]["pdpool.dev/role"], "router");
  EXPECT_EQ((*d)["spec"]["replicas"], 2);
  const Json selector = {{"pdpool.dev/pool", "llama"}, {"pdpool.dev/role", "router"}};
  EXPECT_EQ((*d)["spec"]["selector"]["matchLabels"], selector);
  EXPECT_TRUE(JsonContains((*d)["spec"]["template"]["metadata"]["labels"], selector));
  const Json* router = Container((*d)["spec"]["template"], "router");
  ASSERT_NE(router, nullptr);
  EXPECT_EQ((*router)["image"], "ghcr.io/pdpool/agent:0.1.0");
  EXPECT_EQ((*router)["command"], Json::array({"pdpool-agent"}));
  EXPECT_EQ((*router)["args"],
            (Json{"router", "--pool=llama", "--namespace=serving",
                  "--served-model-name=meta-llama/Llama-3.1-70B-Instruct", "--port=8080",
                  "--auth-token-file=/var/run/pdpool/token/token"}));
  ExpectTokenMounted((*d)["spec"]["template"], "router");
  EXPECT_FALSE((*router).contains("resources"));
  EXPECT_EQ((*router)["readinessProbe"]["httpGet"]["path"], "/readyz");
  EXPECT_EQ((*router)["livenessProbe"]["httpGet"]["path"], "/healthz");
  EXPECT_EQ((*d)["metadata"]["annotations"]["pdpool.dev/template-hash"],
            TemplateHash((*d)["spec"]["template"]));
}

TEST(RouterDeployment, NoServedModelNameFlagWithoutAModelName) {
  PoolSpec spec = Spec();
  spec.model.name.clear();
  const StatusOr<Json> d = BuildRouterDeployment(Pool(), spec);
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_EQ((*Container((*d)["spec"]["template"], "router"))["args"],
            (Json{"router", "--pool=llama", "--namespace=serving", "--port=8080",
                  "--auth-token-file=/var/run/pdpool/token/token"}));
}

TEST(RouterDeployment, TakesOnlyImagePullSecretsFromOverrides) {
  PoolSpec spec = Spec();
  spec.template_overrides = Json::parse(
      R"({"spec": {"imagePullSecrets": [{"name": "regcred"}], "nodeSelector": {"gpu": "x"}}})");
  const StatusOr<Json> d = BuildRouterDeployment(Pool(), spec);
  ASSERT_TRUE(d.ok());
  const Json& pod_spec = (*d)["spec"]["template"]["spec"];
  EXPECT_EQ(pod_spec["imagePullSecrets"], Json::parse(R"([{"name": "regcred"}])"));
  EXPECT_FALSE(pod_spec.contains("nodeSelector"));
}

TEST(RouterService, ClusterIpPort80ToRouter) {
  const StatusOr<Json> s = BuildRouterService(Pool());
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ((*s)["apiVersion"], "v1");
  EXPECT_EQ((*s)["kind"], "Service");
  EXPECT_EQ((*s)["metadata"]["name"], "llama-router");
  EXPECT_EQ((*s)["metadata"]["ownerReferences"], Json::array({kOwnerRef}));
  EXPECT_EQ((*s)["spec"]["type"], "ClusterIP");
  EXPECT_EQ((*s)["spec"]["selector"],
            (Json{{"pdpool.dev/pool", "llama"}, {"pdpool.dev/role", "router"}}));
  EXPECT_EQ((*s)["spec"]["ports"][0],
            (Json{{"name", "http"}, {"port", 80}, {"targetPort", 8080}, {"protocol", "TCP"}}));
}

TEST(RouterService, NamesThatCannotBeAServiceAreRefused) {
  for (const std::string& bad :
       {std::string(57, 'a'), std::string("my.pool"), std::string("1pool")}) {
    const StatusOr<Json> s = BuildRouterService(Pool(bad));
    ASSERT_FALSE(s.ok()) << bad;
    EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(s.status().message().find("DNS-1035"), std::string::npos);
  }
  EXPECT_TRUE(BuildRouterService(Pool(std::string(56, 'a'))).ok());
}

// ---- pool token Secret ----

TEST(PoolTokenSecret, OpaqueOwnedLabelledTokenUnderKeyToken) {
  const StatusOr<Json> s = BuildPoolTokenSecret(Pool(), "c0ffee");
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(PoolTokenSecretName("llama"), "llama-token");
  EXPECT_EQ(
      *s,
      (Json{
          {"apiVersion", "v1"},
          {"kind", "Secret"},
          {"metadata",
           {{"name", "llama-token"},
            {"namespace", "serving"},
            {"labels", {{"app.kubernetes.io/managed-by", "pdpool"}, {"pdpool.dev/pool", "llama"}}},
            {"ownerReferences", Json::array({kOwnerRef})}}},
          {"type", "Opaque"},
          {"data", {{"token", "YzBmZmVl"}}}}));  // base64("c0ffee")
}

TEST(PoolTokenSecret, DataIsBase64WithPadding) {
  for (const auto& [token, encoded] : {std::pair{"a", "YQ=="}, std::pair{"ab", "YWI="},
                                       std::pair{"abc", "YWJj"}, std::pair{"abcd", "YWJjZA=="}}) {
    const StatusOr<Json> s = BuildPoolTokenSecret(Pool(), token);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    EXPECT_EQ((*s)["data"]["token"], encoded) << token;
  }
}

TEST(PoolTokenSecret, EmptyTokenAndNamesThatCannotBeASecretAreRefused) {
  StatusOr<Json> s = BuildPoolTokenSecret(Pool(), "");
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument);
  // A valid label value, but not a valid object name.
  for (const std::string& bad : {std::string("My_Pool"), std::string("Llama")}) {
    s = BuildPoolTokenSecret(Pool(bad), "t");
    ASSERT_FALSE(s.ok()) << bad;
    EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(s.status().message().find("DNS subdomain"), std::string::npos)
        << s.status().message();
  }
  EXPECT_TRUE(BuildPoolTokenSecret(Pool(std::string(63, 'a')), "t").ok());
  EXPECT_TRUE(BuildPoolTokenSecret(Pool("my.pool"), "t").ok());
}

TEST(DesiredObjects, AllFourOwnedByThePool) {
  const StatusOr<DesiredObjects> d =
      BuildDesiredObjects(Pool(), Spec(), "nvl72-a", TopologyPolicy::kRequired, 2, 4);
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  for (const Json* o : {&d->prefill_replica_set, &d->decode_replica_set, &d->router_deployment,
                        &d->router_service}) {
    EXPECT_EQ((*o)["metadata"]["ownerReferences"], Json::array({kOwnerRef})) << (*o)["kind"];
    EXPECT_EQ((*o)["metadata"]["namespace"], "serving");
  }
  EXPECT_EQ(d->prefill_replica_set["spec"]["replicas"], 2);
  EXPECT_EQ(d->decode_replica_set["spec"]["replicas"], 4);
  EXPECT_EQ(d->decode_replica_set["metadata"]["labels"]["pdpool.dev/role"], "decode");
}

// ---- rollout ----

ReplicaSetState Rs(const std::string& name, const std::string& created, int replicas, int ready) {
  return {name, created, replicas, ready};
}

TEST(PlanRollout, FirstRevisionHasNothingToScaleDown) {
  RolloutPlan p = PlanRollout(4, std::nullopt, {});
  EXPECT_EQ(p.new_replicas, 4);
  EXPECT_TRUE(p.old.empty());
  EXPECT_FALSE(p.complete);
  p = PlanRollout(4, Rs("new", "2026-01-02T00:00:00Z", 4, 4), {});
  EXPECT_TRUE(p.complete);
}

TEST(PlanRollout, OldScaleDownAsNewBecomesReadyOldestFirst) {
  // Given newest first, to check the plan sorts by creation time.
  const std::vector<ReplicaSetState> old = {Rs("b", "2026-01-01T00:00:00Z", 2, 2),
                                            Rs("a", "2025-12-01T00:00:00Z", 2, 2)};
  const auto plan = [&](int new_ready) {
    return PlanRollout(4, Rs("new", "2026-01-02T00:00:00Z", 4, new_ready), old);
  };
  RolloutPlan p = plan(0);
  EXPECT_EQ(p.new_replicas, 4);
  ASSERT_EQ(p.old.size(), 2u);
  EXPECT_EQ(p.old[0].name, "a");
  EXPECT_EQ(p.old[0].replicas, 2);
  EXPECT_EQ(p.old[1].replicas, 2);

  p = plan(1);  // 3 old allowed: one cut from the oldest
  EXPECT_EQ(p.old[0].replicas, 1);
  EXPECT_EQ(p.old[1].replicas, 2);
  EXPECT_FALSE(p.complete);

  p = plan(3);
  EXPECT_EQ(p.old[0].replicas, 0);
  EXPECT_EQ(p.old[1].replicas, 1);

  p = plan(4);
  EXPECT_EQ(p.old[0].replicas, 0);
  EXPECT_EQ(p.old[1].replicas, 0);
  EXPECT_FALSE(p.complete);  // old ones not at zero yet
  p = PlanRollout(4, Rs("new", "2026-01-02T00:00:00Z", 4, 4),
                  {Rs("a", "2025-12-01T00:00:00Z", 0, 0), Rs("b", "2026-01-01T00:00:00Z", 0, 0)});
  EXPECT_TRUE(p.complete);
}

TEST(PlanRollout, OldReplicaSetsAreNeverScaledUp) {
  const RolloutPlan p = PlanRollout(6, Rs("new", "t2", 6, 0), {Rs("a", "t1", 2, 2)});
  EXPECT_EQ(p.old[0].replicas, 2);
}

TEST(PlanRollout, ScalingDownDuringARollout) {
  // The new revision already has more ready than now desired: old ones go at once.
  const RolloutPlan p = PlanRollout(2, Rs("new", "t2", 4, 4), {Rs("a", "t1", 3, 3)});
  EXPECT_EQ(p.new_replicas, 2);
  EXPECT_EQ(p.old[0].replicas, 0);
}

TEST(PlanRollout, MaxUnavailableLetsATightDomainProgress) {
  const RolloutPlan p = PlanRollout(4, Rs("new", "t2", 4, 0), {Rs("a", "t1", 4, 4)}, 1);
  EXPECT_EQ(p.old[0].replicas, 3);
}

TEST(PlanRollout, TiesInCreationTimeBreakByName) {
  const RolloutPlan p =
      PlanRollout(2, Rs("new", "t2", 2, 1), {Rs("y", "t1", 1, 1), Rs("x", "t1", 1, 1)});
  ASSERT_EQ(p.old.size(), 2u);
  EXPECT_EQ(p.old[0].name, "x");
  EXPECT_EQ(p.old[0].replicas, 0);
  EXPECT_EQ(p.old[1].replicas, 1);
}

TEST(ReadReplicaSetState, DefaultsAndFields) {
  const ReplicaSetState s = ReadReplicaSetState(Json::parse(
      R"({"metadata": {"name": "x", "creationTimestamp": "2026-01-01T00:00:00Z"},
          "spec": {"replicas": 3}, "status": {"readyReplicas": 2}})"));
  EXPECT_EQ(s.name, "x");
  EXPECT_EQ(s.replicas, 3);
  EXPECT_EQ(s.ready_replicas, 2);
  const ReplicaSetState d = ReadReplicaSetState(Json::parse(R"({"metadata": {"name": "y"}})"));
  EXPECT_EQ(d.replicas, 1);
  EXPECT_EQ(d.ready_replicas, 0);
}

TEST(SplitReplicaSets, CurrentOldAndForeign) {
  const Json current = MustReplicaSet(Spec(), WorkerRole::kPrefill, 2);
  PoolSpec old_spec = Spec();
  old_spec.image = "ghcr.io/pdpool/agent:0.0.9";
  const Json old = MustReplicaSet(old_spec, WorkerRole::kPrefill, 2);
  const Json decode = MustReplicaSet(Spec(), WorkerRole::kDecode, 2);
  Json foreign = old;
  foreign["metadata"]["ownerReferences"][0]["uid"] = "someone-else";
  const std::string hash = current["metadata"]["labels"]["pdpool.dev/template-hash"];
  const RoleReplicaSets split =
      SplitReplicaSets({old, decode, foreign, current}, "uid-1234", WorkerRole::kPrefill, hash);
  ASSERT_TRUE(split.current.has_value());
  EXPECT_EQ((*split.current)["metadata"]["name"], current["metadata"]["name"]);
  ASSERT_EQ(split.old.size(), 1u);
  EXPECT_EQ(split.old[0]["metadata"]["name"], old["metadata"]["name"]);
  EXPECT_EQ(ControllerUid(foreign), "someone-else");
  EXPECT_EQ(ControllerUid(Json::object()), "");
}

// ---- needs update ----

// What the API server returns for `desired`: defaults filled in, server fields added.
Json AsStored(Json desired) {
  desired["metadata"]["resourceVersion"] = "42";
  desired["metadata"]["uid"] = "child-uid";
  desired["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z";
  desired["metadata"]["labels"]["added-by-someone"] = "x";
  desired["status"] = {{"replicas", 1}};
  if (desired["spec"].contains("template")) {
    Json& pod = desired["spec"]["template"]["spec"];
    pod["dnsPolicy"] = "ClusterFirst";
    pod["schedulerName"] = "default-scheduler";
    for (Json& c : pod["containers"]) {
      c["imagePullPolicy"] = "IfNotPresent";
      c["terminationMessagePath"] = "/dev/termination-log";
      c["readinessProbe"]["timeoutSeconds"] = 1;
      c["readinessProbe"]["httpGet"]["scheme"] = "HTTP";
      for (Json& e : c["env"]) e["valueFrom"]["fieldRef"]["apiVersion"] = "v1";
    }
  }
  return desired;
}

TEST(ReplicaSetUpdate, NothingToWriteWhenOnlyServerFieldsDiffer) {
  const Json desired = MustReplicaSet(Spec(), WorkerRole::kPrefill, 2);
  EXPECT_FALSE(ReplicaSetUpdate(AsStored(desired), desired).has_value());
}

TEST(ReplicaSetUpdate, ReplicasChange) {
  const Json existing = AsStored(MustReplicaSet(Spec(), WorkerRole::kPrefill, 2));
  const Json desired = MustReplicaSet(Spec(), WorkerRole::kPrefill, 5);
  const auto u = ReplicaSetUpdate(existing, desired);
  ASSERT_TRUE(u.has_value());
  EXPECT_EQ(u->changed_fields, std::vector<std::string>{"spec.replicas"});
  EXPECT_EQ(u->object["spec"]["replicas"], 5);
  EXPECT_EQ(u->object["metadata"]["resourceVersion"], "42");
  EXPECT_EQ(u->object["metadata"]["labels"]["added-by-someone"], "x");
}

TEST(ReplicaSetUpdate, MissingLabelOrOwnerReference) {
  const Json desired = MustReplicaSet(Spec(), WorkerRole::kPrefill, 2);
  Json existing = AsStored(desired);
  existing["metadata"]["labels"].erase("app.kubernetes.io/managed-by");
  existing["metadata"]["ownerReferences"] =
      Json::array({{{"apiVersion", "v1"}, {"kind", "ConfigMap"}, {"name", "c"}, {"uid", "other"}}});
  const auto u = ReplicaSetUpdate(existing, desired);
  ASSERT_TRUE(u.has_value());
  EXPECT_EQ(u->changed_fields,
            (std::vector<std::string>{"metadata.labels", "metadata.ownerReferences"}));
  EXPECT_EQ(u->object["metadata"]["labels"]["app.kubernetes.io/managed-by"], "pdpool");
  EXPECT_EQ(u->object["metadata"]["labels"]["added-by-someone"], "x");
  ASSERT_EQ(u->object["metadata"]["ownerReferences"].size(), 2u);
  EXPECT_EQ(u->object["metadata"]["ownerReferences"][0]["uid"], "other");
  EXPECT_EQ(u->object["metadata"]["ownerReferences"][1], kOwnerRef);
  EXPECT_FALSE(ReplicaSetUpdate(u->object, desired).has_value());
}

TEST(DeploymentUpdate, TemplateReplicasAndServerDefaults) {
  PoolSpec spec = Spec();
  const Json desired = *BuildRouterDeployment(Pool(), spec);
  EXPECT_FALSE(DeploymentUpdate(AsStored(desired), desired).has_value());

  spec.router_replicas = 3;
  spec.image = "ghcr.io/pdpool/agent:0.2.0";
  const Json next = *BuildRouterDeployment(Pool(), spec);
  const auto u = DeploymentUpdate(AsStored(desired), next);
  ASSERT_TRUE(u.has_value());
  EXPECT_EQ(u->changed_fields,
            (std::vector<std::string>{"metadata.annotations", "spec.replicas", "spec.template"}));
  EXPECT_EQ(u->object["spec"]["replicas"], 3);
  EXPECT_EQ(u->object["spec"]["template"]["spec"]["containers"][0]["image"],
            "ghcr.io/pdpool/agent:0.2.0");
  EXPECT_EQ(u->object["metadata"]["annotations"]["pdpool.dev/template-hash"],
            next["metadata"]["annotations"]["pdpool.dev/template-hash"]);
  EXPECT_EQ(u->object["metadata"]["resourceVersion"], "42");
}

TEST(DeploymentUpdate, SomeoneElsesEditToTheTemplateIsReverted) {
  const Json desired = *BuildRouterDeployment(Pool(), Spec());
  Json existing = AsStored(desired);
  existing["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:latest";
  const auto u = DeploymentUpdate(existing, desired);
  ASSERT_TRUE(u.has_value());
  EXPECT_EQ(u->changed_fields, std::vector<std::string>{"spec.template"});
  EXPECT_EQ(u->object["spec"]["template"]["spec"]["containers"][0]["image"],
            "ghcr.io/pdpool/agent:0.1.0");
}

TEST(ServiceUpdate, KeepsTheAssignedClusterIp) {
  const Json desired = *BuildRouterService(Pool());
  Json existing = AsStored(desired);
  existing["spec"]["clusterIP"] = "10.96.0.17";
  existing["spec"]["clusterIPs"] = Json::array({"10.96.0.17"});
  existing["spec"]["sessionAffinity"] = "None";
  EXPECT_FALSE(ServiceUpdate(existing, desired).has_value());

  existing["spec"]["ports"][0]["targetPort"] = 9999;
  existing["spec"]["selector"]["extra"] = "x";
  const auto u = ServiceUpdate(existing, desired);
  ASSERT_TRUE(u.has_value());
  EXPECT_EQ(u->changed_fields, (std::vector<std::string>{"spec.selector", "spec.ports"}));
  EXPECT_EQ(u->object["spec"]["clusterIP"], "10.96.0.17");
  EXPECT_EQ(u->object["spec"]["clusterIPs"], Json::array({"10.96.0.17"}));
  EXPECT_EQ(u->object["spec"]["ports"][0]["targetPort"], 8080);
  EXPECT_EQ(u->object["spec"]["selector"], desired["spec"]["selector"]);
  EXPECT_EQ(u->object["metadata"]["resourceVersion"], "42");
}

TEST(JsonContains, Semantics) {
  EXPECT_TRUE(
      JsonContains(Json::parse(R"({"a":1,"b":{"c":2,"d":3}})"), Json::parse(R"({"b":{"c":2}})")));
  EXPECT_FALSE(JsonContains(Json::parse(R"({"a":1})"), Json::parse(R"({"a":2})")));
  EXPECT_FALSE(JsonContains(Json::parse(R"({"a":[1,2]})"), Json::parse(R"({"a":[1]})")));
  EXPECT_TRUE(JsonContains(Json::parse(R"([{"a":1,"x":0}])"), Json::parse(R"([{"a":1}])")));
  EXPECT_FALSE(JsonContains(Json::parse(R"({"a":1})"), Json::parse(R"({"b":1})")));
  EXPECT_TRUE(JsonContains(Json::parse(R"({"a":1})"), Json::parse(R"({"b":null})")));
}

}  // namespace
}  // namespace pdpool::controller
