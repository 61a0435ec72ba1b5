// Tests for ScrapeMetricsSource against fake pods (HTTP servers on 127.0.0.1 serving exposition
// text the test changes between reads) on a fake clock: first read NotFound, rates over the time
// between reads summed over routers and workers, quantiles from summed bucket increases,
// warm-up exclusion, counter resets, failing pods skipped, all routers failing Unavailable.
#include "controller/planner/scrape_metrics_source.h"

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <mutex>

#include "tests/fakes/loopback_http_server.h"

namespace pdpool::controller::planner {
namespace {

using std::chrono::seconds;
using testing::LoopbackHttpServer;

struct RouterState {
  double ok = 0, unavailable = 0;  // requests by code
  double served = 0, prompt = 0, generation = 0;
  std::vector<double> ttft = {0, 0, 0};  // cumulative at le 0.1, 0.2, +Inf
  std::vector<double> tpot = {0, 0};     // cumulative at le 0.05, +Inf
  double inflight = 0;
};

std::string RouterText(const RouterState& r) {
  std::string t =
      "# HELP pdpool_router_requests_total Client API requests finished, by HTTP status code\n"
      "# TYPE pdpool_router_requests_total counter\n";
  t += "pdpool_router_requests_total{pool=\"llama\",code=\"200\"} " + std::to_string(r.ok) + "\n";
  t += "pdpool_router_requests_total{pool=\"llama\",code=\"503\"} " +
       std::to_string(r.unavailable) + "\n";
  t += "# TYPE pdpool_router_ttft_seconds histogram\n";
  const char* ttft_le[] = {"0.1", "0.2", "+Inf"};
  for (int i = 0; i < 3; ++i) {
    t += "pdpool_router_ttft_seconds_bucket{pool=\"llama\",le=\"" + std::string(ttft_le[i]) +
         "\"} " + std::to_string(r.ttft[i]) + "\n";
  }
  t += "pdpool_router_ttft_seconds_count{pool=\"llama\"} " + std::to_string(r.ttft[2]) + "\n";
  const char* tpot_le[] = {"0.05", "+Inf"};
  for (int i = 0; i < 2; ++i) {
    t += "pdpool_router_tpot_seconds_bucket{pool=\"llama\",le=\"" + std::string(tpot_le[i]) +
         "\"} " + std::to_string(r.tpot[i]) + "\n";
  }
  t += "pdpool_router_e2e_seconds_count{pool=\"llama\"} " + std::to_string(r.served) + "\n";
  t += "pdpool_router_prompt_tokens_total{pool=\"llama\"} " + std::to_string(r.prompt) + "\n";
  t += "pdpool_router_generation_tokens_total{pool=\"llama\"} " + std::to_string(r.generation) +
       "\n";
  t += "pdpool_router_inflight_requests{pool=\"llama\"} " + std::to_string(r.inflight) + "\n";
  t += "process_open_fds 12\n";  // not pdpool's: ignored
  return t;
}

struct WorkerState {
  std::string role;
  double prefill_tokens = 0, decode_tokens = 0;
  double prefill_steps = 0, prefill_step_sum = 0;
  double decode_steps = 0, decode_step_sum = 0;
  double mixed_steps = 0, mixed_step_sum = 0;
  double running = 0, waiting = 0, kv = 0;
};

std::string WorkerText(const WorkerState& w) {
  const std::string role = "role=\"" + w.role + "\"";
  std::string t;
  t += "pdpool_worker_requests_running{" + role + "} " + std::to_string(w.running) + "\n";
  t += "pdpool_worker_requests_waiting{" + role + "} " + std::to_string(w.waiting) + "\n";
  t += "pdpool_worker_kv_cache_usage_ratio{" + role + "} " + std::to_string(w.kv) + "\n";
  t +=
      "pdpool_worker_prefill_tokens_total{" + role + "} " + std::to_string(w.prefill_tokens) + "\n";
  t += "pdpool_worker_decode_tokens_total{" + role + "} " + std::to_string(w.decode_tokens) + "\n";
  auto phase = [&](const char* p, double count, double sum) {
    const std::string l = role + ",phase=\"" + p + "\"";
    t += "pdpool_worker_step_seconds_bucket{" + l + ",le=\"+Inf\"} " + std::to_string(count) + "\n";
    t += "pdpool_worker_step_seconds_sum{" + l + "} " + std::to_string(sum) + "\n";
    t += "pdpool_worker_step_seconds_count{" + l + "} " + std::to_string(count) + "\n";
  };
  phase("prefill", w.prefill_steps, w.prefill_step_sum);
  phase("decode", w.decode_steps, w.decode_step_sum);
  phase("mixed", w.mixed_steps, w.mixed_step_sum);
  return t;
}

// A pod serving /metrics with whatever body the test last set.
class FakePod {
 public:
  FakePod(std::string name, std::string role)
      : name_(std::move(name)),
        role_(std::move(role)),
        server_([this](const httplib::Request& req, httplib::Response& res) {
          std::lock_guard lock(mu_);
          if (req.path != "/metrics") {
            res.status = 404;
            return;
          }
          res.set_content(body_, "text/plain; version=0.0.4");
        }) {}

