// PrometheusMetricsSource against the real Prometheus server (/usr/bin/prometheus, or
// $PDPOOL_PROMETHEUS): Prometheus runs on a free loopback port with a temporary config and TSDB,
// scraping every second the /metrics of a fake router and fake workers that this test serves
// with the agents' own metric classes (RouterMetrics, WorkerMetrics), labelled
// namespace/pod/pool/role as pdpool's scrape config relabels them. The load is steady and known,
// so the rates, means and quantiles the source reads are checked against it; the warm-up filter
// is checked with a freshly ready worker whose load must not show.
// Needs no Kubernetes (the kube_cluster fixture the integration binary's tests carry is unused).
#include "controller/planner/prometheus_metrics_source.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <thread>

#include "agent/router/router_metrics.h"
#include "agent/worker/worker_metrics.h"
#include "common/admin_server.h"
#include "tests/support/child_process.h"

namespace pdpool::controller::planner {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

// The load the fake pods report, per second.
constexpr double kRequestRate = 20;       // each: 800 prompt tokens, 100 generated, TTFT 0.15 s
constexpr double kPrefillSteps = 5;       // warm prefill worker: 512 tokens in 0.02 s each
constexpr double kColdPrefillSteps = 10;  // cold prefill worker: 1000 tokens each
constexpr double kDecodeSteps = 20;       // decode worker: batch of 8 in 0.01 s each

std::string PrometheusBinary() {
  const char* env = getenv("PDPOOL_PROMETHEUS");
  return env != nullptr && *env != '\0' ? env : "/usr/bin/prometheus";
}

// A fake pod: an AdminServer on 127.0.0.1 serving one registry.
struct FakePod {
  std::string name;
  std::string role;
  std::unique_ptr<AdminServer> server;
};

class PrometheusMetricsSourceIntegrationTest : public ::testing::Test {
 public:
  void StopLoad() {
    stop_ = true;
    if (load_.joinable()) load_.join();
  }

 protected:
  void SetUp() override {
    if (!std::filesystem::exists(PrometheusBinary())) {
      GTEST_SKIP() << PrometheusBinary() << " not found (deps.sh installs Debian's prometheus)";
    }
    char dir_template[] = "/tmp/pdpool-prom-XXXXXX";
    ASSERT_NE(mkdtemp(dir_template), nullptr);
    dir_ = dir_template;
  }

