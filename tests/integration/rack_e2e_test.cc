// The local rack end to end, as a user runs it (deploy/local/demo.sh by hand): simulated H200
// nodes run pods as processes; pdpool is installed with its Helm chart (the controller is a pod
// of the chart's Deployment, on its ServiceAccount's token); a Prometheus scrapes the pools'
// pods and the controller through the controller pod's HTTP service discovery; an autoscaled
// pool is applied. Checked as a user sees it: the official `openai` npm client
// (tests/e2e/rack_client.mjs) gets tokens from the pool's router, the pool's status fills in
// (replicas, placement, observed load, metrics source), Prometheus has the pool's TTFT series,
// and a load step makes the planner add workers that become ready and join the router.
// Everything the test starts (load, Prometheus, the Helm release with its cluster-scoped RBAC,
// nodes, namespace) is stopped or removed at teardown, also when it fails midway.
#include <gtest/gtest.h>
#include <httplib.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "tests/integration/test_env.h"
#include "tests/support/child_process.h"

namespace pdpool::testing {
namespace {

using std::chrono::seconds;

constexpr char kNodePrefix[] = "e2e";
// Pod IPs 127.51.x.y: not used by the other integration tests (planner 41/42, process runner
// 100..249) nor by the rack demo (61/62), which may run on the same machine.
constexpr int kIpPrefix = 51;
constexpr int kNodeCount = 2;
constexpr int kGpusPerNode = 4;
// The node label the chart's controller pod is pinned to (value: the test's namespace).
constexpr char kRackLabel[] = "pdpool.dev/e2e-rack";
constexpr char kRackLabelHelmKey[] = "pdpool\\.dev/e2e-rack";  // dots escaped for --set
constexpr char kPool[] = "rack";
constexpr char kModel[] = "llama-e2e";
constexpr int kMaxTokens = 12;

std::string Quote(const std::string& s) { return "'" + s + "'"; }

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string TailOf(const std::string& text, size_t max_bytes) {
  return text.size() > max_bytes ? text.substr(text.size() - max_bytes) : text;
}

// The last line of `text` that parses as a JSON object (node's stdout may be preceded by
// warnings); null if none.
Json LastJsonLine(const std::string& text, const std::string& required_key = "") {
  std::istringstream lines(text);
  Json last;
  for (std::string line; std::getline(lines, line);) {
    if (line.empty() || line[0] != '{') continue;
    Json j = Json::parse(line, nullptr, false);
    if (j.is_object() && (required_key.empty() || j.contains(required_key))) last = j;
  }
  return last;
}

std::string UrlEncode(const std::string& s) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      out += {'%', kHex[c >> 4], kHex[c & 15]};
    }
  }
  return out;
}

// The sum of the values of `metric` series in a Prometheus text exposition whose labels
// include every one of `labels` (name="value" strings); -1 if no series matched.
double SumOfSeries(const std::string& exposition, const std::string& metric,
                   const std::vector<std::string>& labels) {
  double sum = -1;
  std::istringstream lines(exposition);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind(metric + "{", 0) != 0) continue;
    const size_t close = line.rfind('}');
    if (close == std::string::npos) continue;
    const std::string label_text = line.substr(metric.size(), close - metric.size() + 1);
    bool all = true;
    for (const std::string& l : labels) all = all && label_text.find(l) != std::string::npos;
    if (!all) continue;
    sum = std::max(sum, 0.0) + std::stod(line.substr(close + 1));
  }
  return sum;
}

