// The planner on the real control plane: simulated H200 nodes run the pool's pods as processes
// (sim workers, router, KV over tcp), a real Prometheus (Debian's) scrapes them through the
// controller's HTTP service discovery, and the controller's planner reads Prometheus. Checked as
// a user would see it: a load step makes the planner add prefill replicas and the observed
// TTFT/TPOT come back within the SLO; a load drop removes them after the stabilization window
// with no failed request; with a fixed GPU budget, a shift to prompt-heavy traffic moves a ready
// decode worker to prefill in place (same pod UID and restart count, the worker reports its
// new role and serves prefill work).
#include <gtest/gtest.h>
#include <httplib.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>

#include "common/base64.h"
#include "tests/integration/test_env.h"
#include "tests/support/child_process.h"

namespace pdpool::testing {
namespace {

using std::chrono::seconds;

// Open-loop-ish load on the router: `threads` senders, each at rate/threads, each waiting for
// its response (so offered load falls once `threads` requests are in flight at once).
class LoadGenerator {
 public:
  LoadGenerator(std::string ip, int port) : ip_(std::move(ip)), port_(port) {}
  ~LoadGenerator() { Stop(); }

  void Start(double rate, int prompt_chars, int max_tokens, int threads = 48) {
    Stop();
    stop_ = false;
    const auto period = std::chrono::duration<double>(threads / rate);
    const std::string body = Json{
        {"model", "llama"},
        {"prompt", std::string(prompt_chars, 'a')},
        {"max_tokens", max_tokens},
        {"ignore_eos", true}}.dump();
    for (int t = 0; t < threads; ++t) {
      threads_.emplace_back([this, period, body, t, threads] {
        httplib::Client client(ip_, port_);
        client.set_read_timeout(120);
        client.set_keep_alive(true);
        auto next =
            std::chrono::steady_clock::now() +
            std::chrono::duration_cast<std::chrono::steady_clock::duration>(period * t / threads);
        while (!stop_) {
          std::this_thread::sleep_until(next);
          if (stop_) break;
          next += std::chrono::duration_cast<std::chrono::steady_clock::duration>(period);
          auto r = client.Post("/v1/completions", body, "application/json");
          if (r && r->status == 200) {
            ++ok_;
          } else {
            ++failed_;
            std::lock_guard lock(mu_);
            last_error_ =
                r ? std::to_string(r->status) + " " + r->body : httplib::to_string(r.error());
          }
        }
      });
    }
  }

  void Stop() {
    stop_ = true;
    for (auto& t : threads_) t.join();
    threads_.clear();
  }

  void ResetCounts() {
    ok_ = 0;
    failed_ = 0;
  }
  int ok() const { return ok_; }
  int failed() const { return failed_; }
  std::string last_error() {
    std::lock_guard lock(mu_);
    return last_error_;
  }

 private:
  std::string ip_;
  int port_;
  std::atomic<bool> stop_{true};
  std::atomic<int> ok_{0};
  std::atomic<int> failed_{0};
  std::mutex mu_;
  std::string last_error_;
  std::vector<std::thread> threads_;
};

class PlannerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    env_.InstallCrd();
    dir_ = std::filesystem::temp_directory_path() /
           ("pdpool-planner-" + std::to_string(::getpid()) + "-" + env_.ns());
    std::filesystem::create_directories(dir_);
  }

  void TearDown() override {
    if (load_) load_->Stop();
    if (HasFailure()) {
      std::cerr << env_.ChildLogs();
      if (prometheus_) std::cerr << "prometheus log: " << prometheus_->log_path() << "\n";
    }
    if (prometheus_) prometheus_->Stop();
  }

