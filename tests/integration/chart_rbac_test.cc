// The Helm chart's RBAC against the real local control plane (RBAC on): the chart's
// ServiceAccount, ClusterRoles, Role and bindings (helm template --show-only) are applied, the
// controller runs with the ServiceAccount's own token and the flags of the chart's Deployment,
// and must reconcile a pool (children, token Secret, status, Events, the leader Lease); anything
// outside the rules is refused with 403. Needs helm (deploy/local/deps.sh; tests/chart/helm.sh).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "common/base64.h"
#include "common/kube/http_kube_client.h"
#include "common/kube/kubeconfig.h"
#include "common/kube/resource.h"
#include "tests/integration/test_env.h"

namespace pdpool::testing {
namespace {

using std::chrono::seconds;

const kube::ResourceType kServiceAccounts{"", "v1", "serviceaccounts", "ServiceAccount", true};
const kube::ResourceType kConfigMaps{"", "v1", "configmaps", "ConfigMap", true};
const kube::ResourceType kClusterRoles{"rbac.authorization.k8s.io", "v1", "clusterroles",
                                       "ClusterRole", false};
const kube::ResourceType kSelfSubjectAccessReviews{
    "authorization.k8s.io", "v1", "selfsubjectaccessreviews", "SelfSubjectAccessReview", false};

constexpr char kDomainLabel[] = "pdpool.dev/chart-rbac-test";
constexpr char kNodePrefix[] = "chart-rbac";

// Runs a shell command; stdout in `output`, stderr appended to it after a marker.
CommandResult Shell(const std::string& command) {
  CommandResult r;
  const std::string err_file =
      std::filesystem::temp_directory_path() / ("chart-rbac-" + std::to_string(getpid()) + ".err");
  FILE* pipe = popen((command + " 2>'" + err_file + "'").c_str(), "r");
  if (!pipe) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, pipe)) > 0) r.output.append(buf, n);
  const int status = pclose(pipe);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream err(err_file);
  std::stringstream ss;
  ss << err.rdbuf();
  if (r.exit_code != 0) r.output += "\n--- stderr:\n" + ss.str();
  std::filesystem::remove(err_file);
  return r;
}

std::string Quote(const std::string& s) { return "'" + s + "'"; }

struct Access {
  std::string verb;
  std::string group;
  std::string resource;
  std::string subresource;
  std::string ns;  // "" for cluster-scoped, or all namespaces
  std::string name;
};

std::string Describe(const Access& a) {
  std::string s = a.verb + " " + a.resource;
  if (!a.subresource.empty()) s += "/" + a.subresource;
  if (!a.group.empty()) s += "." + a.group;
  if (!a.name.empty()) s += " " + a.name;
  s += a.ns.empty() ? " (cluster)" : " in " + a.ns;
  return s;
}

class ChartRbacTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(::testing::Test::HasFailure());
    std::mt19937 rng(std::random_device{}());
    release_ = "pdpool-rbac-" + std::to_string(rng() % 100000);
    work_dir_ = env_.BuildPath("test-logs/" + env_.ns() + "/chart");
    std::filesystem::create_directories(work_dir_);
    env_.InstallCrd();
  }

  void TearDown() override {
    // The controller before its permissions; then the cluster-scoped objects, which outlive the
    // namespace.
    if (controller_) controller_->Stop();
    if (!rbac_file_.empty()) {
      (void)env_.Kubectl("delete --ignore-not-found --wait=false -f " + Quote(rbac_file_));
    }
  }

  // helm template of the chart with this test's release and namespace; the YAML.
  std::string Render(const std::vector<std::string>& show_only, const std::string& sets) {
    std::string cmd = Quote(env_.SourcePath("tests/chart/helm.sh")) + " template " + release_ +
                      " " + Quote(env_.SourcePath("charts/pdpool")) + " --namespace " + env_.ns();
    for (const auto& file : show_only) cmd += " --show-only " + file;
    if (!sets.empty()) cmd += " --set " + Quote(sets);
    CommandResult r = Shell(cmd);
    EXPECT_EQ(r.exit_code, 0) << cmd << "\n" << r.output;
    return r.output;
  }

  std::string WriteFile(const std::string& name, const std::string& text) {
    const std::string path = work_dir_ + "/" + name;
    std::ofstream(path) << text;
    return path;
  }

  // The chart's ServiceAccount and RBAC, applied as the cluster admin.
  void ApplyRbac(const std::string& sets) {
    const std::string yaml = Render({"templates/serviceaccount.yaml", "templates/rbac.yaml"}, sets);
    ASSERT_FALSE(yaml.empty());
    rbac_file_ = WriteFile("rbac.yaml", yaml);
    auto r = env_.Kubectl("apply -f " + Quote(rbac_file_));
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }

  // The args of the chart's controller container (the Deployment rendered, read back as JSON).
  std::vector<std::string> ChartControllerArgs(const std::string& sets) {
    const std::string file =
        WriteFile("deployment.yaml", Render({"templates/deployment.yaml"}, sets));
    auto r = env_.Kubectl("create --dry-run=client -o json -f " + Quote(file));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    Json dep = Json::parse(r.output, nullptr, false);
    std::vector<std::string> args;
    for (const auto& a : JsonGet<Json>(dep, "/spec/template/spec/containers/0/args", Json::array()))
      args.push_back(a.get<std::string>());
    EXPECT_FALSE(args.empty()) << r.output;
    return args;
  }

  // The ServiceAccount's token: the Secret Kubernetes 1.20's token controller makes for it, or,
  // on clusters that no longer make one (1.24+), a TokenRequest.
  std::string ServiceAccountToken(const std::string& sa) {
    std::string token;
    TestEnv::WaitFor(
        [&] {
          auto account = env_.client().Get(kServiceAccounts, env_.ns(), sa);
          if (!account.ok()) return false;
          for (const auto& ref : JsonGet<Json>(*account, "/secrets", Json::array())) {
            auto secret = env_.client().Get(kube::kSecrets, env_.ns(), ref.value("name", ""));
            if (!secret.ok() ||
                JsonGet<std::string>(*secret, "/type", "") != "kubernetes.io/service-account-token")
              continue;
            auto decoded = Base64Decode(JsonGet<std::string>(*secret, "/data/token", ""), "token");
            if (decoded.ok() && !decoded->empty()) token = *decoded;
          }
          return !token.empty();
        },
        seconds(30));
    if (token.empty()) {
      auto r = env_.Kubectl("create token " + sa + " -n " + env_.ns());
      EXPECT_EQ(r.exit_code, 0) << "no token Secret and no TokenRequest for " << sa << ": "
                                << r.output;
      token = r.output;
      while (!token.empty() && std::isspace(static_cast<unsigned char>(token.back())))
        token.pop_back();
    }
    return token;
  }

  // A kubeconfig for the same API server that authenticates with `token` only.
  std::string WriteTokenKubeconfig(const std::string& token) {
    auto admin = kube::LoadKubeConfigFile(env_.kubeconfig());
    EXPECT_TRUE(admin.ok()) << admin.status().ToString();
    if (!admin.ok()) return "";
    std::string cluster = "    server: " + admin->server + "\n";
    if (!admin->ca_pem.empty())
      cluster += "    certificate-authority-data: " + Base64Encode(admin->ca_pem) + "\n";
    if (admin->insecure_skip_verify) cluster += "    insecure-skip-tls-verify: true\n";
    const std::string path = WriteFile(
        "sa.kubeconfig", "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n" +
                             cluster + "users:\n- name: sa\n  user:\n    token: " + token +
                             "\ncontexts:\n- name: sa\n  context: {cluster: local, user: sa, "
                             "namespace: " +
                             env_.ns() + "}\ncurrent-context: sa\n");
    std::filesystem::permissions(
        path, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
    return path;
  }

  std::unique_ptr<kube::KubeClient> ClientFor(const std::string& kubeconfig) {
    auto config = kube::LoadKubeConfigFile(kubeconfig);
    EXPECT_TRUE(config.ok()) << config.status().ToString();
    if (!config.ok()) return nullptr;
    auto client = kube::NewHttpKubeClient(*config);
    EXPECT_TRUE(client.ok()) << client.status().ToString();
    return client.ok() ? std::move(client).value() : nullptr;
  }

  // What the API server's authorizer answers for the client's own identity.
  static bool Allowed(kube::KubeClient& client, const Access& a) {
    Json attributes = {{"verb", a.verb}, {"group", a.group}, {"resource", a.resource}};
    if (!a.subresource.empty()) attributes["subresource"] = a.subresource;
    if (!a.ns.empty()) attributes["namespace"] = a.ns;
    if (!a.name.empty()) attributes["name"] = a.name;
    Json review = {{"apiVersion", "authorization.k8s.io/v1"},
                   {"kind", "SelfSubjectAccessReview"},
                   {"spec", {{"resourceAttributes", attributes}}}};
    auto answer = client.Create(kSelfSubjectAccessReviews, "", review);
    EXPECT_TRUE(answer.ok()) << Describe(a) << ": " << answer.status().ToString();
    return answer.ok() && JsonGet<bool>(*answer, "/status/allowed", false);
  }

  void ExpectAccess(kube::KubeClient& client, const std::vector<Access>& accesses, bool allowed) {
    for (const Access& a : accesses) {
      EXPECT_EQ(Allowed(client, a), allowed)
          << Describe(a)
          << (allowed ? " is refused but the controller needs it"
                      : " is allowed but the controller must not have it");
    }
  }

  // Simulated GPU nodes (2 x 4 GPUs) in a domain only this test's pool can pick: a node label
  // of its own, used as the pool's topology key.
  void StartNodes() {
    NodeStartOptions options;
    options.extra_args = {"--label", std::string(kDomainLabel) + "=" + env_.ns()};
    ASSERT_NE(env_.StartNodes(kNodePrefix, 2, 4, "chart-rbac", options), nullptr);
    env_.WaitForNodes(kNodePrefix, 2);
  }

  void ApplyPool(const std::string& name) {
    const std::string yaml =
        "apiVersion: pdpool.dev/v1alpha1\nkind: InferencePool\nmetadata:\n  name: " + name +
        "\nspec:\n"
        "  model: {name: meta-llama/Llama-3.1-70B-Instruct, preset: llama-3.1-70b, source: "
        "{dummy: {seed: 1}}}\n"
        "  image: pdpool/agent:dev\n"
        "  backend: sim\n"
        "  prefill: {replicas: 1, gpusPerReplica: 4, minReplicas: 1, maxReplicas: 1}\n"
        "  decode: {replicas: 1, gpusPerReplica: 4, minReplicas: 1, maxReplicas: 1}\n"
        "  router: {replicas: 1}\n"
        "  topology: {key: " +
        std::string(kDomainLabel) + ", policy: Required}\n";
    auto r = env_.Kubectl("apply -n " + env_.ns() + " -f -", yaml);
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }

  bool PoolReady(const std::string& name) {
    Json pool = env_.GetPool(name);
    return TestEnv::ConditionStatus(pool, "Ready") == "True" &&
           JsonGet<int64_t>(pool, "/status/observedGeneration", -1) ==
               JsonGet<int64_t>(pool, "/metadata/generation", -2);
  }

  // The controller as the chart runs it: the chart's flags, the ServiceAccount's token.
  ChildProcess* StartChartController(const std::string& sets, const std::string& kubeconfig,
                                     const std::string& identity) {
    std::vector<std::string> args;
    for (const std::string& a : ChartControllerArgs(sets)) {
      // Tests bind loopback and a free port; everything else as in the chart.
      if (a.rfind("--metrics-port=", 0) == 0 || a.rfind("--metrics-bind-address=", 0) == 0)
        continue;
      args.push_back(a);
    }
    EXPECT_NE(std::find(args.begin(), args.end(), "--leader-elect=true"), args.end())
        << "the chart's Deployment runs without leader election";
    args.insert(args.end(), {"--kubeconfig", kubeconfig, "--identity", identity,
                             "--metrics-bind-address", "127.0.0.1", "--metrics-port", "0"});
    controller_ = env_.Start("controller-" + identity, env_.BuildPath("pdpool-controller"), args);
    return controller_;
  }

  // SIGTERM: the controller stops cleanly and releases its Lease (an update of the Lease, as
  // the Role allows), so a standby would take over at once.
  void ExpectCleanStopReleasingLease() {
    ASSERT_NE(controller_, nullptr);
    EXPECT_EQ(controller_->Stop(), 0) << env_.ChildLogs();
    controller_ = nullptr;
    auto lease = env_.client().Get(kube::kLeases, env_.ns(), "pdpool-controller");
    ASSERT_TRUE(lease.ok()) << lease.status().ToString();
    EXPECT_EQ(JsonGet<std::string>(*lease, "/spec/holderIdentity", ""), "") << lease->dump(2);
  }

  // The pool's children, status, Events and the Lease, all written by the controller as the
  // chart's ServiceAccount.
  void ExpectPoolReconciled(const std::string& pool, const std::string& identity) {
    ASSERT_TRUE(TestEnv::WaitFor([&] { return PoolReady(pool); }, seconds(120)))
        << env_.GetPool(pool).dump(2) << env_.ChildLogs();
    EXPECT_EQ(env_.ListReplicaSets(pool, "prefill").size(), 1u);
    EXPECT_EQ(env_.ListReplicaSets(pool, "decode").size(), 1u);
    EXPECT_TRUE(env_.client().Get(kube::kDeployments, env_.ns(), pool + "-router").ok());
    EXPECT_TRUE(env_.client().Get(kube::kServices, env_.ns(), pool + "-router").ok());
    EXPECT_TRUE(env_.client().Get(kube::kSecrets, env_.ns(), pool + "-token").ok());
    Json status = env_.GetPool(pool);
    EXPECT_EQ(JsonGet<int>(status, "/status/prefill/readyReplicas", -1), 1) << status.dump(2);
    EXPECT_EQ(JsonGet<int>(status, "/status/decode/readyReplicas", -1), 1) << status.dump(2);
    EXPECT_EQ(JsonGet<std::string>(status, "/status/placement/domain", ""), env_.ns());

    EXPECT_TRUE(TestEnv::WaitFor(
        [&] {
          auto events = env_.client().List(kube::kEvents, env_.ns());
          if (!events.ok()) return false;
          for (const auto& e : (*events)["items"])
            if (e.value("reason", "") == "CreatedReplicaSet" &&
                JsonGet<std::string>(e, "/source/component", "") == "pdpool-controller")
              return true;
          return false;
        },
        seconds(30)))
        << "no CreatedReplicaSet Event from pdpool-controller\n"
        << env_.ChildLogs();
    auto lease = env_.client().Get(kube::kLeases, env_.ns(), "pdpool-controller");
    ASSERT_TRUE(lease.ok()) << lease.status().ToString();
    EXPECT_EQ(JsonGet<std::string>(*lease, "/spec/holderIdentity", ""), identity);
  }

  TestEnv env_;
  std::string release_;
  std::string work_dir_;
  std::string rbac_file_;
  ChildProcess* controller_ = nullptr;
};

