// Controller integration tests against the real local control plane: kube-apiserver,
// kube-controller-manager (ReplicaSet controller, garbage collector) and kube-scheduler, with
// two simulated NVLink domains of 18 nodes x 4 GPUs run by pdpool-agent node.
#include <gtest/gtest.h>

#include <set>

#include "common/kube/resource.h"
#include "tests/integration/test_env.h"

namespace pdpool::testing {
namespace {

using std::chrono::seconds;

constexpr int kNodesPerDomain = 18;
constexpr int kGpusPerNode = 4;

std::string PoolYaml(const std::string& name, int prefill, int decode, int gpus_per_replica = 4,
                     const std::string& extra_spec = "") {
  return "apiVersion: pdpool.dev/v1alpha1\n"
         "kind: InferencePool\n"
         "metadata:\n  name: " +
         name +
         "\n"
         "spec:\n"
         "  model: {name: meta-llama/Llama-3.1-70B-Instruct, preset: llama-3.1-70b, source: "
         "{dummy: {seed: 1}}}\n"
         "  image: pdpool/agent:dev\n"
         "  backend: sim\n"
         "  prefill: {replicas: " +
         std::to_string(prefill) + ", gpusPerReplica: " + std::to_string(gpus_per_replica) +
         ", minReplicas: 0, maxReplicas: 16}\n"
         "  decode: {replicas: " +
         std::to_string(decode) + ", gpusPerReplica: " + std::to_string(gpus_per_replica) +
         ", minReplicas: 0, maxReplicas: 16}\n"
         "  router: {replicas: 1}\n" +
         extra_spec;
}

class ControllerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(::testing::Test::HasFailure());
    env_.InstallCrd();
    env_.StartNodes("gb200-a", kNodesPerDomain, kGpusPerNode, "nvl72-a");
    env_.StartNodes("gb200-b", kNodesPerDomain, kGpusPerNode, "nvl72-b");
    env_.WaitForNodes("gb200-a", kNodesPerDomain);
    env_.WaitForNodes("gb200-b", kNodesPerDomain);
  }

  void Apply(const std::string& yaml) {
    auto r = env_.Kubectl("apply -n " + env_.ns() + " -f -", yaml);
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }

  // Sum of spec.replicas of the role's ReplicaSets, and how many exist.
  std::pair<int, int> RoleReplicas(const std::string& pool, const std::string& role) {
    int replicas = 0;
    auto sets = env_.ListReplicaSets(pool, role);
    for (const auto& rs : sets) replicas += JsonGet<int>(rs, "/spec/replicas", 0);
    return {replicas, static_cast<int>(sets.size())};
  }

  bool PoolReady(const std::string& name) {
    Json pool = env_.GetPool(name);
    return TestEnv::ConditionStatus(pool, "Ready") == "True" &&
           JsonGet<int64_t>(pool, "/status/observedGeneration", -1) ==
               JsonGet<int64_t>(pool, "/metadata/generation", -2);
  }

  TestEnv env_;
};