  // Nodes that run pods as processes, a controller with a short warm-up, and a Prometheus that
  // discovers the pods through the controller.
  void StartRack(const std::string& prefix, int ip_prefix) {
    // Routers find their workers through the API server as the namespace's default
    // ServiceAccount (what the chart's routerRbac.namespaces binds on a cluster).
    CommandResult rbac = env_.Kubectl("-n " + env_.ns() + " apply -f -", R"(
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: pdpool-router}
rules:
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: pdpool-router}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pdpool-router}
subjects:
- {kind: ServiceAccount, name: default}
)");
    ASSERT_EQ(rbac.exit_code, 0) << rbac.output;
    NodeStartOptions nodes;
    nodes.process_runner = true;
    nodes.ip_prefix = ip_prefix;
    nodes.extra_args = {"--gpu-product", "NVIDIA-H200"};
    env_.StartNodes(prefix, 2, 4, "nvl-" + prefix, nodes);
    env_.WaitForNodes(prefix, 2);
    const int metrics_port = FreeLoopbackPort();
    env_.StartController("planner",
                         {"--metrics-port", std::to_string(metrics_port), "--planner-warmup", "3"});
    std::string error;
    prometheus_ = env_.StartLocalPrometheus("127.0.0.1:" + std::to_string(metrics_port),
                                            dir_.string(), &prometheus_port_, &error);
    ASSERT_NE(prometheus_, nullptr) << error;
  }

  // A Llama-3.1-8B sim pool on 1-GPU replicas, autoscaled every 5 s from this test's Prometheus.
  Json PoolObject(const std::string& name, int prefill, int decode, int max, int gpu_budget,
                  const std::string& stabilization = "30s") {
    Json autoscaling = {
        {"enabled", true},
        {"interval", "5s"},
        {"scaleDownStabilization", stabilization},
        {"rebalance", "InPlace"},
        {"prometheus", {{"url", "http://127.0.0.1:" + std::to_string(prometheus_port_)}}}};
    if (gpu_budget > 0) autoscaling["gpuBudget"] = gpu_budget;
    return {
        {"apiVersion", "pdpool.dev/v1alpha1"},
        {"kind", "InferencePool"},
        {"metadata", {{"name", name}, {"namespace", env_.ns()}}},
        {"spec",
         {{"model",
           {{"name", "llama"}, {"preset", "llama-3.1-8b"}, {"source", {{"dummy", {{"seed", 1}}}}}}},
          {"image", "pdpool/agent:test"},
          {"backend", "sim"},
          {"prefill",
           {{"replicas", prefill},
            {"gpusPerReplica", 1},
            {"minReplicas", 1},
            {"maxReplicas", max}}},
          {"decode",
           {{"replicas", decode}, {"gpusPerReplica", 1}, {"minReplicas", 1}, {"maxReplicas", max}}},
          {"router", {{"replicas", 1}}},
          {"slo", {{"ttft", "500ms"}, {"tpot", "50ms"}, {"percentile", 90}}},
          {"autoscaling", autoscaling},
          {"kvTransfer", {{"transport", "tcp"}}},
          {"topology", {{"policy", "Required"}}}}}};
  }

  // Waits for the pool to be Ready and returns its router pod's IP.
  std::string WaitForReadyPool(const std::string& name) {
    std::string router_ip;
    EXPECT_TRUE(TestEnv::WaitFor(
        [&] {
          Json pool = env_.GetPool(name);
          if (TestEnv::ConditionStatus(pool, "Ready") != "True") return false;
          for (const Json& pod :
               env_.ListPods("pdpool.dev/pool=" + name + ",pdpool.dev/role=router")) {
            if (TestEnv::ConditionStatus(pod, "Ready") == "True")
              router_ip = JsonGet<std::string>(pod, "/status/podIP", "");
          }
          return !router_ip.empty();
        },
        seconds(180)))
        << "pool " << name << " never became Ready: " << env_.GetPool(name).dump();
    return router_ip;
  }

  int Desired(const std::string& pool, const char* role) {
    return JsonGet<int>(env_.GetPool(pool),
                        (std::string("/status/") + role + "/desiredReplicas").c_str(), -1);
  }

  std::string PoolToken(const std::string& pool) {
    auto secret = env_.client().Get(kube::kSecrets, env_.ns(), pool + "-token");
    if (!secret.ok()) return "";
    auto token = Base64Decode(JsonStringAt(*secret, {"data", "token"}), "token");
    return token.ok() ? *token : "";
  }

  TestEnv env_;
  std::filesystem::path dir_;
  std::unique_ptr<ChildProcess> prometheus_;
  int prometheus_port_ = 0;
  std::unique_ptr<LoadGenerator> load_;
};

