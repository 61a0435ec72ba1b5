// A worker's role switch in place, the parts testable without processes: the worker's metrics
// grow the new role's series while the old role's counters keep their values (and its gauges
// and capacity go, so sums by role count the worker once); the router's pool follows the role
// a worker's info reports — no new work while it switches, the old role's in-flight request
// keeps its worker, the new role's work goes to it — whatever discovery still says.
#include <gtest/gtest.h>

#include <string>

#include "agent/router/worker_client.h"
#include "agent/router/worker_pool.h"
#include "agent/worker/worker_metrics.h"
#include "agent/worker/worker_protocol.h"
#include "common/admin_server.h"
#include "common/json.h"

namespace pdpool::agent {
namespace {

// Value of one exposition line `series value`, or -1 when absent.
double Value(const std::string& text, const std::string& series) {
  size_t at = text.find("\n" + series + " ");
  if (at == std::string::npos) return -1;
  return std::stod(text.substr(at + series.size() + 2));
}

TEST(WorkerMetricsRoleTest, NewRoleSeriesAppearAndOldCountersKeepTheirValues) {
  WorkerMetrics m("decode");
  EngineStats stats;
  stats.kv_blocks_total = 512;
  stats.kv_blocks_free = 500;
  stats.running = 2;
  m.SetEngineStats(stats, true);
  StepReport step;
  step.decode_tokens = 7;
  step.seconds = 0.01;
  m.ObserveStep(step);
  m.CountRequest("decode", "ok");

  m.SetRole("prefill");
  EXPECT_EQ(m.role(), "prefill");
  StepReport prefill;
  prefill.prefill_tokens = 40;
  prefill.seconds = 0.02;
  m.ObserveStep(prefill);
  m.CountRequest("prefill", "ok");
  stats.running = 1;
  m.SetEngineStats(stats, true);

  const std::string text = SerializeMetrics(*m.registry());
  // Counters and histograms of the old role: still there, unchanged.
  EXPECT_EQ(Value(text, "pdpool_worker_decode_tokens_total{role=\"decode\"}"), 7);
  EXPECT_EQ(Value(text, "pdpool_worker_prefill_tokens_total{role=\"decode\"}"), 0);
  EXPECT_EQ(
      Value(text, "pdpool_worker_requests_total{kind=\"decode\",result=\"ok\",role=\"decode\"}"),
      1);
  EXPECT_EQ(Value(text, "pdpool_worker_step_seconds_count{phase=\"decode\",role=\"decode\"}"), 1);
  // The new role's series.
  EXPECT_EQ(Value(text, "pdpool_worker_prefill_tokens_total{role=\"prefill\"}"), 40);
  EXPECT_EQ(Value(text, "pdpool_worker_decode_tokens_total{role=\"prefill\"}"), 0);
  EXPECT_EQ(
      Value(text, "pdpool_worker_requests_total{kind=\"prefill\",result=\"ok\",role=\"prefill\"}"),
      1);
  EXPECT_EQ(Value(text, "pdpool_worker_requests_running{role=\"prefill\"}"), 1);
  EXPECT_EQ(Value(text, "pdpool_worker_ready{role=\"prefill\"}"), 1);
  EXPECT_EQ(Value(text, "pdpool_worker_kv_blocks_total{role=\"prefill\"}"), 512);
  EXPECT_GE(
      Value(text, "pdpool_worker_kv_transfer_bytes_total{direction=\"send\",role=\"prefill\"}"), 0);
  // Gauges and capacity of the old role are gone: one worker, counted once.
  EXPECT_EQ(Value(text, "pdpool_worker_requests_running{role=\"decode\"}"), -1);
  EXPECT_EQ(Value(text, "pdpool_worker_ready{role=\"decode\"}"), -1);
  EXPECT_EQ(Value(text, "pdpool_worker_kv_blocks_total{role=\"decode\"}"), -1);

  // And back: the decode counters go on from where they were.
  m.SetRole("decode");
  m.ObserveStep(step);
  m.SetEngineStats(stats, true);
  const std::string back = SerializeMetrics(*m.registry());
  EXPECT_EQ(Value(back, "pdpool_worker_decode_tokens_total{role=\"decode\"}"), 14);
  EXPECT_EQ(Value(back, "pdpool_worker_prefill_tokens_total{role=\"prefill\"}"), 40);
  EXPECT_EQ(Value(back, "pdpool_worker_kv_blocks_total{role=\"decode\"}"), 512);
  EXPECT_EQ(Value(back, "pdpool_worker_kv_blocks_total{role=\"prefill\"}"), -1);
  EXPECT_EQ(Value(back, "pdpool_worker_requests_running{role=\"decode\"}"), 1);
}

TEST(WorkerInfoRoleTest, ParsesTheSwitchInProgress) {
  auto idle =
      ParseWorkerInfo(Json{{"role", "decode"}, {"ready", true}, {"role_switching_to", nullptr}});
  ASSERT_TRUE(idle.ok());
  EXPECT_FALSE(idle->switching_role);
  auto switching = ParseWorkerInfo(
      Json{{"role", "decode"}, {"ready", true}, {protocol::kRoleSwitchingToField, "prefill"}});
  ASSERT_TRUE(switching.ok());
  EXPECT_TRUE(switching->switching_role);
  EXPECT_EQ(switching->role, WorkerRole::kDecode);
}

WorkerInfoReply Info(WorkerRole role, bool switching = false) {
  WorkerInfoReply i;
  i.role = role;
  i.ready = true;
  i.switching_role = switching;
  i.kv_blocks_total = 1000;
  i.kv_blocks_free = 1000;
  i.max_model_len = 2048;
  return i;
}

TEST(WorkerPoolRoleTest, PoolFollowsTheRoleTheWorkerReports) {
  FakeClock clock;
  WorkerPool pool(&clock, WorkerPoolOptions{});
  // Static lists (or a pod label not yet changed) still say decode for d:2.
  pool.SetWorkers(
      {{"p:1", WorkerRole::kPrefill}, {"d:1", WorkerRole::kDecode}, {"d:2", WorkerRole::kDecode}});
  auto feed = [&](const std::string& address, const WorkerInfoReply& info) {
    for (const auto& w : pool.Workers()) {
      if (w->address() == address) pool.UpdateInfo(w.get(), info, 0, 0);
    }
  };
  feed("p:1", Info(WorkerRole::kPrefill));
  feed("d:1", Info(WorkerRole::kDecode));
  feed("d:2", Info(WorkerRole::kDecode));
  // A request in flight on d:2 holds it.
  std::shared_ptr<RouterWorker> in_flight;
  for (int i = 0; i < 4 && (!in_flight || in_flight->address() != "d:2"); ++i) {
    in_flight = pool.Pick(WorkerRole::kDecode);
  }
  ASSERT_EQ(in_flight->address(), "d:2");

  // d:2 drains for the switch: no new work of either role.
  feed("d:2", Info(WorkerRole::kDecode, /*switching=*/true));
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(pool.Pick(WorkerRole::kDecode)->address(), "d:1");
    EXPECT_EQ(pool.Pick(WorkerRole::kPrefill)->address(), "p:1");
  }
  // Switched: prefill work goes to it too, decode work no longer does. (Picks alternate
  // between the roles, as requests make them: the tie between two idle prefill workers must
  // still go round.)
  feed("d:2", Info(WorkerRole::kPrefill));
  bool prefill_on_d2 = false;
  for (int i = 0; i < 6; ++i) {
    prefill_on_d2 = prefill_on_d2 || pool.Pick(WorkerRole::kPrefill)->address() == "d:2";
    EXPECT_EQ(pool.Pick(WorkerRole::kDecode)->address(), "d:1");
  }
  EXPECT_TRUE(prefill_on_d2);
  EXPECT_EQ(pool.CurrentMode(), WorkerPool::Mode::kDisaggregated);
  // Discovery catching up (the relabelled pod) changes nothing, and keeps the worker object
  // the in-flight request holds.
  pool.SetWorkers(
      {{"p:1", WorkerRole::kPrefill}, {"d:1", WorkerRole::kDecode}, {"d:2", WorkerRole::kPrefill}});
  bool same_object = false;
  for (const auto& w : pool.Workers()) same_object = same_object || w == in_flight;
  EXPECT_TRUE(same_object);
  for (const auto& s : pool.Describe()) {
    if (s.address == "d:2") {
      EXPECT_EQ(s.role, WorkerRole::kPrefill);
      EXPECT_STREQ(s.state, "ready");
    }
  }
}

}  // namespace
}  // namespace pdpool::agent
