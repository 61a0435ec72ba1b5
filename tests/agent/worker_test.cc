// Workers as processes on loopback: disaggregated prefill → tcp KV push → decode produces exactly
// the tokens a `both` worker produces; a prefill worker killed mid-transfer leaks nothing and the
// request completes on another one; the pool token guards every internal endpoint; SIGTERM
// drains; /metrics passes promtool and moves with traffic.
#include <gtest/gtest.h>

#include <csignal>
#include <fstream>
#include <future>
#include <random>

#include "agent/worker/worker_protocol.h"
#include "tests/agent/agent_env.h"

namespace pdpool::testing {
namespace {

namespace protocol = agent::protocol;

Json Prompt(int length, uint32_t seed) {
  std::mt19937 rng(seed);
  Json ids = Json::array();
  for (int i = 0; i < length; ++i) ids.push_back(static_cast<int>(rng() % 256));
  return ids;
}

Json Sampling(double temperature, uint64_t seed) {
  return {{"temperature", temperature}, {"top_p", 0.9}, {"seed", seed}};
}

// Tokens of a whole request on a `both` worker.
std::vector<int> Generate(AgentEnv& env, const Process& both, const Json& prompt, int max_tokens,
                          const Json& sampling) {
  auto lines = env.PostStream(both.port, protocol::kGeneratePath,
                              {{"prompt_token_ids", prompt},
                               {"max_tokens", max_tokens},
                               {"sampling", sampling},
                               {"ignore_eos", true}});
  std::vector<int> tokens;
  for (const Json& l : lines) {
    if (l.contains("token")) tokens.push_back(l["token"].get<int>());
    EXPECT_FALSE(l.contains("error")) << l.dump();
  }
  EXPECT_FALSE(lines.empty());
  if (!lines.empty()) {
    EXPECT_EQ(lines.back().value("finish_reason", ""), "length");
  }
  return tokens;
}

HttpResult Reserve(AgentEnv& env, const Process& decode, int prompt_tokens) {
  return env.Post(decode.port, protocol::kReservePath,
                  {{"request_id", "t"}, {"prompt_tokens", prompt_tokens}, {"max_tokens", 8}});
}

HttpResult Prefill(AgentEnv& env, const Process& prefill, const Json& prompt, const Json& sampling,
                   const Json& reservation) {
  return env.Post(prefill.port, protocol::kPrefillPath,
                  {{"request_id", "t"},
                   {"prompt_token_ids", prompt},
                   {"sampling", sampling},
                   {"destination",
                    {{"transport", "tcp"},
                     {"kv_address", reservation["kv_address"]},
                     {"reservation_id", reservation["reservation_id"]},
                     {"blocks", reservation["blocks"]}}}});
}

std::vector<int> Decode(AgentEnv& env, const Process& decode, const Json& reservation,
                        int first_token, const Json& prompt, int max_tokens, const Json& sampling) {
  auto lines = env.PostStream(decode.port, protocol::kDecodePath,
                              {{"reservation_id", reservation["reservation_id"]},
                               {"first_token", first_token},
                               {"prompt_token_ids", prompt},
                               {"max_tokens", max_tokens},
                               {"sampling", sampling},
                               {"ignore_eos", true}});
  std::vector<int> tokens = {first_token};
  for (const Json& l : lines) {
    if (l.contains("token")) tokens.push_back(l["token"].get<int>());
    EXPECT_FALSE(l.contains("error")) << l.dump();
  }
  return tokens;
}

// The whole disaggregated flow, as the router drives it.
std::vector<int> Disaggregated(AgentEnv& env, const Process& prefill, const Process& decode,
                               const Json& prompt, int max_tokens, const Json& sampling) {
  HttpResult r = Reserve(env, decode, static_cast<int>(prompt.size()));
  EXPECT_EQ(r.status, 200) << r.body;
  HttpResult p = Prefill(env, prefill, prompt, sampling, r.json);
  EXPECT_EQ(p.status, 200) << p.body;
  if (p.status != 200) return {};
  EXPECT_GT(p.json["kv_bytes"].get<int64_t>(), 0);
  return Decode(env, decode, r.json, p.json["first_token"].get<int>(), prompt, max_tokens,
                sampling);
}

TEST(WorkerTest, PrefillAndDecodeOverTcpProduceExactlyTheTokensOfBoth) {
  AgentEnv env;
  Process both = env.StartWorker("both");
  Process prefill = env.StartWorker("prefill");
  Process decode = env.StartWorker("decode");
  for (const Json& sampling : {Sampling(0.0, 0), Sampling(0.8, 5), Sampling(1.0, 11)}) {
    for (int length : {1, 16, 57}) {
      const Json prompt = Prompt(length, 100 + length);
      std::vector<int> expected = Generate(env, both, prompt, 24, sampling);
      ASSERT_EQ(expected.size(), 24u);
      EXPECT_EQ(Disaggregated(env, prefill, decode, prompt, 24, sampling), expected)
          << "sampling " << sampling.dump() << " prompt length " << length;
    }
  }
  EXPECT_TRUE(AgentEnv::WaitFor([&] { return env.KvIdle(decode); }));
  EXPECT_TRUE(AgentEnv::WaitFor([&] { return env.KvIdle(prefill); }));
}

TEST(WorkerTest, PrefillKilledMidTransferLeaksNothingAndAnotherPrefillFinishesTheRequest) {
  AgentEnv env;
  Process both = env.StartWorker("both");
  // 160 tokens = 10 blocks, 300 ms apiece: a transfer that is surely in flight when killed.
  Process slow = env.StartWorker("prefill", {"--fault-kv-block-delay-ms", "300"});
  Process healthy = env.StartWorker("prefill");
  Process decode = env.StartWorker("decode");
  const Json prompt = Prompt(160, 7);
  const Json sampling = Sampling(0.7, 3);

  HttpResult r = Reserve(env, decode, 160);
  ASSERT_EQ(r.status, 200) << r.body;
  auto doomed =
      std::async(std::launch::async, [&] { return Prefill(env, slow, prompt, sampling, r.json); });
  ASSERT_TRUE(AgentEnv::WaitFor([&] {
    return env.Get(decode.port, protocol::kInfoPath).json.value("kv_receives_in_progress", 0) == 1;
  })) << "the transfer never started";
  slow.child->Kill();
  EXPECT_NE(doomed.get().status, 200);
  // The decode worker freed the reservation's blocks itself: nothing leaks.
  EXPECT_TRUE(AgentEnv::WaitFor([&] { return env.KvIdle(decode); }))
      << env.Get(decode.port, protocol::kInfoPath).body;
  HttpResult metrics = env.Get(decode.port, "/metrics", false);
  EXPECT_EQ(AgentEnv::MetricValue(
                metrics.body,
                "pdpool_worker_kv_transfer_failures_total{direction=\"receive\",role=\"decode\"}"),
            1);

  // The router's retry: release (a no-op now), reserve again, prefill elsewhere.
  EXPECT_EQ(
      env.Post(decode.port, protocol::kReleasePath, {{"reservation_id", r.json["reservation_id"]}})
          .json["released"],
      false);
  std::vector<int> tokens = Disaggregated(env, healthy, decode, prompt, 12, sampling);
  EXPECT_EQ(tokens, Generate(env, both, prompt, 12, sampling));
  EXPECT_TRUE(AgentEnv::WaitFor([&] { return env.KvIdle(decode); }));
}

TEST(WorkerTest, InternalEndpointsRefuseRequestsWithoutThePoolToken) {
  AgentEnv env;
  Process decode = env.StartWorker("decode");
  Process prefill = env.StartWorker("prefill");
  const int free_before =
      env.Get(decode.port, protocol::kInfoPath).json["kv_blocks_free"].get<int>();
  HttpResult r = env.Post(decode.port, protocol::kReservePath, {{"prompt_tokens", 16}}, false);
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(env.Get(decode.port, protocol::kInfoPath, false).status, 401);
  EXPECT_EQ(
      env.Post(prefill.port, protocol::kPrefillPath, {{"prompt_token_ids", {1, 2}}}, false).status,
      401);
  EXPECT_EQ(env.Post(decode.port, protocol::kDecodePath, {{"reservation_id", 1}}, false).status,
            401);
  EXPECT_EQ(env.Get(decode.port, protocol::kInfoPath).json["kv_blocks_free"].get<int>(),
            free_before);
  // Probes and metrics stay open.
  EXPECT_EQ(env.Get(decode.port, "/healthz", false).status, 200);
  EXPECT_EQ(env.Get(decode.port, "/metrics", false).status, 200);
  // Role and input errors are 4xx with a reason.
  HttpResult wrong_role = env.Post(prefill.port, protocol::kReservePath, {{"prompt_tokens", 4}});
  EXPECT_EQ(wrong_role.status, 400);
  EXPECT_NE(wrong_role.json.value("error", "").find("prefill worker"), std::string::npos);
  HttpResult bad_token =
      env.Post(prefill.port, protocol::kPrefillPath,
               {{"prompt_token_ids", {1, 100000}}, {"destination", {{"kv_address", "x:1"}}}});
  EXPECT_EQ(bad_token.status, 400);
  EXPECT_EQ(
      env.Post(decode.port, protocol::kDecodePath, {{"reservation_id", 999}, {"first_token", 3}})
          .status,
      404);
}

TEST(WorkerTest, SigtermFinishesInFlightWorkThenExits) {
  AgentEnv env;
  // A sim worker: each decode step of a 70B model on an H200 lasts as long as it would there.
  Process sim = env.StartWorker("both", {"--backend", "sim", "--model", "llama-3.1-70b", "--gpu",
                                         "H200", "--tensor-parallel", "4"});
  auto stream = std::async(std::launch::async, [&] {
    return env.PostStream(sim.port, protocol::kGeneratePath,
                          {{"prompt_token_ids", Prompt(64, 1)},
                           {"max_tokens", 150},
                           {"sampling", Sampling(0, 0)},
                           {"ignore_eos", true}});
  });
  ASSERT_TRUE(AgentEnv::WaitFor(
      [&] { return env.Get(sim.port, protocol::kInfoPath).json.value("running", 0) == 1; }));
  ::kill(sim.child->pid(), SIGTERM);
  EXPECT_TRUE(AgentEnv::WaitFor([&] { return env.Get(sim.port, "/readyz", false).status == 503; }));
  HttpResult refused = env.Post(sim.port, protocol::kGeneratePath,
                                {{"prompt_token_ids", {1, 2, 3}}, {"max_tokens", 2}});
  EXPECT_EQ(refused.status, 503);
  std::vector<Json> lines = stream.get();
  int tokens = 0;
  for (const Json& l : lines) tokens += l.contains("token") ? 1 : 0;
  EXPECT_EQ(tokens, 150);
  ASSERT_FALSE(lines.empty());
  EXPECT_EQ(lines.back().value("finish_reason", ""), "length");
  EXPECT_EQ(sim.child->Wait(std::chrono::seconds(30)), std::optional<int>(0));
}

TEST(WorkerTest, MetricsPassPromtoolAndMoveWithTraffic) {
  AgentEnv env;
  Process prefill = env.StartWorker("prefill");
  Process decode = env.StartWorker("decode");
  const Json prompt = Prompt(40, 9);
  ASSERT_EQ(Disaggregated(env, prefill, decode, prompt, 8, Sampling(0, 0)).size(), 8u);
  for (const Process* p : {&prefill, &decode}) {
    HttpResult m = env.Get(p->port, "/metrics", false);
    ASSERT_EQ(m.status, 200);
    const std::string file =
        env.BuildPath("agent-test-logs/metrics-" + std::to_string(p->port) + ".txt");
    std::ofstream(file) << m.body;
    std::string out;
    EXPECT_EQ(AgentEnv::RunCommand("promtool check metrics < " + file, &out), 0) << out;
  }
  const std::string pm = env.Get(prefill.port, "/metrics", false).body;
  const std::string dm = env.Get(decode.port, "/metrics", false).body;
  EXPECT_EQ(AgentEnv::MetricValue(pm, "pdpool_worker_prefill_tokens_total{role=\"prefill\"}"), 40);
  EXPECT_GT(AgentEnv::MetricValue(
                pm, "pdpool_worker_kv_transfer_bytes_total{direction=\"send\",role=\"prefill\"}"),
            0);
  EXPECT_EQ(AgentEnv::MetricValue(dm, "pdpool_worker_decode_tokens_total{role=\"decode\"}"), 7);
  EXPECT_GT(AgentEnv::MetricValue(
                dm, "pdpool_worker_kv_transfer_bytes_total{direction=\"receive\",role=\"decode\"}"),
            0);
  EXPECT_EQ(AgentEnv::MetricValue(dm, "pdpool_worker_kv_cache_usage_ratio{role=\"decode\"}"), 0);
  EXPECT_GT(AgentEnv::MetricValue(dm, "pdpool_worker_kv_blocks_total{role=\"decode\"}"), 0);
}

}  // namespace
}  // namespace pdpool::testing