TEST_F(PlannerTest, LoadStepAddsPrefillReplicasAndLoadDropRemovesThemWithoutFailures) {
  StartRack("plstep", 41);
  ASSERT_FALSE(HasFatalFailure());
  ASSERT_TRUE(env_.client()
                  .Create(kube::kInferencePools, env_.ns(),
                          PoolObject("step", 1, 1, /*max=*/3, /*budget=*/0))
                  .ok());
  const std::string router = WaitForReadyPool("step");
  ASSERT_FALSE(router.empty());

  // Step: 3000-token prompts at ~20 req/s, more than one prefill replica serves within 500 ms.
  load_ = std::make_unique<LoadGenerator>(router, 8080);
  load_->Start(/*rate=*/20, /*prompt_chars=*/3000, /*max_tokens=*/16);
  ASSERT_TRUE(TestEnv::WaitFor([&] { return Desired("step", "prefill") >= 2; }, seconds(180)))
      << "the planner never added prefill replicas: " << env_.GetPool("step").dump();
  const int scaled_to = Desired("step", "prefill");
  ASSERT_TRUE(TestEnv::WaitFor(
      [&] {
        Json pool = env_.GetPool("step");
        return JsonGet<int>(pool, "/status/prefill/readyReplicas", 0) >=
               JsonGet<int>(pool, "/status/prefill/desiredReplicas", 99);
      },
      seconds(120)))
      << env_.GetPool("step").dump();
  // With the new capacity serving, the latencies the planner observes (p90, from Prometheus)
  // come back within the SLO.
  Json pool;
  EXPECT_TRUE(TestEnv::WaitFor(
      [&] {
        pool = env_.GetPool("step");
        const double ttft = JsonGet<double>(pool, "/status/observed/ttftP90", 99);
        const double tpot = JsonGet<double>(pool, "/status/observed/tpotP90", 99);
        return ttft <= 0.5 && tpot <= 0.05;
      },
      seconds(180)))
      << "latencies stayed over the SLO: " << pool["status"].dump();
  EXPECT_EQ(TestEnv::ConditionStatus(pool, "MetricsAvailable"), "True");
  EXPECT_EQ(JsonGet<std::string>(pool, "/status/autoscaling/metricsSource", ""), "prometheus");

  // Drop: a trickle of short requests; the extra prefill replicas go after the window, and no
  // request fails while they drain.
  load_->Stop();
  load_->ResetCounts();
  load_->Start(/*rate=*/1, /*prompt_chars=*/200, /*max_tokens=*/8, /*threads=*/2);
  const auto dropped = std::chrono::steady_clock::now();
  ASSERT_TRUE(
      TestEnv::WaitFor([&] { return Desired("step", "prefill") < scaled_to; }, seconds(240)))
      << "never scaled down: " << env_.GetPool("step").dump();
  EXPECT_GE(std::chrono::steady_clock::now() - dropped, seconds(30))
      << "scaled down before the 30 s stabilization window passed";
  // Keep the trickle going until the removed workers are gone.
  EXPECT_TRUE(TestEnv::WaitFor(
      [&] {
        return static_cast<int>(
                   env_.ListPods("pdpool.dev/pool=step,pdpool.dev/role=prefill").size()) ==
               Desired("step", "prefill");
      },
      seconds(120)));
  load_->Stop();
  EXPECT_GT(load_->ok(), 0);
  EXPECT_EQ(load_->failed(), 0) << load_->last_error();
  // And settles: the next evaluations hold.
  EXPECT_TRUE(TestEnv::WaitFor(
      [&] {
        return JsonGet<std::string>(env_.GetPool("step"), "/status/autoscaling/decision", "") ==
               "hold";
      },
      seconds(60)));
}