TEST_F(ControllerTest, PoolBecomesReplicaSetsPlacedInOneDomainAndReportsReady) {
  ASSERT_NE(env_.StartController("c1"), nullptr);
  Apply(PoolYaml("llama", 2, 4));

  ASSERT_TRUE(TestEnv::WaitFor([&] { return PoolReady("llama"); }, seconds(90)))
      << env_.GetPool("llama").dump(2) << env_.ChildLogs();

  // Both ReplicaSets: right replicas, GPU requests, owner, affinity to the chosen domain.
  Json pool = env_.GetPool("llama");
  std::string domain = JsonGet<std::string>(pool, "/status/placement/domain", "");
  ASSERT_TRUE(domain == "nvl72-a" || domain == "nvl72-b") << pool.dump(2);
  for (const auto& [role, replicas] : {std::pair{"prefill", 2}, std::pair{"decode", 4}}) {
    auto sets = env_.ListReplicaSets("llama", role);
    ASSERT_EQ(sets.size(), 1u) << role;
    const Json& rs = sets[0];
    EXPECT_EQ(JsonGet<int>(rs, "/spec/replicas", -1), replicas) << role;
    const Json& container = rs["spec"]["template"]["spec"]["containers"][0];
    EXPECT_EQ(JsonGet<std::string>(container, "/resources/requests/nvidia.com~1gpu", ""), "4");
    EXPECT_EQ(JsonGet<std::string>(container, "/resources/limits/nvidia.com~1gpu", ""), "4");
    const Json& owner = rs["metadata"]["ownerReferences"][0];
    EXPECT_EQ(owner.value("kind", ""), "InferencePool");
    EXPECT_EQ(owner.value("uid", ""), JsonGet<std::string>(pool, "/metadata/uid", ""));
    EXPECT_TRUE(owner.value("controller", false));
    const Json& term = rs["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
                         ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
                         ["matchExpressions"][0];
    EXPECT_EQ(term.value("key", ""), "nvidia.com/gpu.clique");
    EXPECT_EQ(term.value("operator", ""), "In");
    EXPECT_EQ(term["values"], Json::array({domain}));
  }
  EXPECT_EQ(JsonGet<int>(pool, "/status/prefill/readyReplicas", -1), 2);
  EXPECT_EQ(JsonGet<int>(pool, "/status/decode/readyReplicas", -1), 4);
  EXPECT_EQ(JsonGet<int>(pool, "/status/placement/gpus", -1), 24);

  // The real scheduler bound every worker pod to a node of that domain.
  auto pods = env_.ListPods("pdpool.dev/pool=llama,app.kubernetes.io/name=pdpool-worker");
  ASSERT_EQ(pods.size(), 6u);
  std::string prefix = domain == "nvl72-a" ? "gb200-a-" : "gb200-b-";
  for (const auto& pod : pods) {
    std::string node = JsonGet<std::string>(pod, "/spec/nodeName", "");
    EXPECT_EQ(node.rfind(prefix, 0), 0u) << "pod on " << node << ", domain " << domain;
    EXPECT_EQ(JsonGet<std::string>(pod, "/status/phase", ""), "Running");
  }
  // Router Deployment and Service, owned by the pool.
  auto dep = env_.client().Get(kube::kDeployments, env_.ns(), "llama-router");
  ASSERT_TRUE(dep.ok()) << dep.status().ToString();
  auto svc = env_.client().Get(kube::kServices, env_.ns(), "llama-router");
  ASSERT_TRUE(svc.ok()) << svc.status().ToString();

  // kubectl shows the printer columns.
  auto get = env_.Kubectl("get ipool -n " + env_.ns());
  EXPECT_EQ(get.exit_code, 0) << get.output;
  EXPECT_NE(get.output.find(domain), std::string::npos) << get.output;
}

TEST_F(ControllerTest, EditingReplicasScalesReplicaSetsAndDeletingPoolRemovesChildren) {
  ASSERT_NE(env_.StartController("c1"), nullptr);
  Apply(PoolYaml("edit", 1, 1));
  ASSERT_TRUE(TestEnv::WaitFor([&] { return PoolReady("edit"); }, seconds(90))) << env_.ChildLogs();

  auto r = env_.Kubectl(
      "patch ipool edit -n " + env_.ns() +
      " --type=merge -p '{\"spec\":{\"prefill\":{\"replicas\":3},\"decode\":{\"replicas\":2}}}'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  ASSERT_TRUE(TestEnv::WaitFor(
      [&] {
        return RoleReplicas("edit", "prefill") == std::pair{3, 1} &&
               RoleReplicas("edit", "decode") == std::pair{2, 1};
      },
      seconds(30)))
      << env_.ChildLogs();
  ASSERT_TRUE(TestEnv::WaitFor([&] { return PoolReady("edit"); }, seconds(90))) << env_.ChildLogs();
  EXPECT_EQ(JsonGet<int>(env_.GetPool("edit"), "/status/prefill/readyReplicas", -1), 3);

  // Deleting the pool: the garbage collector removes every child.
  r = env_.Kubectl("delete ipool edit -n " + env_.ns() + " --wait=true");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  ASSERT_TRUE(TestEnv::WaitFor(
      [&] {
        return env_.ListReplicaSets("edit", "prefill").empty() &&
               env_.ListReplicaSets("edit", "decode").empty() &&
               env_.client()
                   .Get(kube::kDeployments, env_.ns(), "edit-router")
                   .status()
                   .IsNotFound() &&
               env_.client().Get(kube::kServices, env_.ns(), "edit-router").status().IsNotFound();
      },
      seconds(60)));
}

