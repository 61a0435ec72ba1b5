// Tests of the router's worker selection and discovery without HTTP: polled info is fed in
// directly and health backoff runs on a FakeClock. Discovery: static flag lists, which pods
// become workers, and the pod informer keeping the pool's set current.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "agent/router/worker_discovery.h"
#include "agent/router/worker_pool.h"
#include "common/kube/resource.h"
#include "tests/fakes/fake_kube_client.h"

namespace pdpool::agent {
namespace {

using std::chrono::milliseconds;

constexpr auto kWait = std::chrono::seconds(10);

WorkerInfoReply Info(WorkerRole role, int64_t outstanding = 0, int64_t free_blocks = 1000) {
  WorkerInfoReply i;
  i.role = role;
  i.ready = true;
  i.block_size = 16;
  i.kv_blocks_total = 1000;
  i.kv_blocks_free = free_blocks;
  i.outstanding_prefill_tokens = outstanding;
  i.max_model_len = 2048;
  return i;
}

class WorkerPoolTest : public ::testing::Test {
 protected:
  WorkerPoolTest() : pool_(&clock_, Options()) {}
  static WorkerPoolOptions Options() {
    WorkerPoolOptions o;
    o.failure_backoff = milliseconds(500);
    o.max_failure_backoff = milliseconds(4000);
    return o;
  }
  RouterWorker* W(const std::string& address) {
    for (const auto& w : pool_.Workers())
      if (w->address() == address) return w.get();
    ADD_FAILURE() << "no worker " << address;
    return nullptr;
  }
  void Feed(const std::string& address, const WorkerInfoReply& info) {
    RouterWorker* w = W(address);
    pool_.UpdateInfo(w, info, w->prefill_tokens().load(), w->reserved_tokens().load());
  }
  std::string PickAddress(WorkerRole role, const std::vector<const RouterWorker*>& exclude = {}) {
    auto w = pool_.Pick(role, exclude);
    return w ? w->address() : "";
  }

