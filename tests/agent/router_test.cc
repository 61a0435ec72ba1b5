// The router in front of real CPU workers on loopback: disaggregated serving through the router
// gives exactly the completions an aggregated worker gives; a prefill worker killed mid-transfer
// is retried on another and the decode worker leaks no KV; /metrics passes promtool and counts
// what clients saw. (The official `openai` client drives the same setup in tests/e2e.)
#include <gtest/gtest.h>

#include <fstream>
#include <future>

#include "agent/worker/worker_protocol.h"
#include "tests/agent/agent_env.h"

namespace pdpool::testing {
namespace {

namespace protocol = agent::protocol;

Json Completion(const std::string& prompt, int max_tokens, double temperature, int seed) {
  return {{"model", "tiny"},
          {"prompt", prompt},
          {"max_tokens", max_tokens},
          {"temperature", temperature},
          {"seed", seed},
          {"ignore_eos", true}};
}

TEST(RouterTest, DisaggregatedCompletionsEqualAggregatedOnes) {
  AgentEnv env;
  Process both = env.StartWorker("both");
  Process prefill = env.StartWorker("prefill");
  Process decode = env.StartWorker("decode");
  Process aggregated =
      env.StartRouter({"--served-model-name", "tiny", "--workers", both.address()});
  Process disaggregated = env.StartRouter({"--served-model-name", "tiny", "--prefill",
                                           prefill.address(), "--decode", decode.address()});
  for (double temperature : {0.0, 0.8}) {
    for (const std::string prompt :
         {"Hello", "The KV cache moves from prefill to decode over tcp."}) {
      const Json request = Completion(prompt, 20, temperature, 3);
      HttpResult a = env.Post(aggregated.port, "/v1/completions", request, false);
      HttpResult d = env.Post(disaggregated.port, "/v1/completions", request, false);
      ASSERT_EQ(a.status, 200) << a.body;
      ASSERT_EQ(d.status, 200) << d.body;
      EXPECT_EQ(a.json["choices"][0]["text"], d.json["choices"][0]["text"]) << prompt;
      EXPECT_EQ(d.json["usage"]["completion_tokens"], 20);
      EXPECT_EQ(a.json["usage"], d.json["usage"]);
    }
  }
  EXPECT_TRUE(AgentEnv::WaitFor([&] { return env.KvIdle(decode); }));
}

TEST(RouterTest, PrefillWorkerKilledMidTransferIsRetriedAndNothingLeaks) {
  AgentEnv env;
  // Both prefill workers push slowly (16 blocks × 100 ms), so the transfer is surely in flight
  // when its worker dies, whichever one the router picked.
  Process p1 = env.StartWorker("prefill", {"--fault-kv-block-delay-ms", "100"});
  Process p2 = env.StartWorker("prefill", {"--fault-kv-block-delay-ms", "100"});
  Process decode = env.StartWorker("decode");
  Process router =
      env.StartRouter({"--served-model-name", "tiny", "--prefill",
                       p1.address() + "," + p2.address(), "--decode", decode.address()});
  const std::string prompt(250, 'x');  // BOS + 250 byte tokens: 16 KV blocks
  auto response = std::async(std::launch::async, [&] {
    return env.Post(router.port, "/v1/completions", Completion(prompt, 8, 0, 0), false);
  });
  Process* victim = nullptr;
  ASSERT_TRUE(AgentEnv::WaitFor([&] {
    for (Process* p : {&p1, &p2}) {
      if (env.Get(p->port, protocol::kInfoPath).json.value("kv_sends_in_progress", 0) == 1) {
        victim = p;
        return true;
      }
    }
    return false;
  })) << "no KV transfer started";
  victim->child->Kill();
  HttpResult r = response.get();
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.json["usage"]["completion_tokens"], 8);
  EXPECT_EQ(r.json["usage"]["prompt_tokens"], 251);  // BOS + 250 bytes
  EXPECT_TRUE(AgentEnv::WaitFor([&] { return env.KvIdle(decode); }))
      << env.Get(decode.port, protocol::kInfoPath).body;
  const std::string metrics = env.Get(router.port, "/metrics", false).body;
  EXPECT_GE(AgentEnv::MetricSum(metrics, "pdpool_router_prefill_retries_total"), 1);
}

TEST(RouterTest, MetricsPassPromtoolAndCountRequests) {
  AgentEnv env;
  Process prefill = env.StartWorker("prefill");
  Process decode = env.StartWorker("decode");
  Process router = env.StartRouter({"--served-model-name", "tiny", "--prefill", prefill.address(),
                                    "--decode", decode.address()});
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(env.Post(router.port, "/v1/completions", Completion("abc", 5, 0, 0), false).status,
              200);
  }
  EXPECT_EQ(env.Post(router.port, "/v1/completions", Completion("abc", 0, 0, 0), false).status,
            400);
  HttpResult m = env.Get(router.port, "/metrics", false);
  ASSERT_EQ(m.status, 200);
  const std::string file =
      env.BuildPath("agent-test-logs/router-metrics-" + std::to_string(router.port) + ".txt");
  std::ofstream(file) << m.body;
  std::string out;
  EXPECT_EQ(AgentEnv::RunCommand("promtool check metrics < " + file, &out), 0) << out;
  EXPECT_EQ(AgentEnv::MetricSum(m.body, "pdpool_router_requests_total", {"code=\"200\""}), 3);
  EXPECT_EQ(AgentEnv::MetricSum(m.body, "pdpool_router_requests_total", {"code=\"400\""}), 1);
  EXPECT_EQ(AgentEnv::MetricSum(m.body, "pdpool_router_ttft_seconds_count"), 3);
  EXPECT_EQ(AgentEnv::MetricSum(m.body, "pdpool_router_tpot_seconds_count"), 3);
  EXPECT_EQ(AgentEnv::MetricSum(m.body, "pdpool_router_generation_tokens_total"), 15);
  EXPECT_EQ(AgentEnv::MetricSum(m.body, "pdpool_router_prompt_tokens_total"),
            12);  // 3 × (BOS + "abc")
}

}  // namespace
}  // namespace pdpool::testing