TEST_F(ChartRbacTest, ControllerRunsOnTheChartsRbacAndIsRefusedEverythingElse) {
  ApplyRbac("");
  // Default values: the ServiceAccount is named after the release (it contains "pdpool").
  const std::string sa = release_;
  const std::string token = ServiceAccountToken(sa);
  ASSERT_FALSE(token.empty());
  const std::string kubeconfig = WriteTokenKubeconfig(token);
  auto as_sa = ClientFor(kubeconfig);
  ASSERT_NE(as_sa, nullptr);
  const std::string ns = env_.ns();

  // What the code does (controller/manager.cc, pool_reconciler.cc, leader_election.cc,
  // event_recorder.cc), in any namespace: allowed.
  ExpectAccess(*as_sa,
               {{"list", "pdpool.dev", "inferencepools", "", "", ""},
                {"watch", "pdpool.dev", "inferencepools", "", "", ""},
                {"patch", "pdpool.dev", "inferencepools", "status", ns, "p"},
                {"update", "pdpool.dev", "inferencepools", "finalizers", ns, "p"},
                {"list", "apps", "replicasets", "", "", ""},
                {"watch", "apps", "replicasets", "", "", ""},
                {"create", "apps", "replicasets", "", ns, ""},
                {"update", "apps", "replicasets", "", ns, "p-prefill-1"},
                {"delete", "apps", "replicasets", "", ns, "p-prefill-1"},
                {"list", "apps", "deployments", "", "", ""},
                {"watch", "apps", "deployments", "", "", ""},
                {"create", "apps", "deployments", "", ns, ""},
                {"update", "apps", "deployments", "", ns, "p-router"},
                {"list", "", "services", "", "", ""},
                {"watch", "", "services", "", "", ""},
                {"create", "", "services", "", ns, ""},
                {"update", "", "services", "", ns, "p-router"},
                {"list", "", "secrets", "", "", ""},
                {"watch", "", "secrets", "", "", ""},
                {"get", "", "secrets", "", ns, "p-token"},
                {"create", "", "secrets", "", ns, ""},
                {"list", "", "pods", "", "", ""},
                {"watch", "", "pods", "", "", ""},
                {"patch", "", "pods", "", ns, "w"},
                {"list", "", "nodes", "", "", ""},
                {"watch", "", "nodes", "", "", ""},
                {"create", "", "events", "", ns, ""},
                {"patch", "", "events", "", ns, "e"},
                {"create", "coordination.k8s.io", "leases", "", ns, ""},
                {"get", "coordination.k8s.io", "leases", "", ns, "pdpool-controller"},
                {"update", "coordination.k8s.io", "leases", "", ns, "pdpool-controller"}},
               true);
  // Anything else: refused.
  ExpectAccess(*as_sa,
               {{"get", "pdpool.dev", "inferencepools", "", ns, "p"},
                {"create", "pdpool.dev", "inferencepools", "", ns, ""},
                {"update", "pdpool.dev", "inferencepools", "", ns, "p"},
                {"delete", "pdpool.dev", "inferencepools", "", ns, "p"},
                {"get", "apps", "replicasets", "", ns, "p-prefill-1"},
                {"patch", "apps", "replicasets", "", ns, "p-prefill-1"},
                {"delete", "apps", "deployments", "", ns, "p-router"},
                {"delete", "", "services", "", ns, "p-router"},
                {"update", "", "secrets", "", ns, "p-token"},
                {"delete", "", "secrets", "", ns, "p-token"},
                {"create", "", "pods", "", ns, ""},
                {"delete", "", "pods", "", ns, "w"},
                {"update", "", "pods", "", ns, "w"},
                {"create", "", "pods", "exec", ns, "w"},
                {"get", "", "nodes", "", "", "n"},
                {"patch", "", "nodes", "", "", "n"},
                {"delete", "", "nodes", "", "", "n"},
                {"list", "", "configmaps", "", ns, ""},
                {"create", "", "serviceaccounts", "token", ns, "default"},
                {"delete", "coordination.k8s.io", "leases", "", ns, "pdpool-controller"},
                {"get", "coordination.k8s.io", "leases", "", ns, "another-lease"},
                {"update", "coordination.k8s.io", "leases", "", ns, "another-lease"},
                {"get", "coordination.k8s.io", "leases", "", "kube-system", "pdpool-controller"},
                {"create", "rbac.authorization.k8s.io", "clusterroles", "", "", ""},
                {"bind", "rbac.authorization.k8s.io", "clusterroles", "", "", "cluster-admin"},
                {"escalate", "rbac.authorization.k8s.io", "clusterroles", "", "", ""},
                {"create", "rbac.authorization.k8s.io", "rolebindings", "", ns, ""},
                {"delete", "apiextensions.k8s.io", "customresourcedefinitions", "", "",
                 "inferencepools.pdpool.dev"}},
               false);

  // The controller as the chart runs it, on that token alone, reconciles a pool.
  StartNodes();
  ASSERT_NE(StartChartController("", kubeconfig, "chart-1"), nullptr);
  ApplyPool("rbac");
  ExpectPoolReconciled("rbac", "chart-1");

  // Real requests outside the rules get 403 (kUnauthorized), and change nothing.
  Status s = as_sa->Delete(kube::kNodes, "", std::string(kNodePrefix) + "-0");
  EXPECT_EQ(s.code(), StatusCode::kUnauthorized) << s.ToString();
  EXPECT_TRUE(env_.client().Get(kube::kNodes, "", std::string(kNodePrefix) + "-0").ok());
  Json role = {
      {"apiVersion", "rbac.authorization.k8s.io/v1"},
      {"kind", "ClusterRole"},
      {"metadata", {{"name", release_ + "-escalated"}}},
      {"rules", Json::array({{{"apiGroups", {"*"}}, {"resources", {"*"}}, {"verbs", {"*"}}}})}};
  auto created = as_sa->Create(kClusterRoles, "", role);
  EXPECT_EQ(created.status().code(), StatusCode::kUnauthorized) << created.status().ToString();
  s = as_sa->Delete(kube::kInferencePools, ns, "rbac");
  EXPECT_EQ(s.code(), StatusCode::kUnauthorized) << s.ToString();
  EXPECT_FALSE(env_.GetPool("rbac").is_null());
  auto pods = env_.ListPods("pdpool.dev/pool=rbac,pdpool.dev/role=decode");
  ASSERT_FALSE(pods.empty());
  const std::string pod = JsonGet<std::string>(pods[0], "/metadata/name", "");
  s = as_sa->Delete(kube::kPods, ns, pod);
  EXPECT_EQ(s.code(), StatusCode::kUnauthorized) << s.ToString();
  auto config_maps = as_sa->List(kConfigMaps, ns);
  EXPECT_EQ(config_maps.status().code(), StatusCode::kUnauthorized)
      << config_maps.status().ToString();

  ExpectCleanStopReleasingLease();
}