  FakeClock clock_;
  WorkerPool pool_;
};

TEST_F(WorkerPoolTest, UnpolledWorkersAreNotUsable) {
  pool_.SetWorkers({{"p:1", WorkerRole::kPrefill}, {"d:1", WorkerRole::kDecode}});
  EXPECT_EQ(PickAddress(WorkerRole::kPrefill), "");
  EXPECT_FALSE(pool_.Ready());
  Feed("p:1", Info(WorkerRole::kPrefill));
  EXPECT_FALSE(pool_.Ready());  // a prefill worker alone cannot serve
  Feed("d:1", Info(WorkerRole::kDecode));
  EXPECT_EQ(pool_.CurrentMode(), WorkerPool::Mode::kDisaggregated);
  EXPECT_EQ(PickAddress(WorkerRole::kPrefill), "p:1");
  EXPECT_EQ(PickAddress(WorkerRole::kDecode), "d:1");
  EXPECT_EQ(PickAddress(WorkerRole::kBoth), "");
}

TEST_F(WorkerPoolTest, PrefillPicksFewestOutstandingTokensCountingTheRoutersOwn) {
  pool_.SetWorkers({{"p:1", WorkerRole::kPrefill}, {"p:2", WorkerRole::kPrefill}});
  Feed("p:1", Info(WorkerRole::kPrefill, /*outstanding=*/100));
  Feed("p:2", Info(WorkerRole::kPrefill, /*outstanding=*/10));
  EXPECT_EQ(PickAddress(WorkerRole::kPrefill), "p:2");
  // The router sends 200 prompt tokens to p:2 before the next poll.
  auto p2 = pool_.Pick(WorkerRole::kPrefill);
  ScopedLoad load(p2, &p2->prefill_tokens(), 200);
  EXPECT_EQ(PickAddress(WorkerRole::kPrefill), "p:1");
  load.Reset();
  EXPECT_EQ(PickAddress(WorkerRole::kPrefill), "p:2");
  // A poll taken while the load was held already includes it: no double counting.
  ScopedLoad again(p2, &p2->prefill_tokens(), 200);
  Feed("p:2", Info(WorkerRole::kPrefill, /*outstanding=*/210));
  EXPECT_EQ(PickAddress(WorkerRole::kPrefill), "p:1");
  again.Reset();  // finished after the poll: 210 - 200 = 10 < 100
  EXPECT_EQ(PickAddress(WorkerRole::kPrefill), "p:2");
}

TEST_F(WorkerPoolTest, DecodePicksLowestKvUsageCountingReservations) {
  pool_.SetWorkers({{"d:1", WorkerRole::kDecode}, {"d:2", WorkerRole::kDecode}});
  Feed("d:1", Info(WorkerRole::kDecode, 0, /*free=*/500));  // 50 % used
  Feed("d:2", Info(WorkerRole::kDecode, 0, /*free=*/600));  // 40 % used
  EXPECT_EQ(PickAddress(WorkerRole::kDecode), "d:2");
  auto d2 = pool_.Pick(WorkerRole::kDecode);
  // 3200 tokens = 200 blocks of 16: d:2 would be at 60 %.
  ScopedLoad load(d2, &d2->reserved_tokens(), 3200);
  EXPECT_EQ(PickAddress(WorkerRole::kDecode), "d:1");
}

TEST_F(WorkerPoolTest, TiesGoRoundRobin) {
  pool_.SetWorkers(
      {{"d:1", WorkerRole::kDecode}, {"d:2", WorkerRole::kDecode}, {"d:3", WorkerRole::kDecode}});
  for (auto a : {"d:1", "d:2", "d:3"}) Feed(a, Info(WorkerRole::kDecode));
  std::map<std::string, int> picks;
  for (int i = 0; i < 30; ++i) ++picks[PickAddress(WorkerRole::kDecode)];
  EXPECT_EQ(picks["d:1"], 10);
  EXPECT_EQ(picks["d:2"], 10);
  EXPECT_EQ(picks["d:3"], 10);
}

TEST_F(WorkerPoolTest, ExcludedWorkersAreSkipped) {
  pool_.SetWorkers({{"p:1", WorkerRole::kPrefill}, {"p:2", WorkerRole::kPrefill}});
  Feed("p:1", Info(WorkerRole::kPrefill, 0));
  Feed("p:2", Info(WorkerRole::kPrefill, 50));
  EXPECT_EQ(PickAddress(WorkerRole::kPrefill, {W("p:1")}), "p:2");
  EXPECT_EQ(PickAddress(WorkerRole::kPrefill, {W("p:1"), W("p:2")}), "");
}

TEST_F(WorkerPoolTest, FailingWorkerSkippedForADoublingBackoff) {
  pool_.SetWorkers({{"p:1", WorkerRole::kPrefill}, {"p:2", WorkerRole::kPrefill}});
  Feed("p:1", Info(WorkerRole::kPrefill, 0));
  Feed("p:2", Info(WorkerRole::kPrefill, 50));
  pool_.ReportFailure(W("p:1"), Status::Unavailable("connection refused"));
  EXPECT_EQ(PickAddress(WorkerRole::kPrefill), "p:2");
  clock_.Advance(milliseconds(499));
  EXPECT_EQ(PickAddress(WorkerRole::kPrefill), "p:2");
  clock_.Advance(milliseconds(1));
  EXPECT_EQ(PickAddress(WorkerRole::kPrefill), "p:1");
  pool_.ReportFailure(W("p:1"), Status::Unavailable("again"));  // second in a row: 1 s
  clock_.Advance(milliseconds(999));
  EXPECT_EQ(PickAddress(WorkerRole::kPrefill), "p:2");
  clock_.Advance(milliseconds(1));
  EXPECT_EQ(PickAddress(WorkerRole::kPrefill), "p:1");
  pool_.ReportSuccess(W("p:1"));
  pool_.ReportFailure(W("p:1"), Status::Unavailable("once more"));  // reset: 500 ms
  clock_.Advance(milliseconds(500));
  EXPECT_EQ(PickAddress(WorkerRole::kPrefill), "p:1");
  auto states = pool_.Describe();
  ASSERT_EQ(states.size(), 2u);

  // A request the worker rejects (4xx) says nothing about its health.
  pool_.ReportFailure(W("p:1"), Status::InvalidArgument("bad token id"));
  EXPECT_EQ(PickAddress(WorkerRole::kPrefill), "p:1");
}

TEST_F(WorkerPoolTest, FailedPollTakesWorkerOutAndStateShowsIt) {
  pool_.SetWorkers({{"d:1", WorkerRole::kDecode}});
  Feed("d:1", Info(WorkerRole::kDecode));
  RouterWorker* w = W("d:1");
  pool_.UpdateInfo(w, Status::Unavailable("timeout"), 0, 0);
  EXPECT_EQ(PickAddress(WorkerRole::kDecode), "");
  EXPECT_STREQ(pool_.Describe()[0].state, "unhealthy");
  clock_.Advance(milliseconds(500));
  EXPECT_STREQ(pool_.Describe()[0].state, "ready");
}

TEST_F(WorkerPoolTest, NotReadyAndDrainingWorkersGetNoRequests) {
  pool_.SetWorkers({{"d:1", WorkerRole::kDecode}, {"d:2", WorkerRole::kDecode}});
  auto draining = Info(WorkerRole::kDecode, 0, 1000);
  draining.draining = true;
  auto loading = Info(WorkerRole::kDecode, 0, 1000);
  loading.ready = false;
  Feed("d:1", draining);
  Feed("d:2", loading);
  EXPECT_EQ(PickAddress(WorkerRole::kDecode), "");
  EXPECT_STREQ(pool_.Describe()[0].state, "not_ready");
  Feed("d:2", Info(WorkerRole::kDecode));
  EXPECT_EQ(PickAddress(WorkerRole::kDecode), "d:2");
}

TEST_F(WorkerPoolTest, PolledRoleWinsOverDiscoveredRole) {
  pool_.SetWorkers({{"w:1", WorkerRole::kPrefill}});
  Feed("w:1", Info(WorkerRole::kDecode));  // switched role in place
  EXPECT_EQ(PickAddress(WorkerRole::kPrefill), "");
  EXPECT_EQ(PickAddress(WorkerRole::kDecode), "w:1");
}

TEST_F(WorkerPoolTest, AggregatedModeAndMaxModelLen) {
  pool_.SetWorkers({{"b:1", WorkerRole::kBoth}, {"b:2", WorkerRole::kBoth}});
  EXPECT_EQ(pool_.MaxModelLen(), 0);
  auto a = Info(WorkerRole::kBoth);
  a.max_model_len = 4096;
  auto b = Info(WorkerRole::kBoth);
  b.max_model_len = 1024;
  Feed("b:1", a);
  Feed("b:2", b);
  EXPECT_EQ(pool_.CurrentMode(), WorkerPool::Mode::kAggregated);
  EXPECT_EQ(pool_.MaxModelLen(), 1024);
}

TEST_F(WorkerPoolTest, SetWorkersKeepsStateOfWorkersThatStay) {
  pool_.SetWorkers({{"d:1", WorkerRole::kDecode}, {"d:2", WorkerRole::kDecode}});
  Feed("d:1", Info(WorkerRole::kDecode));
  auto held = pool_.Pick(WorkerRole::kDecode);
  ASSERT_NE(held, nullptr);
  pool_.SetWorkers({{"d:1", WorkerRole::kDecode}, {"d:3", WorkerRole::kDecode}});
  EXPECT_EQ(PickAddress(WorkerRole::kDecode), "d:1");  // still polled
  EXPECT_EQ(pool_.Workers().size(), 2u);
  pool_.SetWorkers({});
  EXPECT_EQ(PickAddress(WorkerRole::kDecode), "");
  EXPECT_EQ(held->address(), "d:1");  // a request holding a removed worker keeps it
}

TEST(RouterDiscoveryTest, StaticListsParseAndValidate) {
  auto specs = ParseStaticWorkers("127.0.0.1:8001, 127.0.0.1:8002", "[::1]:9000", "");
  ASSERT_TRUE(specs.ok()) << specs.status().ToString();
  ASSERT_EQ(specs->size(), 3u);
  EXPECT_EQ((*specs)[0], (WorkerSpec{"127.0.0.1:8001", WorkerRole::kPrefill}));
  EXPECT_EQ((*specs)[1], (WorkerSpec{"127.0.0.1:8002", WorkerRole::kPrefill}));
  EXPECT_EQ((*specs)[2], (WorkerSpec{"[::1]:9000", WorkerRole::kDecode}));

  auto bad_port = ParseStaticWorkers("host:99999", "", "");
  ASSERT_FALSE(bad_port.ok());
  EXPECT_NE(bad_port.status().message().find("--prefill"), std::string::npos);
  EXPECT_NE(bad_port.status().message().find("host:99999"), std::string::npos);
  EXPECT_FALSE(ParseStaticWorkers("", "", "nohostport").ok());
  auto dup = ParseStaticWorkers("a:1", "a:1", "");
  ASSERT_FALSE(dup.ok());
  EXPECT_NE(dup.status().message().find("more than once"), std::string::npos);
}

Json WorkerPod(const std::string& name, const std::string& role, const std::string& ip, bool ready,
               const std::string& pool = "p1") {
  return {{"apiVersion", "v1"},
          {"kind", "Pod"},
          {"metadata",
           {{"name", name},
            {"namespace", "ns"},
            {"labels", {{"pdpool.dev/pool", pool}, {"pdpool.dev/role", role}}}}},
          {"status",
           {{"phase", "Running"},
            {"podIP", ip},
            {"conditions", {{{"type", "Ready"}, {"status", ready ? "True" : "False"}}}}}}};
}

TEST(RouterDiscoveryTest, WhichPodsAreWorkers) {
  auto spec = WorkerSpecFromPod(WorkerPod("a", "prefill", "10.0.0.1", true), 8000);
  ASSERT_TRUE(spec.has_value());
  EXPECT_EQ(*spec, (WorkerSpec{"10.0.0.1:8000", WorkerRole::kPrefill}));
  EXPECT_EQ(WorkerSpecFromPod(WorkerPod("a", "both", "fd00::1", true), 9)->address, "[fd00::1]:9");
  EXPECT_FALSE(WorkerSpecFromPod(WorkerPod("a", "prefill", "10.0.0.1", false), 8000));
  EXPECT_FALSE(WorkerSpecFromPod(WorkerPod("a", "router", "10.0.0.1", true), 8000));
  EXPECT_FALSE(WorkerSpecFromPod(WorkerPod("a", "decode", "", true), 8000));
  Json pending = WorkerPod("a", "decode", "10.0.0.1", true);
  pending["status"]["phase"] = "Pending";
  EXPECT_FALSE(WorkerSpecFromPod(pending, 8000));
  Json deleting = WorkerPod("a", "decode", "10.0.0.1", true);
  deleting["metadata"]["deletionTimestamp"] = "2026-11-27T00:00:00Z";
  EXPECT_FALSE(WorkerSpecFromPod(deleting, 8000));
}

bool WaitForAddresses(const WorkerPool& pool, const std::set<std::string>& want) {
  auto deadline = std::chrono::steady_clock::now() + kWait;
  while (std::chrono::steady_clock::now() < deadline) {
    std::set<std::string> have;
    for (const auto& w : pool.Workers()) have.insert(w->address());
    if (have == want) return true;
    std::this_thread::sleep_for(milliseconds(1));  // polling a condition, bounded by kWait
  }
  return false;
}

TEST(RouterDiscoveryTest, InformerKeepsThePoolCurrent) {
  kube::FakeKubeClient kube;
  ASSERT_TRUE(kube.Upsert(kube::kPods, WorkerPod("pre-0", "prefill", "10.0.0.1", true)).ok());
  ASSERT_TRUE(kube.Upsert(kube::kPods, WorkerPod("dec-0", "decode", "10.0.0.2", false)).ok());
  ASSERT_TRUE(kube.Upsert(kube::kPods, WorkerPod("other", "decode", "10.0.0.9", true, "p2")).ok());
  FakeClock clock;
  WorkerPool pool(&clock, {});
  KubeWorkerDiscovery discovery(&kube, {"ns", "p1", 8000}, &pool);
  discovery.Start();
  ASSERT_TRUE(discovery.WaitForSync(kWait));
  EXPECT_TRUE(WaitForAddresses(pool, {"10.0.0.1:8000"}));

  // Becomes ready: added.
  ASSERT_TRUE(kube.Upsert(kube::kPods, WorkerPod("dec-0", "decode", "10.0.0.2", true)).ok());
  EXPECT_TRUE(WaitForAddresses(pool, {"10.0.0.1:8000", "10.0.0.2:8000"}));
  // Becomes unready: removed.
  ASSERT_TRUE(kube.Upsert(kube::kPods, WorkerPod("pre-0", "prefill", "10.0.0.1", false)).ok());
  EXPECT_TRUE(WaitForAddresses(pool, {"10.0.0.2:8000"}));
  // Goes away: removed.
  ASSERT_TRUE(kube.Delete(kube::kPods, "ns", "dec-0").ok());
  EXPECT_TRUE(WaitForAddresses(pool, {}));
  discovery.Stop();
}

}  // namespace
}  // namespace pdpool::agent