class RackE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::mt19937 rng(std::random_device{}());
    release_ = "pdpool-e2e-" + std::to_string(rng() % 100000);
    clique_ = "e2e-" + env_.ns();
    dir_ = env_.BuildPath("test-logs/" + env_.ns() + "/rack");
    std::filesystem::create_directories(dir_);
  }

  void TearDown() override {
    // In the reverse order of starting: the load, then Prometheus, then the release (its
    // ClusterRoles and ClusterRoleBindings outlive the namespace). TestEnv then deletes the
    // namespace and stops the nodes, which stop their pods.
    if (load_) {
      load_->Stop(seconds(30));
      load_.reset();
    }
    if (HasFailure()) DumpDiagnostics();
    if (prometheus_) {
      prometheus_->Stop();
      prometheus_.reset();
      std::filesystem::remove_all(dir_ + "/prometheus-data");
    }
    if (helm_installed_) {
      CommandResult r = Helm("uninstall " + release_ + " --namespace " + env_.ns() +
                             " --ignore-not-found --wait --timeout 120s");
      EXPECT_EQ(r.exit_code, 0) << "helm uninstall: " << r.output;
      CommandResult left = env_.Kubectl(
          "get clusterroles,clusterrolebindings -o name -l app.kubernetes.io/instance=" + release_);
      EXPECT_EQ(left.exit_code, 0) << left.output;
      EXPECT_EQ(left.output, "") << "cluster-scoped objects of the release left behind";
    }
  }

  CommandResult Helm(const std::string& args) {
    return TestEnv::RunShell(Quote(env_.SourcePath("tests/chart/helm.sh")) + " --kubeconfig " +
                             Quote(env_.kubeconfig()) + " " + args);
  }

  // node: $PDPOOL_NODE, else the first `node` on PATH.
  std::pair<std::string, std::vector<std::string>> NodeCommand(
      const std::vector<std::string>& script_args) {
    const char* node = std::getenv("PDPOOL_NODE");
    std::vector<std::string> args;
    std::string binary = node && *node ? node : "/usr/bin/env";
    if (!(node && *node)) args.push_back("node");
    args.push_back(env_.SourcePath("tests/e2e/rack_client.mjs"));
    args.insert(args.end(), script_args.begin(), script_args.end());
    return {binary, args};
  }

  std::string RouterBaseUrl() const { return "http://" + router_ip_ + ":8080/v1"; }

  // Runs rack_client.mjs to completion; its JSON result.
  Json RunClient(const std::vector<std::string>& script_args) {
    auto [binary, args] = NodeCommand(script_args);
    std::string cmd = "timeout 300 " + Quote(binary);
    for (const auto& a : args) cmd += " " + Quote(a);
    CommandResult r = TestEnv::RunShell(cmd);
    Json result = LastJsonLine(r.output);
    EXPECT_EQ(r.exit_code, 0) << cmd << "\n" << r.output;
    EXPECT_TRUE(result.is_object()) << "no JSON from rack_client.mjs:\n" << r.output;
    return result;
  }

  void StartNodes() {
    NodeStartOptions options;
    options.process_runner = true;
    options.ip_prefix = kIpPrefix;
    options.extra_args = {"--gpu-product", "NVIDIA-H200", "--label",
                          std::string(kRackLabel) + "=" + env_.ns()};
    ASSERT_NE(env_.StartNodes(kNodePrefix, kNodeCount, kGpusPerNode, clique_, options), nullptr);
    env_.WaitForNodes(kNodePrefix, kNodeCount);
  }

  // helm install of charts/pdpool with the local rack's values, scoped to this test's namespace
  // and pinned to its nodes; then the controller pod's IP.
  void InstallChart() {
    const std::string ns = env_.ns();
    std::string args = "install " + release_ + " " + Quote(env_.SourcePath("charts/pdpool")) +
                       " --namespace " + ns + " -f " +
                       Quote(env_.SourcePath("deploy/local/values-local.yaml")) +
                       " --set controller.watchNamespace=" + ns + " --set " +
                       Quote("routerRbac.namespaces={" + ns + "}") + " --set " +
                       Quote("nodeSelector." + std::string(kRackLabelHelmKey) + "=" + ns) +
                       " --set controller.plannerWarmupSeconds=3 --wait --timeout 180s";
    helm_installed_ = true;  // a failed install may still leave objects: uninstall them
    CommandResult r = Helm(args);
    ASSERT_EQ(r.exit_code, 0) << "helm " << args << "\n" << r.output << env_.ChildLogs();

    auto deployment = env_.client().Get(kube::kDeployments, ns, release_);
    ASSERT_TRUE(deployment.ok()) << deployment.status().ToString();
    EXPECT_EQ(JsonGet<int>(*deployment, "/status/readyReplicas", 0), 1) << deployment->dump(2);
    std::vector<Json> pods = env_.ListPods("app.kubernetes.io/instance=" + release_);
    ASSERT_EQ(pods.size(), 1u);
    const Json& pod = pods[0];
    EXPECT_EQ(
        JsonGet<std::string>(pod, "/spec/containers/0/image", ""),
        "ghcr.io/pdpool/controller:" +
            JsonGet<std::string>(*deployment, "/metadata/labels/app.kubernetes.io~1version", "?"));
    EXPECT_EQ(JsonGet<std::string>(pod, "/status/phase", ""), "Running") << pod.dump(2);
    EXPECT_EQ(TestEnv::ConditionStatus(pod, "Ready"), "True") << pod.dump(2);
    const std::string node = JsonGet<std::string>(pod, "/spec/nodeName", "");
    EXPECT_EQ(node.rfind(std::string(kNodePrefix) + "-", 0), 0u)
        << "the controller pod runs on " << node << ", not on this test's nodes";
    controller_ip_ = JsonGet<std::string>(pod, "/status/podIP", "");
    ASSERT_EQ(controller_ip_.rfind("127." + std::to_string(kIpPrefix) + ".", 0), 0u)
        << "pod IP " << controller_ip_;
    httplib::Client controller(controller_ip_, 8080);
    controller.set_read_timeout(5);
    auto ready = controller.Get("/readyz");
    ASSERT_TRUE(ready) << httplib::to_string(ready.error());
    EXPECT_EQ(ready->status, 200) << ready->body;
  }

  // Prometheus (Debian's) with deploy/local/prometheus-config.sh's configuration: the targets
  // from the controller pod's /prometheus/targets, scraped every second.
  void StartPrometheus() {
    std::string error;
    prometheus_ =
        env_.StartLocalPrometheus(controller_ip_ + ":8080", dir_, &prometheus_port_, &error);
    ASSERT_NE(prometheus_, nullptr) << error;
    httplib::Client prom("127.0.0.1", prometheus_port_);
    prom.set_read_timeout(5);
    ASSERT_TRUE(TestEnv::WaitFor(
        [&] {
          auto r = prom.Get("/-/ready");
          return r && r->status == 200;
        },
        seconds(60)))
        << "Prometheus not ready: " << TailOf(ReadFile(dir_ + "/prometheus.log"), 3000);
  }

  // An instant query; the result vector (empty on any error).
  Json PromQuery(const std::string& query) {
    httplib::Client prom("127.0.0.1", prometheus_port_);
    prom.set_read_timeout(10);
    auto r = prom.Get("/api/v1/query?query=" + UrlEncode(query));
    if (!r || r->status != 200) return Json::array();
    Json body = Json::parse(r->body, nullptr, false);
    return JsonGet<Json>(body, "/data/result", Json::array());
  }

  // A Llama-3.1-8B sim pool on 1-GPU replicas, 1+1 to start, up to 3 each, planned every 5 s
  // from this test's Prometheus, with an SLO that one prefill worker misses under the load step.
  Json PoolObject() {
    return {
        {"apiVersion", "pdpool.dev/v1alpha1"},
        {"kind", "InferencePool"},
        {"metadata", {{"name", kPool}, {"namespace", env_.ns()}}},
        {"spec",
         {{"model",
           {{"name", kModel}, {"preset", "llama-3.1-8b"}, {"source", {{"dummy", {{"seed", 1}}}}}}},
          {"image", "pdpool/agent:e2e"},
          {"backend", "sim"},
          {"prefill",
           {{"replicas", 1}, {"gpusPerReplica", 1}, {"minReplicas", 1}, {"maxReplicas", 3}}},
          {"decode",
           {{"replicas", 1}, {"gpusPerReplica", 1}, {"minReplicas", 1}, {"maxReplicas", 3}}},
          {"router", {{"replicas", 1}}},
          {"slo", {{"ttft", "500ms"}, {"tpot", "50ms"}, {"percentile", 90}}},
          {"autoscaling",
           {{"enabled", true},
            {"interval", "5s"},
            {"scaleDownStabilization", "300s"},
            {"prometheus", {{"url", "http://127.0.0.1:" + std::to_string(prometheus_port_)}}}}},
          {"kvTransfer", {{"transport", "tcp"}}},
          {"topology", {{"policy", "Required"}}}}}};
  }

  // Waits for the pool to be Ready and its router pod to answer /readyz; sets router_ip_.
  void WaitForReadyPool() {
    ASSERT_TRUE(TestEnv::WaitFor(
        [&] {
          Json pool = env_.GetPool(kPool);
          if (TestEnv::ConditionStatus(pool, "Ready") != "True") return false;
          for (const Json& pod :
               env_.ListPods(std::string("pdpool.dev/pool=") + kPool + ",pdpool.dev/role=router")) {
            if (TestEnv::ConditionStatus(pod, "Ready") != "True") continue;
            router_ip_ = JsonGet<std::string>(pod, "/status/podIP", "");
            router_pod_ = JsonGet<std::string>(pod, "/metadata/name", "");
          }
          if (router_ip_.empty()) return false;
          httplib::Client router(router_ip_, 8080);
          router.set_read_timeout(5);
          auto r = router.Get("/readyz");
          return r && r->status == 200;
        },
        seconds(180)))
        << "pool " << kPool
        << " never became Ready with a serving router: " << env_.GetPool(kPool).dump(2);
  }

  int StatusInt(const std::string& pointer, int fallback = -1) {
    return JsonGet<int>(env_.GetPool(kPool), pointer.c_str(), fallback);
  }

  int ReadyPods(const std::string& role) {
    int ready = 0;
    for (const Json& pod :
         env_.ListPods(std::string("pdpool.dev/pool=") + kPool + ",pdpool.dev/role=" + role))
      if (TestEnv::ConditionStatus(pod, "Ready") == "True") ++ready;
    return ready;
  }

  // The router's own count of ready workers of a role (pdpool_router_workers).
  int RouterReadyWorkers(const std::string& role) {
    httplib::Client router(router_ip_, 8080);
    router.set_read_timeout(5);
    auto r = router.Get("/metrics");
    if (!r || r->status != 200) return -1;
    return static_cast<int>(SumOfSeries(r->body, "pdpool_router_workers",
                                        {"role=\"" + role + "\"", "state=\"ready\""}));
  }

  void StartLoad(double rate, int prompt_chars, int max_tokens) {
    auto [binary, args] =
        NodeCommand({"load", "--base-url", RouterBaseUrl(), "--model", kModel, "--rate",
                     std::to_string(rate), "--prompt-chars", std::to_string(prompt_chars),
                     "--max-tokens", std::to_string(max_tokens), "--max-inflight", "64"});
    std::string error;
    load_ = SpawnProcess("load", binary, args, dir_ + "/load.log", &error);
    ASSERT_NE(load_, nullptr) << error;
  }

  // The load generator's last progress line (or its summary, once stopped).
  Json LoadReport(const std::string& key) {
    return LastJsonLine(ReadFile(dir_ + "/load.log"), key);
  }

  void DumpDiagnostics() {
    std::cerr << "pool: " << env_.GetPool(kPool).dump(2) << "\n" << env_.ChildLogs();
    std::cerr << "test files (Prometheus, load, rack_client): " << dir_ << "\n";
    // The pods' own logs (controller, router, workers) from the nodes' process runner.
    const std::filesystem::path nodes = env_.NodeStateDir(kNodePrefix);
    std::error_code ec;
    for (auto it = std::filesystem::recursive_directory_iterator(nodes, ec);
         !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
      if (it->is_regular_file() && it->path().extension() == ".log" &&
          it->path().string().find("/logs/") != std::string::npos) {
        std::cerr << "----- " << it->path().string() << "\n"
                  << TailOf(ReadFile(it->path().string()), 2500) << "\n";
      }
    }
  }

  TestEnv env_;
  std::string release_;
  std::string clique_;
  std::string dir_;
  bool helm_installed_ = false;
  std::string controller_ip_;
  std::unique_ptr<ChildProcess> prometheus_;
  int prometheus_port_ = 0;
  std::string router_ip_;
  std::string router_pod_;
  std::unique_ptr<ChildProcess> load_;
};

