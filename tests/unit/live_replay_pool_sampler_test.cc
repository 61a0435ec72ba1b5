// The pool's state as the live replay samples it (bench/live_replay/pool_sampler.h): workers
// ready/desired from the InferencePool's status, and the GPUs its pods hold — the GPU-seconds
// of the report's GPU-hours and goodput per GPU.
#include <gtest/gtest.h>

#include "bench/live_replay/pool_sampler.h"
#include "tests/fakes/fake_kube_client.h"

namespace pdpool::bench::live_replay {
namespace {

Json Pod(const std::string& name, const std::string& pool, const std::string& node,
         const std::string& phase, Json resources) {
  Json pod = {
      {"apiVersion", "v1"},
      {"kind", "Pod"},
      {"metadata", {{"name", name}, {"namespace", "ns"}, {"labels", {{"pdpool.dev/pool", pool}}}}},
      {"spec", {{"containers", Json::array({{{"name", "w"}, {"resources", resources}}})}}},
      {"status", {{"phase", phase}}}};
  if (!node.empty()) pod["spec"]["nodeName"] = node;
  return pod;
}

Json Gpus(int n) { return {{"requests", {{"nvidia.com/gpu", std::to_string(n)}}}}; }

Json Pool(int p_ready, int p_desired, int d_ready, int d_desired) {
  return {{"apiVersion", "pdpool.dev/v1alpha1"},
          {"kind", "InferencePool"},
          {"metadata", {{"name", "rack"}, {"namespace", "ns"}}},
          {"spec", {{"model", {{"name", "m"}}}}},
          {"status",
           {{"prefill", {{"readyReplicas", p_ready}, {"desiredReplicas", p_desired}}},
            {"decode", {{"readyReplicas", d_ready}, {"desiredReplicas", d_desired}}}}}};
}

TEST(LiveReplayPoolSamplerTest, GpusHeldCountBoundPodsUntilTheyEnd) {
  Json terminating = Pod("terminating", "rack", "n1", "Running", Gpus(4));
  terminating["metadata"]["deletionTimestamp"] = "2026-11-27T10:00:00Z";
  const Json list = {
      {"items", Json::array({
                    Pod("running", "rack", "n1", "Running", Gpus(2)),
                    Pod("starting", "rack", "n1", "Pending", Gpus(1)),  // bound, not ready
                    Pod("unbound", "rack", "", "Pending", Gpus(8)),     // holds nothing yet
                    Pod("done", "rack", "n1", "Succeeded", Gpus(8)),
                    Pod("crashed", "rack", "n1", "Failed", Gpus(8)),
                    terminating,  // holds its GPUs until it is gone
                    Pod("limits", "rack", "n2", "Running",
                        {{"limits", {{"nvidia.com/gpu", 3}}}}),  // limits when no requests
                    Pod("router", "rack", "n2", "Running", Json::object()),
                })}};
  EXPECT_EQ(GpusHeld(list), 2 + 1 + 4 + 3);
  EXPECT_EQ(GpusHeld(Json::object()), 0);
}

TEST(LiveReplayPoolSamplerTest, SampleReadsStatusAndThePoolsOwnPods) {
  kube::FakeKubeClient client;
  ASSERT_TRUE(client.Upsert(kube::kInferencePools, Pool(1, 2, 3, 3)).ok());
  ASSERT_TRUE(client.Upsert(kube::kPods, Pod("p0", "rack", "n1", "Running", Gpus(2))).ok());
  ASSERT_TRUE(client.Upsert(kube::kPods, Pod("d0", "rack", "n1", "Running", Gpus(1))).ok());
  ASSERT_TRUE(client.Upsert(kube::kPods, Pod("other", "other", "n1", "Running", Gpus(8))).ok());
  FakeClock clock;
  PoolSampler sampler(&client, "ns", "rack", &clock);

  ASSERT_TRUE(sampler.SampleOnce(0).ok());
  auto s = sampler.Latest();
  ASSERT_TRUE(s);
  EXPECT_EQ(s->prefill_ready, 1);
  EXPECT_EQ(s->prefill_desired, 2);
  EXPECT_EQ(s->decode_ready, 3);
  EXPECT_EQ(s->decode_desired, 3);
  EXPECT_EQ(s->gpus, 3);  // not the other pool's 8

  // A worker more from t = 10 s: 3 GPUs for 10 s, then 5 for 10 s.
  ASSERT_TRUE(client.Upsert(kube::kPods, Pod("p1", "rack", "n2", "Running", Gpus(2))).ok());
  ASSERT_TRUE(sampler.SampleOnce(10).ok());
  EXPECT_DOUBLE_EQ(sampler.GpuSeconds(20), 3 * 10 + 5 * 10);
  EXPECT_EQ(sampler.PeakGpus(), 5);
  EXPECT_EQ(sampler.name(), "ns/rack");
}

TEST(LiveReplayPoolSamplerTest, FailedSampleKeepsThePreviousOneAndNamesThePool) {
  kube::FakeKubeClient client;
  FakeClock clock;
  PoolSampler sampler(&client, "ns", "rack", &clock);
  auto missing = sampler.Fetch();
  ASSERT_FALSE(missing.ok());
  EXPECT_TRUE(missing.status().IsNotFound());
  EXPECT_NE(missing.status().message().find("InferencePool ns/rack"), std::string::npos);

  ASSERT_TRUE(client.Upsert(kube::kInferencePools, Pool(1, 1, 1, 1)).ok());
  ASSERT_TRUE(client.Upsert(kube::kPods, Pod("p0", "rack", "n1", "Running", Gpus(2))).ok());
  ASSERT_TRUE(sampler.SampleOnce(0).ok());
  client.FailNext("List", Status::Unavailable("apiserver down"));
  Status failed = sampler.SampleOnce(1);
  EXPECT_FALSE(failed.ok());
  EXPECT_NE(sampler.last_error().find("apiserver down"), std::string::npos);
  EXPECT_EQ(sampler.failures(), 1);
  ASSERT_TRUE(sampler.Latest());
  EXPECT_EQ(sampler.Latest()->gpus, 2);
  EXPECT_DOUBLE_EQ(sampler.GpuSeconds(4), 8);  // the last known count holds
}

}  // namespace
}  // namespace pdpool::bench::live_replay