  void Serve(std::string body) {
    std::lock_guard lock(mu_);
    body_ = std::move(body);
  }
  void Stop() { server_.Stop(); }
  PoolPod Pod(bool ready, WallTime ready_since) const {
    return {name_, "127.0.0.1", role_, server_.port(), ready, ready_since};
  }

 private:
  std::string name_, role_;
  std::mutex mu_;
  std::string body_;
  LoopbackHttpServer server_;  // last: stops before the body goes
};

class ScrapeMetricsSourceTest : public ::testing::Test {
 protected:
  ScrapeMetricsSourceTest() : source_(&clock_) {
    query_.namespace_name = "serving";
    query_.pool = "llama";
    query_.percentile = 90;
    query_.warmup = seconds(60);
  }

  void ServeAll() {
    r0_.Serve(RouterText(router0_));
    r1_.Serve(RouterText(router1_));
    p0_.Serve(WorkerText(prefill0_));
    p1_.Serve(WorkerText(prefill1_));
    d0_.Serve(WorkerText(decode0_));
    d1_.Serve(WorkerText(decode1_));
  }

  // Routers r0, r1; prefill p0 (warm), p1 (ready 5 s ago: cold); decode d0 (warm), d1 (not
  // ready).
  void UseAllPods() {
    const WallTime now = clock_.WallNow();
    query_.pods = {r0_.Pod(true, now - seconds(3600)), r1_.Pod(false, WallTime()),
                   p0_.Pod(true, now - seconds(3600)), p1_.Pod(true, now - seconds(5)),
                   d0_.Pod(true, now - seconds(3600)), d1_.Pod(false, now - seconds(3600))};
  }