TEST_F(ControllerTest, PoolGetsATokenSecretMountedByItsWorkersAndCollectedWithIt) {
  ASSERT_NE(env_.StartController("c1"), nullptr);
  Apply(PoolYaml("tok", 1, 1, 1));
  Json secret;
  ASSERT_TRUE(TestEnv::WaitFor(
      [&] {
        auto s = env_.client().Get(kube::kSecrets, env_.ns(), "tok-token");
        if (s.ok()) secret = *s;
        return s.ok() && env_.ListReplicaSets("tok", "prefill").size() == 1 &&
               env_.ListReplicaSets("tok", "decode").size() == 1;
      },
      seconds(60)))
      << env_.ChildLogs();

  // One Secret, the pool's: Opaque, a 64-hex-digit token under `token`, owned by the pool.
  const Json pool = env_.GetPool("tok");
  EXPECT_EQ(JsonGet<std::string>(secret, "/type", ""), "Opaque");
  const Json& owner = secret["metadata"]["ownerReferences"][0];
  EXPECT_EQ(owner.value("kind", ""), "InferencePool");
  EXPECT_EQ(owner.value("uid", ""), JsonGet<std::string>(pool, "/metadata/uid", ""));
  EXPECT_TRUE(owner.value("controller", false));
  // base64 of 64 characters is 88.
  EXPECT_EQ(JsonGet<std::string>(secret, "/data/token", "").size(), 88u) << secret["data"].dump();

  // Both roles' pod templates mount it and point the agent at it.
  for (const char* role : {"prefill", "decode"}) {
    SCOPED_TRACE(role);
    const Json pod_spec = env_.ListReplicaSets("tok", role)[0]["spec"]["template"]["spec"];
    bool volume = false;
    for (const Json& v : pod_spec["volumes"])
      volume |= v.value("name", "") == "pool-token" &&
                JsonGet<std::string>(v, "/secret/secretName", "") == "tok-token";
    EXPECT_TRUE(volume) << pod_spec.dump(2);
    const Json& worker = pod_spec["containers"][0];
    bool mount = false;
    for (const Json& m : worker["volumeMounts"])
      mount |= m.value("name", "") == "pool-token" &&
               m.value("mountPath", "") == "/var/run/pdpool/token" && m.value("readOnly", false);
    EXPECT_TRUE(mount) << worker.dump(2);
    bool arg = false;
    for (const Json& a : worker["args"])
      arg |= a == "--auth-token-file=/var/run/pdpool/token/token";
    EXPECT_TRUE(arg) << worker["args"].dump();
  }

  // The controller never rewrites it.
  const std::string rv = JsonGet<std::string>(secret, "/metadata/resourceVersion", "");
  ASSERT_TRUE(TestEnv::WaitFor([&] { return PoolReady("tok"); }, seconds(90))) << env_.ChildLogs();
  auto again = env_.client().Get(kube::kSecrets, env_.ns(), "tok-token");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(JsonGet<std::string>(*again, "/metadata/resourceVersion", ""), rv);

  // Deleting the pool: the garbage collector removes the Secret with it.
  auto r = env_.Kubectl("delete ipool tok -n " + env_.ns() + " --wait=true");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  ASSERT_TRUE(TestEnv::WaitFor(
      [&] {
        return env_.client().Get(kube::kSecrets, env_.ns(), "tok-token").status().IsNotFound();
      },
      seconds(60)))
      << "token Secret not garbage-collected";
}