TEST_F(RackE2eTest, HelmInstalledRackServesTheOpenAiClientReportsMetricsAndScalesOnLoad) {
  const std::string ns = env_.ns();
  StartNodes();
  ASSERT_FALSE(HasFatalFailure());
  InstallChart();
  ASSERT_FALSE(HasFatalFailure());
  StartPrometheus();
  ASSERT_FALSE(HasFatalFailure());
  ASSERT_TRUE(env_.client().Create(kube::kInferencePools, ns, PoolObject()).ok());
  WaitForReadyPool();
  ASSERT_FALSE(HasFatalFailure());

  // Tokens out of the router through the official client.
  Json got = RunClient({"check", "--base-url", RouterBaseUrl(), "--model", kModel, "--max-tokens",
                        std::to_string(kMaxTokens)});
  ASSERT_FALSE(got.contains("error")) << got.dump(2);
  EXPECT_EQ(got["models"], Json::array({kModel})) << got.dump(2);
  const Json& completion = got["completion"];
  EXPECT_EQ(completion.value("object", ""), "text_completion");
  EXPECT_EQ(completion.value("model", ""), kModel);
  EXPECT_FALSE(completion.value("text", "").empty()) << completion.dump(2);
  EXPECT_EQ(completion.value("finishReason", ""), "length");
  EXPECT_EQ(JsonGet<int>(completion, "/usage/completion_tokens", -1), kMaxTokens);
  EXPECT_GT(JsonGet<int>(completion, "/usage/prompt_tokens", 0), 0);
  const Json& chat = got["chatStream"];
  EXPECT_EQ(chat["objects"], Json::array({"chat.completion.chunk"})) << chat.dump(2);
  EXPECT_EQ(chat.value("role", ""), "assistant");
  EXPECT_FALSE(chat.value("text", "").empty()) << chat.dump(2);
  EXPECT_EQ(chat.value("finishReason", ""), "length");
  // The stream adds up: one token per content chunk (at most), as many as usage says.
  EXPECT_EQ(JsonGet<int>(chat, "/usage/completion_tokens", -1), kMaxTokens) << chat.dump(2);
  EXPECT_GE(chat.value("contentChunks", 0), 1);
  EXPECT_LE(chat.value("contentChunks", 0), kMaxTokens);
  EXPECT_GT(chat.value("chunks", 0), chat.value("contentChunks", 0));

  // The status the controller (the chart's pod) wrote.
  Json pool = env_.GetPool(kPool);
  EXPECT_EQ(JsonGet<int>(pool, "/status/prefill/readyReplicas", -1), 1) << pool.dump(2);
  EXPECT_EQ(JsonGet<int>(pool, "/status/decode/readyReplicas", -1), 1) << pool.dump(2);
  EXPECT_EQ(JsonGet<int>(pool, "/status/router/readyReplicas", -1), 1) << pool.dump(2);
  EXPECT_EQ(JsonGet<std::string>(pool, "/status/placement/domain", ""), clique_) << pool.dump(2);
  EXPECT_EQ(JsonGet<int>(pool, "/status/placement/gpus", -1), 2) << pool.dump(2);
  // The planner reads the requests above from Prometheus.
  EXPECT_TRUE(TestEnv::WaitFor(
      [&] {
        pool = env_.GetPool(kPool);
        return TestEnv::ConditionStatus(pool, "MetricsAvailable") == "True" &&
               JsonGet<std::string>(pool, "/status/autoscaling/metricsSource", "") ==
                   "prometheus" &&
               JsonGet<double>(pool, "/status/observed/requestRate", 0) > 0 &&
               JsonGet<double>(pool, "/status/observed/ttftP90", 0) > 0;
      },
      seconds(90)))
      << "the pool's observed load never filled in: " << pool["status"].dump(2);
  EXPECT_NE(JsonGet<std::string>(pool, "/status/autoscaling/lastEvaluationTime", ""), "");
  EXPECT_NE(JsonGet<std::string>(pool, "/status/autoscaling/decision", ""), "no_metrics");

  // Prometheus has the router's TTFT histogram with the labels the planner and dashboards use,
  // and the planner's own series from the controller pod.
  Json ttft;
  EXPECT_TRUE(TestEnv::WaitFor(
      [&] {
        ttft = PromQuery("pdpool_router_ttft_seconds_bucket{namespace=\"" + ns + "\",pool=\"" +
                         kPool + "\",le=\"+Inf\"}");
        return !ttft.empty() && std::stod(JsonGet<std::string>(ttft[0], "/value/1", "0")) >= 2;
      },
      seconds(60)))
      << "no TTFT series with the 2 requests in Prometheus: " << ttft.dump(2);
  ASSERT_EQ(ttft.size(), 1u) << ttft.dump(2);
  EXPECT_EQ(JsonGet<std::string>(ttft[0], "/metric/pod", ""), router_pod_) << ttft.dump(2);
  EXPECT_EQ(JsonGet<std::string>(ttft[0], "/metric/role", ""), "router") << ttft.dump(2);
  Json planner;
  ASSERT_TRUE(TestEnv::WaitFor(
      [&] {
        planner = PromQuery(std::string("pdpool_planner_desired_replicas{pool=\"") + kPool + "\"}");
        return !planner.empty();
      },
      seconds(60)))
      << "no planner series from the controller pod in Prometheus";
  EXPECT_EQ(JsonGet<std::string>(planner[0], "/metric/instance", ""), controller_ip_ + ":8080");

  // Load step: 3000-character prompts at 20 req/s, streamed through the official client; one
  // prefill worker cannot keep TTFT within 500 ms, so the planner adds workers.
  StartLoad(/*rate=*/20, /*prompt_chars=*/3000, /*max_tokens=*/16);
  ASSERT_FALSE(HasFatalFailure());
  std::string role;
  const bool scaled = TestEnv::WaitFor(
      [&] {
        if (StatusInt("/status/prefill/desiredReplicas") > 1) role = "prefill";
        if (StatusInt("/status/decode/desiredReplicas") > 1) role = "decode";
        return !role.empty() || !load_->Running();
      },
      seconds(180));
  ASSERT_TRUE(scaled && !role.empty())
      << "the planner never added workers under load: " << env_.GetPool(kPool)["status"].dump(2)
      << "\nload: " << LoadReport("progress").dump();
  int desired = 0;
  ASSERT_TRUE(TestEnv::WaitFor(
      [&] {
        desired = StatusInt("/status/" + role + "/desiredReplicas");
        return desired > 1 && StatusInt("/status/" + role + "/readyReplicas", 0) >= desired &&
               ReadyPods(role) >= desired && RouterReadyWorkers(role) >= desired;
      },
      seconds(180)))
      << "the added " << role << " workers never became ready and joined the router (router "
      << "counts " << RouterReadyWorkers(role) << "): " << env_.GetPool(kPool)["status"].dump(2);
  pool = env_.GetPool(kPool);
  EXPECT_NE(JsonGet<std::string>(pool, "/status/lastScale/reason", ""), "") << pool.dump(2);
  EXPECT_GT(JsonGet<double>(pool, "/status/observed/requestRate", 0), 1) << pool.dump(2);

  // Stop the load: every stream it finished got all its tokens, none failed.
  ASSERT_TRUE(load_->Running()) << TailOf(ReadFile(dir_ + "/load.log"), 3000);
  EXPECT_EQ(load_->Stop(seconds(30)), 0);
  Json summary = LoadReport("summary");
  ASSERT_TRUE(summary.is_object()) << TailOf(ReadFile(dir_ + "/load.log"), 3000);
  EXPECT_GT(summary.value("ok", 0), 0) << summary.dump();
  EXPECT_EQ(summary.value("failed", -1), 0) << summary.dump();
  EXPECT_EQ(summary.value("short", -1), 0) << summary.dump();
  load_.reset();
}

}  // namespace
}  // namespace pdpool::testing