  FakeClock clock_;
  ScrapeMetricsSource source_;
  MetricsQuery query_;
  RouterState router0_, router1_;
  WorkerState prefill0_{"prefill"}, prefill1_{"prefill"}, decode0_{"decode"}, decode1_{"decode"};
  FakePod r0_{"llama-router-0", "router"}, r1_{"llama-router-1", "router"};
  FakePod p0_{"llama-prefill-0", "prefill"}, p1_{"llama-prefill-1", "prefill"};
  FakePod d0_{"llama-decode-0", "decode"}, d1_{"llama-decode-1", "decode"};
};

TEST_F(ScrapeMetricsSourceTest, FirstReadCollectsThenRatesAndQuantilesOverTheInterval) {
  UseAllPods();
  router0_ = {10, 0, 10, 1000, 100, {0, 10, 10}, {10, 10}, 4};
  router1_ = {0, 0, 0, 0, 0, {0, 0, 0}, {0, 0}, 1};
  prefill0_.prefill_tokens = 5000;
  prefill1_.prefill_tokens = 5000;
  decode0_.decode_tokens = 700;
  ServeAll();
  EXPECT_EQ(source_.Name(), "scrape");
  auto first = source_.Read(query_);
  ASSERT_FALSE(first.ok());
  EXPECT_TRUE(first.status().IsNotFound());
  EXPECT_NE(first.status().message().find("collecting a first sample"), std::string::npos)
      << first.status().message();

  clock_.Advance(seconds(10));
  // Router 0: +90 ok, +10 failed, 90 served; router 1: +50 ok, 50 served.
  router0_ = {100, 10, 100, 73000, 9100, {40, 100, 100}, {100, 100}, 7};
  router1_ = {50, 0, 50, 40000, 5000, {10, 40, 50}, {50, 50}, 5};
  // Warm prefill: 20000 tokens, 40 prefill steps of 0.05 s in 10 s.
  prefill0_ = {"prefill", 25000, 0, 40, 2.0, 0, 0, 0, 0, 1, 3, 0.2};
  // Cold prefill: excluded however busy.
  prefill1_ = {"prefill", 105000, 0, 400, 20, 0, 0, 0, 0, 9, 9, 0.9};
  // Warm decode: 3000 tokens in 100 decode steps of 0.015 s; mixed steps don't count as its own.
  decode0_ = {"decode", 0, 3700, 0, 0, 100, 1.5, 50, 5, 30, 2, 0.6};
  decode1_ = {"decode", 0, 99999, 0, 0, 999, 99, 0, 0, 99, 99, 0.99};  // not ready: not read
  ServeAll();
  auto s = source_.Read(query_);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->window_end, clock_.WallNow());
  EXPECT_DOUBLE_EQ(s->window_seconds, 10);
  EXPECT_DOUBLE_EQ(s->request_rate, 15);  // (100 + 50) / 10 s, any code
  EXPECT_DOUBLE_EQ(s->mean_prompt_tokens, (72000.0 + 40000) / 140);
  EXPECT_DOUBLE_EQ(s->mean_output_tokens, (9000.0 + 5000) / 140);
  // TTFT increases summed over routers: 50 <= 0.1, 130 <= 0.2, 140 in all: rank 126.
  EXPECT_DOUBLE_EQ(s->ttft_seconds, 0.1 + 0.1 * 76.0 / 80.0);
  EXPECT_DOUBLE_EQ(s->tpot_seconds, 0.05 * 0.9);
  EXPECT_DOUBLE_EQ(s->inflight_requests, 12);

  EXPECT_EQ(s->prefill.warm_workers, 1);
  EXPECT_DOUBLE_EQ(s->prefill.tokens_per_second, 2000);
  EXPECT_DOUBLE_EQ(s->prefill.steps_per_second, 4);
  EXPECT_DOUBLE_EQ(s->prefill.mean_step_seconds, 0.05);
  EXPECT_DOUBLE_EQ(s->prefill.requests_running, 1);
  EXPECT_DOUBLE_EQ(s->prefill.requests_waiting, 3);
  EXPECT_DOUBLE_EQ(s->prefill.kv_usage_ratio, 0.2);
  EXPECT_FALSE(HasValue(s->prefill.mean_batch));