TEST_F(ControllerTest, TemplateChangeRollsOutNewRevisionForBothRoles) {
  ASSERT_NE(env_.StartController("c1"), nullptr);
  Apply(PoolYaml("roll", 1, 2));
  ASSERT_TRUE(TestEnv::WaitFor([&] { return PoolReady("roll"); }, seconds(90))) << env_.ChildLogs();
  auto old_prefill = env_.ListReplicaSets("roll", "prefill");
  ASSERT_EQ(old_prefill.size(), 1u);
  std::string old_name = JsonGet<std::string>(old_prefill[0], "/metadata/name", "");

  auto r = env_.Kubectl("patch ipool roll -n " + env_.ns() +
                        " --type=merge -p '{\"spec\":{\"image\":\"pdpool/agent:dev2\"}}'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // New revision for both roles, old ones drained and removed, pool Ready again.
  ASSERT_TRUE(TestEnv::WaitFor(
      [&] {
        auto p = env_.ListReplicaSets("roll", "prefill");
        auto d = env_.ListReplicaSets("roll", "decode");
        return p.size() == 1 && d.size() == 1 &&
               JsonGet<std::string>(p[0], "/metadata/name", "") != old_name &&
               JsonGet<std::string>(p[0], "/spec/template/spec/containers/0/image", "") ==
                   "pdpool/agent:dev2" &&
               JsonGet<std::string>(d[0], "/spec/template/spec/containers/0/image", "") ==
                   "pdpool/agent:dev2" &&
               PoolReady("roll");
      },
      seconds(120)))
      << env_.ChildLogs();
}

TEST_F(ControllerTest, ControllerKilledMidwayConvergesWithoutDuplicates) {
  ChildProcess* first = env_.StartController("c1");
  ASSERT_NE(first, nullptr);
  for (int i = 0; i < 8; i++) Apply(PoolYaml("crash-" + std::to_string(i), 1, 1, 1));
  // Kill as soon as it has started creating children, before it is done.
  ASSERT_TRUE(TestEnv::WaitFor(
      [&] {
        return !env_.ListReplicaSets("crash-0", "prefill").empty() ||
               !env_.ListReplicaSets("crash-7", "prefill").empty();
      },
      seconds(60)));
  first->Kill();
  ASSERT_NE(env_.StartController("c2"), nullptr);
  for (int i = 0; i < 8; i++) {
    std::string name = "crash-" + std::to_string(i);
    ASSERT_TRUE(TestEnv::WaitFor([&] { return PoolReady(name); }, seconds(120)))
        << name << env_.ChildLogs();
    EXPECT_EQ(RoleReplicas(name, "prefill"), (std::pair{1, 1})) << name;
    EXPECT_EQ(RoleReplicas(name, "decode"), (std::pair{1, 1})) << name;
    EXPECT_EQ(
        env_.ListPods("pdpool.dev/pool=" + name + ",app.kubernetes.io/name=pdpool-worker").size(),
        2u);
  }
}

TEST_F(ControllerTest, OneLeaderAndStandbyTakesOverWithin20Seconds) {
  ChildProcess* a = env_.StartController("alpha");
  ChildProcess* b = env_.StartController("beta");
  ASSERT_TRUE(a && b);
  std::string holder;
  ASSERT_TRUE(TestEnv::WaitFor(
      [&] {
        auto lease = env_.client().Get(kube::kLeases, env_.ns(), "pdpool-controller");
        holder = lease.ok() ? JsonGet<std::string>(*lease, "/spec/holderIdentity", "") : "";
        return !holder.empty();
      },
      seconds(30)));
  Apply(PoolYaml("le", 1, 1, 1));
  ASSERT_TRUE(TestEnv::WaitFor([&] { return PoolReady("le"); }, seconds(90))) << env_.ChildLogs();

  // Crash the leader (no lease release): the standby must take over within 20 s.
  ChildProcess* leader = holder == "alpha" ? a : b;
  std::string standby = holder == "alpha" ? "beta" : "alpha";
  leader->Kill();
  auto killed_at = std::chrono::steady_clock::now();
  ASSERT_TRUE(TestEnv::WaitFor(
      [&] {
        auto lease = env_.client().Get(kube::kLeases, env_.ns(), "pdpool-controller");
        return lease.ok() && JsonGet<std::string>(*lease, "/spec/holderIdentity", "") == standby;
      },
      seconds(20)))
      << env_.ChildLogs();
  (void)killed_at;
  // The new leader reconciles: a scale change reaches the ReplicaSets.
  auto r = env_.Kubectl("patch ipool le -n " + env_.ns() +
                        " --type=merge -p '{\"spec\":{\"decode\":{\"replicas\":2}}}'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  ASSERT_TRUE(TestEnv::WaitFor(
      [&] {
        return RoleReplicas("le", "decode") == std::pair{2, 1};
      },
      seconds(30)))
      << env_.ChildLogs();
}