  void TearDown() override {
    StopLoad();
    if (prometheus_) {
      prometheus_->Stop(seconds(10));
      if (HasFailure()) {
        std::ifstream log(prometheus_->log_path());
        std::string text((std::istreambuf_iterator<char>(log)), {});
        ADD_FAILURE() << "prometheus log (tail):\n"
                      << text.substr(text.size() > 4000 ? text.size() - 4000 : 0);
      }
    }
    for (FakePod& pod : pods_) {
      if (pod.server) pod.server->Stop();
    }
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  void Serve(const std::string& name, const std::string& role,
             std::shared_ptr<prometheus::Registry> registry) {
    AdminServer::Options o;
    o.host = "127.0.0.1";
    o.port = 0;
    auto server = std::make_unique<AdminServer>(o, std::move(registry));
    Status s = server->Start();
    ASSERT_TRUE(s.ok()) << s.ToString();
    pods_.push_back({name, role, std::move(server)});
  }

  void StartPrometheus() {
    std::ofstream config(dir_ + "/prometheus.yml");
    config << "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
              "scrape_configs:\n  - job_name: pdpool\n    static_configs:\n";
    for (const FakePod& pod : pods_) {
      config << "      - targets: ['127.0.0.1:" << pod.server->port() << "']\n"
             << "        labels: {namespace: serving, pool: llama, pod: " << pod.name
             << ", role: " << pod.role << "}\n";
    }
    config.close();
    port_ = testing::FreeLoopbackPort();
    std::string error;
    prometheus_ = testing::SpawnProcess(
        "prometheus", PrometheusBinary(),
        {"--config.file=" + dir_ + "/prometheus.yml", "--storage.tsdb.path=" + dir_ + "/data",
         "--web.listen-address=127.0.0.1:" + std::to_string(port_), "--log.level=info"},
        dir_ + "/prometheus.log", &error);
    ASSERT_NE(prometheus_, nullptr) << error;
  }

  std::string dir_;
  std::vector<FakePod> pods_;
  std::unique_ptr<testing::ChildProcess> prometheus_;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread load_;
};

TEST_F(PrometheusMetricsSourceIntegrationTest, ReadsRatesMeansAndQuantilesFromRealPrometheus) {
  agent::RouterMetrics router("llama");
  agent::WorkerMetrics prefill("prefill"), cold_prefill("prefill"), decode("decode");
  Serve("llama-router-0", "router", router.registry());
  Serve("llama-prefill-0", "prefill", prefill.registry());
  Serve("llama-prefill-1", "prefill", cold_prefill.registry());
  Serve("llama-decode-0", "decode", decode.registry());
  ASSERT_FALSE(HasFatalFailure());
  agent::EngineStats prefill_stats;
  prefill_stats.running = 1;
  prefill_stats.waiting = 2;
  prefill_stats.kv_usage_ratio = 0.25;
  prefill.SetEngineStats(prefill_stats, true);
  agent::EngineStats cold_stats;
  cold_stats.waiting = 50;
  cold_stats.kv_usage_ratio = 0.9;
  cold_prefill.SetEngineStats(cold_stats, true);
  agent::EngineStats decode_stats;
  decode_stats.running = 8;
  decode_stats.kv_usage_ratio = 0.5;
  decode.SetEngineStats(decode_stats, true);

  // Steady load: each counter catches up with rate × elapsed every 10 ms. The thread uses the
  // metrics above, so it ends before they do, however the test ends.
  struct JoinLoad {
    PrometheusMetricsSourceIntegrationTest* test;
    ~JoinLoad() { test->StopLoad(); }
  } join_load{this};
  const auto start = std::chrono::steady_clock::now();
  load_ = std::thread([&] {
    int64_t requests = 0, prefill_steps = 0, cold_steps = 0, decode_steps = 0;
    while (!stop_) {
      const double t =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      for (; requests < static_cast<int64_t>(kRequestRate * t); ++requests) {
        router.AddPromptTokens(800);
        router.AddGenerationTokens(100);
        router.ObserveTtft(0.15);
        router.ObserveTpot(0.02);
        router.ObserveE2e(2.15);
        router.CountRequest(200);
      }
      for (; prefill_steps < static_cast<int64_t>(kPrefillSteps * t); ++prefill_steps) {
        prefill.ObserveStep({512, 0, 1, 0.02, true});
      }
      for (; cold_steps < static_cast<int64_t>(kColdPrefillSteps * t); ++cold_steps) {
        cold_prefill.ObserveStep({1000, 0, 1, 0.5, true});
      }
      for (; decode_steps < static_cast<int64_t>(kDecodeSteps * t); ++decode_steps) {
        decode.ObserveStep({0, 8, 8, 0.01, true});
      }
      std::this_thread::sleep_for(milliseconds(10));
    }
  });

  StartPrometheus();
  ASSERT_FALSE(HasFatalFailure());

  MetricsQuery query;
  query.namespace_name = "serving";
  query.pool = "llama";
  query.percentile = 90;
  query.window = seconds(10);
  query.warmup = seconds(60);
  const WallTime long_ago = RealClock::Instance().WallNow() - seconds(3600);
  for (const FakePod& pod : pods_) {
    const bool cold = pod.name == "llama-prefill-1";
    query.pods.push_back({pod.name, "127.0.0.1", pod.role, pod.server->port(), true,
                          cold ? RealClock::Instance().WallNow() : long_ago});
  }

  PrometheusMetricsSourceOptions options;
  options.timeout = seconds(5);
  options.retries = 0;
  PrometheusMetricsSource source("http://127.0.0.1:" + std::to_string(port_),
                                 &RealClock::Instance(), options);
  // Wait until Prometheus has samples spanning a whole window of the steady load: rate() of a
  // series younger than its range extrapolates less than the rate. The first successful read
  // means the pool's series have two samples; a window and a few scrapes later they span it.
  StatusOr<PoolSignals> signals = Status::Unavailable("not read yet");
  const auto deadline = std::chrono::steady_clock::now() + seconds(120);
  std::optional<std::chrono::steady_clock::time_point> first_data;
  std::vector<std::string> errors;
  while (std::chrono::steady_clock::now() < deadline) {
    signals = source.Read(query);
    const auto now = std::chrono::steady_clock::now();
    if (signals.ok() && !first_data) first_data = now;
    if (signals.ok() && now - *first_data > query.window + seconds(3)) break;
    if (!signals.ok() && (errors.empty() || errors.back() != signals.status().ToString())) {
      errors.push_back(signals.status().ToString());
    }
    std::this_thread::sleep_for(milliseconds(500));
  }
  ASSERT_TRUE(signals.ok()) << signals.status().ToString();
  std::string seen;
  for (const std::string& e : errors) seen += "\n  " + e;
  SCOPED_TRACE("errors while waiting:" + seen);
  const PoolSignals& s = *signals;
  std::cout << "read: request_rate=" << s.request_rate << " ttft_p90=" << s.ttft_seconds
            << " tpot_p90=" << s.tpot_seconds << " mean_prompt=" << s.mean_prompt_tokens
            << " prefill_tokens/s=" << s.prefill.tokens_per_second
            << " decode_tokens/s=" << s.decode.tokens_per_second
            << " decode_batch=" << s.decode.mean_batch << "\n";

  // Rates: within 15% (scrape timing and rate()'s extrapolation at the window's edges).
  EXPECT_NEAR(s.request_rate, kRequestRate, kRequestRate * 0.15);
  EXPECT_NEAR(s.prefill.tokens_per_second, 512 * kPrefillSteps, 512 * kPrefillSteps * 0.15)
      << "the cold worker's " << 1000 * kColdPrefillSteps << " tokens/s must not count";
  EXPECT_NEAR(s.prefill.steps_per_second, kPrefillSteps, kPrefillSteps * 0.15);
  EXPECT_NEAR(s.decode.tokens_per_second, 8 * kDecodeSteps, 8 * kDecodeSteps * 0.15);
  EXPECT_NEAR(s.decode.steps_per_second, kDecodeSteps, kDecodeSteps * 0.15);
  // Ratios of counters moving together: exact but for a request or step caught mid-update.
  EXPECT_NEAR(s.mean_prompt_tokens, 800, 800 * 0.05);
  EXPECT_NEAR(s.mean_output_tokens, 100, 100 * 0.05);
  EXPECT_NEAR(s.decode.mean_batch, 8, 8 * 0.05);
  EXPECT_NEAR(s.prefill.mean_step_seconds, 0.02, 0.02 * 0.05);
  EXPECT_NEAR(s.decode.mean_step_seconds, 0.01, 0.01 * 0.05);
  // Every TTFT in the router's bucket (0.1, 0.15], every TPOT in (0.015, 0.02]: p90
  // interpolates to 90% of the way.
  EXPECT_NEAR(s.ttft_seconds, 0.1 + 0.05 * 0.9, 1e-6);
  EXPECT_NEAR(s.tpot_seconds, 0.015 + 0.005 * 0.9, 1e-6);
  EXPECT_EQ(s.inflight_requests, 0);
  // Gauges of the warm workers only.
  EXPECT_EQ(s.prefill.warm_workers, 1);
  EXPECT_EQ(s.prefill.requests_running, 1);
  EXPECT_EQ(s.prefill.requests_waiting, 2);
  EXPECT_EQ(s.prefill.kv_usage_ratio, 0.25);
  EXPECT_EQ(s.decode.warm_workers, 1);
  EXPECT_EQ(s.decode.requests_running, 8);
  EXPECT_EQ(s.decode.kv_usage_ratio, 0.5);
  EXPECT_LE(s.window_end, RealClock::Instance().WallNow());

  // A pool Prometheus has never seen is NotFound.
  query.pool = "other";
  auto other = source.Read(query);
  ASSERT_FALSE(other.ok());
  EXPECT_TRUE(other.status().IsNotFound()) << other.status().ToString();
}

}  // namespace
}  // namespace pdpool::controller::planner