  EXPECT_EQ(s->decode.warm_workers, 1);
  EXPECT_DOUBLE_EQ(s->decode.tokens_per_second, 300);
  EXPECT_DOUBLE_EQ(s->decode.steps_per_second, 10);
  EXPECT_DOUBLE_EQ(s->decode.mean_step_seconds, 0.015);
  EXPECT_DOUBLE_EQ(s->decode.mean_batch, 30);
  EXPECT_DOUBLE_EQ(s->decode.requests_running, 30);
  EXPECT_DOUBLE_EQ(s->decode.kv_usage_ratio, 0.6);
}

TEST_F(ScrapeMetricsSourceTest, WorkerCountsOnceWarmAtTheStartOfTheInterval) {
  query_.warmup = seconds(15);
  const WallTime t0 = clock_.WallNow();
  query_.pods = {r0_.Pod(true, t0 - seconds(3600)), p1_.Pod(true, t0)};
  auto step = [&](double prefill_tokens) {
    router0_.ok += 10;
    prefill1_.prefill_tokens += prefill_tokens;
    ServeAll();
    return source_.Read(query_);
  };
  ASSERT_TRUE(step(0).status().IsNotFound());  // t0: first sample
  for (int t : {10, 20}) {  // windows [t0, t0+10], [t0+10, t0+20]: ready for < 15 s at the start
    clock_.Advance(seconds(10));
    auto s = step(1000);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    EXPECT_EQ(s->prefill.warm_workers, 0) << "t0+" << t;
    EXPECT_FALSE(HasValue(s->prefill.tokens_per_second)) << "t0+" << t;
  }
  clock_.Advance(seconds(10));  // window [t0+20, t0+30]: warm since t0+15
  auto s = step(1000);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->prefill.warm_workers, 1);
  EXPECT_DOUBLE_EQ(s->prefill.tokens_per_second, 100);
}

TEST_F(ScrapeMetricsSourceTest, CounterResetCountsTheNewValue) {
  query_.pods = {r0_.Pod(true, WallTime())};
  router0_.ok = 1000;
  ServeAll();
  ASSERT_TRUE(source_.Read(query_).status().IsNotFound());
  clock_.Advance(seconds(10));
  router0_.ok = 40;  // the router restarted and served 40 since
  ServeAll();
  auto s = source_.Read(query_);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_DOUBLE_EQ(s->request_rate, 4);
}

TEST_F(ScrapeMetricsSourceTest, FailingPodsAreSkippedButAllRoutersFailingIsUnavailable) {
  UseAllPods();
  ServeAll();
  ASSERT_TRUE(source_.Read(query_).status().IsNotFound());
  clock_.Advance(seconds(10));
  router0_.ok = 20;
  decode0_.decode_tokens = 100;
  ServeAll();
  r1_.Stop();
  d0_.Stop();
  auto s = source_.Read(query_);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_DOUBLE_EQ(s->request_rate, 2);
  EXPECT_EQ(s->decode.warm_workers, 0);
  EXPECT_FALSE(HasValue(s->decode.tokens_per_second));
  EXPECT_EQ(s->prefill.warm_workers, 1);

  r0_.Stop();
  clock_.Advance(seconds(10));
  s = source_.Read(query_);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(s.status().message().find("llama-router-"), std::string::npos) << s.status().message();
  EXPECT_NE(s.status().message().find("connection refused"), std::string::npos)
      << s.status().message();
}

TEST_F(ScrapeMetricsSourceTest, NoRouterOrNoRouterMetricsIsNotFound) {
  query_.pods = {p0_.Pod(true, WallTime())};
  ServeAll();
  auto s = source_.Read(query_);
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(s.status().IsNotFound()) << s.status().ToString();
  EXPECT_NE(s.status().message().find("no router pod"), std::string::npos);

  query_.pods = {r0_.Pod(true, WallTime())};
  r0_.Serve("# nothing of pdpool here\nprocess_open_fds 3\n");
  s = source_.Read(query_);
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(s.status().IsNotFound()) << s.status().ToString();
  EXPECT_NE(s.status().message().find("pdpool_router_requests_total"), std::string::npos);
}

TEST_F(ScrapeMetricsSourceTest, ForgetStartsThePoolOver) {
  query_.pods = {r0_.Pod(true, WallTime())};
  ServeAll();
  ASSERT_TRUE(source_.Read(query_).status().IsNotFound());
  clock_.Advance(seconds(10));
  ASSERT_TRUE(source_.Read(query_).ok());
  source_.Forget("serving", "llama");
  clock_.Advance(seconds(10));
  EXPECT_TRUE(source_.Read(query_).status().IsNotFound());
}

}  // namespace
}  // namespace pdpool::controller::planner