TEST_F(ControllerTest, InvalidSpecsAreRefusedOrReportedAndChangeNothing) {
  ASSERT_NE(env_.StartController("c1"), nullptr);
  // Out of range: the API server refuses it (schema minimum).
  auto r = env_.Kubectl("apply -n " + env_.ns() + " -f -", PoolYaml("zero-gpus", 1, 1, 0));
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("gpusPerReplica"), std::string::npos) << r.output;

  // Schema-valid nonsense: min > max gets a condition naming the field, and no children.
  Apply(
      "apiVersion: pdpool.dev/v1alpha1\nkind: InferencePool\nmetadata: {name: minmax}\n"
      "spec:\n  model: {name: m, preset: test-tiny, source: {dummy: {seed: 1}}}\n  backend: sim\n"
      "  prefill: {replicas: 2, gpusPerReplica: 1, minReplicas: 3, maxReplicas: 2}\n"
      "  decode: {replicas: 1, gpusPerReplica: 1, minReplicas: 1, maxReplicas: 2}\n");
  ASSERT_TRUE(TestEnv::WaitFor(
      [&] { return TestEnv::ConditionReason(env_.GetPool("minmax"), "Degraded") == "InvalidSpec"; },
      seconds(30)))
      << env_.ChildLogs();
  Json pool = env_.GetPool("minmax");
  std::string message;
  for (const auto& c : pool["status"]["conditions"])
    if (c["type"] == "Degraded") message = c.value("message", "");
  EXPECT_NE(message.find("spec.prefill.minReplicas"), std::string::npos) << message;
  EXPECT_EQ(TestEnv::ConditionStatus(pool, "Ready"), "False");
  EXPECT_TRUE(env_.ListReplicaSets("minmax", "prefill").empty());
  EXPECT_TRUE(
      env_.client().Get(kube::kDeployments, env_.ns(), "minmax-router").status().IsNotFound());

  // Fixing it lets the pool through.
  r = env_.Kubectl("patch ipool minmax -n " + env_.ns() +
                   " --type=merge -p '{\"spec\":{\"prefill\":{\"minReplicas\":1}}}'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  ASSERT_TRUE(TestEnv::WaitFor([&] { return PoolReady("minmax"); }, seconds(90)))
      << env_.ChildLogs();
}

TEST_F(ControllerTest, PoolLargerThanAnyDomainReportsInsufficientCapacityWithNumbers) {
  ASSERT_NE(env_.StartController("c1"), nullptr);
  // 20 replicas x 4 GPUs = 80 GPUs; each domain has 72.
  Apply(PoolYaml("huge", 10, 10));
  ASSERT_TRUE(TestEnv::WaitFor(
      [&] {
        return TestEnv::ConditionReason(env_.GetPool("huge"), "Degraded") == "InsufficientCapacity";
      },
      seconds(30)))
      << env_.ChildLogs();
  Json pool = env_.GetPool("huge");
  std::string message;
  for (const auto& c : pool["status"]["conditions"])
    if (c["type"] == "Degraded") message = c.value("message", "");
  EXPECT_NE(message.find("80"), std::string::npos) << message;
  EXPECT_NE(message.find("72"), std::string::npos) << message;
  EXPECT_TRUE(env_.ListReplicaSets("huge", "prefill").empty());

  // Shrinking it to fit places it.
  auto r = env_.Kubectl(
      "patch ipool huge -n " + env_.ns() +
      " --type=merge -p '{\"spec\":{\"prefill\":{\"replicas\":4},\"decode\":{\"replicas\":4}}}'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  ASSERT_TRUE(TestEnv::WaitFor([&] { return PoolReady("huge"); }, seconds(90))) << env_.ChildLogs();
}

}  // namespace
}  // namespace pdpool::testing