TEST_F(ChartRbacTest, WatchNamespaceGrantsPoolPermissionsInThatNamespaceOnly) {
  const std::string sets = "controller.watchNamespace=" + env_.ns();
  ApplyRbac(sets);
  const std::string token = ServiceAccountToken(release_);
  ASSERT_FALSE(token.empty());
  const std::string kubeconfig = WriteTokenKubeconfig(token);
  auto as_sa = ClientFor(kubeconfig);
  ASSERT_NE(as_sa, nullptr);
  const std::string ns = env_.ns();

  ExpectAccess(*as_sa,
               {{"list", "pdpool.dev", "inferencepools", "", ns, ""},
                {"patch", "pdpool.dev", "inferencepools", "status", ns, "p"},
                {"create", "apps", "replicasets", "", ns, ""},
                {"create", "", "secrets", "", ns, ""},
                {"patch", "", "pods", "", ns, "w"},
                {"create", "", "events", "", ns, ""},
                // Placement still sees every pod and node.
                {"list", "", "pods", "", "", ""},
                {"watch", "", "nodes", "", "", ""}},
               true);
  ExpectAccess(*as_sa,
               {{"list", "pdpool.dev", "inferencepools", "", "", ""},
                {"list", "pdpool.dev", "inferencepools", "", "default", ""},
                {"create", "apps", "replicasets", "", "default", ""},
                {"list", "", "secrets", "", "", ""},
                {"get", "", "secrets", "", "kube-system", "any"},
                {"patch", "", "pods", "", "default", "w"},
                {"create", "", "events", "", "default", ""}},
               false);

  StartNodes();
  ASSERT_NE(StartChartController(sets, kubeconfig, "chart-ns"), nullptr);
  ApplyPool("scoped");
  ExpectPoolReconciled("scoped", "chart-ns");
  ExpectCleanStopReleasingLease();
}

}  // namespace
}  // namespace pdpool::testing