TEST_F(PlannerTest, PromptHeavyShiftMovesADecodeWorkerToPrefillInPlace) {
  StartRack("plmove", 42);
  ASSERT_FALSE(HasFatalFailure());
  // 3 GPUs, all held from the start: 1 prefill + 2 decode. A long stabilization window: decode
  // is not scaled down during the test, so prefill can only grow by a move (which, unlike a
  // scale-down, does not wait out the window).
  ASSERT_TRUE(env_.client()
                  .Create(kube::kInferencePools, env_.ns(),
                          PoolObject("mix", 1, 2, /*max=*/2, /*budget=*/3, "600s"))
                  .ok());
  const std::string router = WaitForReadyPool("mix");
  ASSERT_FALSE(router.empty());
  struct Before {
    std::string uid;
    int restarts;
  };
  std::map<std::string, Before> decode_pods;
  for (const Json& pod : env_.ListPods("pdpool.dev/pool=mix,pdpool.dev/role=decode")) {
    decode_pods[JsonGet<std::string>(pod, "/metadata/name", "")] = {
        JsonGet<std::string>(pod, "/metadata/uid", ""),
        JsonGet<int>(pod, "/status/containerStatuses/0/restartCount", -1)};
  }
  ASSERT_EQ(decode_pods.size(), 2u);

  load_ = std::make_unique<LoadGenerator>(router, 8080);
  load_->Start(/*rate=*/20, /*prompt_chars=*/3000, /*max_tokens=*/2);
  std::string moved;
  ASSERT_TRUE(TestEnv::WaitFor(
      [&] {
        for (const auto& [name, before] : decode_pods) {
          auto pod = env_.client().Get(kube::kPods, env_.ns(), name);
          if (pod.ok() &&
              JsonStringAt(*pod, {"metadata", "labels", "pdpool.dev/role"}) == "prefill") {
            moved = name;
            return true;
          }
        }
        return false;
      },
      seconds(180)))
      << "no decode worker moved to prefill: " << env_.GetPool("mix")["status"].dump();
  auto pod = env_.client().Get(kube::kPods, env_.ns(), moved);
  ASSERT_TRUE(pod.ok());
  EXPECT_EQ(JsonGet<std::string>(*pod, "/metadata/uid", ""), decode_pods[moved].uid);
  EXPECT_EQ(JsonGet<std::string>(*pod, "/metadata/annotations/pdpool.dev~1moved-from", ""),
            "decode");
  const std::string ip = JsonGet<std::string>(*pod, "/status/podIP", "");
  // The worker switches after draining, reports prefill, and the router gives it prompts.
  httplib::Client worker(ip, 8000);
  worker.set_read_timeout(10);
  const httplib::Headers auth{{"Authorization", "Bearer " + PoolToken("mix")}};
  EXPECT_TRUE(TestEnv::WaitFor(
      [&] {
        auto info = worker.Get("/internal/v1/info", auth);
        if (!info || info->status != 200) return false;
        return JsonGet<std::string>(Json::parse(info->body, nullptr, false), "/role", "") ==
               "prefill";
      },
      seconds(60)))
      << "the moved worker never reported role prefill";
  EXPECT_TRUE(TestEnv::WaitFor(
      [&] {
        auto metrics = worker.Get("/metrics");
        if (!metrics) return false;
        // A prefill-role series with prompt tokens counted.
        std::istringstream lines(metrics->body);
        for (std::string line; std::getline(lines, line);) {
          if (line.rfind("pdpool_worker_prefill_tokens_total{", 0) != 0) continue;
          if (line.find("role=\"prefill\"") == std::string::npos) continue;
          if (std::stod(line.substr(line.rfind(' ') + 1)) > 0) return true;
        }
        return false;
      },
      seconds(60)))
      << "the moved worker served no prefill work";
  load_->Stop();
  pod = env_.client().Get(kube::kPods, env_.ns(), moved);
  ASSERT_TRUE(pod.ok());
  EXPECT_EQ(JsonGet<std::string>(*pod, "/metadata/uid", ""), decode_pods[moved].uid);
  EXPECT_EQ(JsonGet<int>(*pod, "/status/containerStatuses/0/restartCount", -1),
            decode_pods[moved].restarts);
  Json status = env_.GetPool("mix")["status"];
  EXPECT_EQ(JsonGet<int>(status, "/prefill/desiredReplicas", 0), 2) << status.dump();
  EXPECT_EQ(JsonGet<int>(status, "/decode/desiredReplicas", 0), 1) << status.dump();
  EXPECT_NE(JsonGet<std::string>(status, "/lastScale/reason", "").find("decode→prefill"),
            std::string::npos)
      << status.dump();
  EXPECT_EQ(load_->failed(), 0) << load_->last_error();
}

}  // namespace
}  // namespace pdpool::testing
