// Tests for the planner's PromQL: the exact texts for one pool, the warm-pod restriction of the
// worker queries (regex-escaped names, cold and unready pods left out), escaping, and the
// grouped form recording rules use.
#include "controller/planner/pool_queries.h"

#include <gtest/gtest.h>

namespace pdpool::controller::planner {
namespace {

using std::chrono::seconds;

const WallTime kNow = WallTime(seconds(1'700'000'000));

PoolPod Pod(std::string name, std::string role, bool ready, WallTime ready_since) {
  PoolPod p;
  p.name = std::move(name);
  p.role = std::move(role);
  p.ready = ready;
  p.ready_since = ready_since;
  p.ip = "10.0.0.1";
  p.port = 8000;
  return p;
}

MetricsQuery Query() {
  MetricsQuery q;
  q.namespace_name = "serving";
  q.pool = "llama";
  q.percentile = 90;
  q.window = seconds(60);
  q.warmup = seconds(60);
  return q;
}

const PoolQuery* Find(const std::vector<PoolQuery>& qs, const std::string& name) {
  for (const PoolQuery& q : qs) {
    if (q.name == name) return &q;
  }
  return nullptr;
}

TEST(PoolQueriesTest, PoolLevelQueryTexts) {
  const auto qs = BuildPoolQueries(Query(), kNow);
  ASSERT_FALSE(qs.empty());
  EXPECT_EQ(qs[0].field, SignalField::kRequestRate);
  const std::string r = R"({namespace="serving",pool="llama"})";
  EXPECT_EQ(Find(qs, "request_rate")->expr,
            "sum(rate(pdpool_router_requests_total" + r + "[60s]))");
  EXPECT_EQ(Find(qs, "mean_prompt_tokens")->expr,
            "sum(rate(pdpool_router_prompt_tokens_total" + r +
                "[60s])) / sum(rate(pdpool_router_e2e_seconds_count" + r + "[60s]))");
  EXPECT_EQ(Find(qs, "mean_output_tokens")->expr,
            "sum(rate(pdpool_router_generation_tokens_total" + r +
                "[60s])) / sum(rate(pdpool_router_e2e_seconds_count" + r + "[60s]))");
  EXPECT_EQ(Find(qs, "ttft_seconds")->expr,
            "histogram_quantile(0.9, sum by (le) (rate(pdpool_router_ttft_seconds_bucket" + r +
                "[60s])))");
  EXPECT_EQ(Find(qs, "tpot_seconds")->expr,
            "histogram_quantile(0.9, sum by (le) (rate(pdpool_router_tpot_seconds_bucket" + r +
                "[60s])))");
  EXPECT_EQ(Find(qs, "inflight_requests")->expr, "sum(pdpool_router_inflight_requests" + r + ")");
}

TEST(PoolQueriesTest, WorkerQueriesOnlyCoverWarmPodsOfTheRole) {
  MetricsQuery q = Query();
  const WallTime window_start = kNow - q.window;
  q.pods = {
      Pod("llama-router-x", "router", true, kNow - seconds(3600)),
      Pod("llama-prefill-b", "prefill", true, window_start - q.warmup),  // warm, at the limit
      Pod("llama-prefill-a.1", "prefill", true, kNow - seconds(3600)),   // warm; '.' escaped
      Pod("llama-prefill-cold", "prefill", true, window_start - q.warmup + seconds(1)),
      Pod("llama-prefill-down", "prefill", false, kNow - seconds(3600)),
      Pod("llama-decode-cold", "decode", true, kNow - seconds(10)),
  };
  const auto qs = BuildPoolQueries(q, kNow);
  const std::string p =
      R"({namespace="serving",pool="llama",role="prefill",pod=~"llama-prefill-a\\.1|llama-prefill-b"})";
  const std::string phase =
      R"({namespace="serving",pool="llama",role="prefill",pod=~"llama-prefill-a\\.1|llama-prefill-b",phase="prefill"})";
  ASSERT_NE(Find(qs, "prefill.tokens_per_second"), nullptr);
  EXPECT_EQ(Find(qs, "prefill.warm_workers")->expr,
            "count(pdpool_worker_requests_running" + p + ")");
  EXPECT_EQ(Find(qs, "prefill.tokens_per_second")->expr,
            "sum(rate(pdpool_worker_prefill_tokens_total" + p + "[60s]))");
  EXPECT_EQ(Find(qs, "prefill.requests_waiting")->expr,
            "sum(pdpool_worker_requests_waiting" + p + ")");
  EXPECT_EQ(Find(qs, "prefill.requests_running")->expr,
            "sum(pdpool_worker_requests_running" + p + ")");
  EXPECT_EQ(Find(qs, "prefill.kv_usage_ratio")->expr,
            "avg(pdpool_worker_kv_cache_usage_ratio" + p + ")");
  EXPECT_EQ(Find(qs, "prefill.steps_per_second")->expr,
            "sum(rate(pdpool_worker_step_seconds_count" + phase + "[60s]))");
  EXPECT_EQ(Find(qs, "prefill.mean_step_seconds")->expr,
            "sum(rate(pdpool_worker_step_seconds_sum" + phase +
                "[60s])) / sum(rate(pdpool_worker_step_seconds_count" + phase + "[60s]))");
  EXPECT_EQ(Find(qs, "prefill.mean_batch"), nullptr);  // decode only
  // No warm decode pod: no decode queries at all (an empty pod regex would match pod-less series).
  for (const PoolQuery& pq : qs) EXPECT_NE(pq.role, "decode") << pq.expr;
}

TEST(PoolQueriesTest, DecodeQueriesIncludeMeanBatch) {
  MetricsQuery q = Query();
  q.percentile = 99;
  q.window = std::chrono::milliseconds(1500);
  q.pods = {Pod("d0", "decode", true, kNow - seconds(3600))};
  const auto qs = BuildPoolQueries(q, kNow);
  const std::string p = R"({namespace="serving",pool="llama",role="decode",pod=~"d0"})";
  const std::string phase =
      R"({namespace="serving",pool="llama",role="decode",pod=~"d0",phase="decode"})";
  EXPECT_EQ(Find(qs, "decode.tokens_per_second")->expr,
            "sum(rate(pdpool_worker_decode_tokens_total" + p + "[1500ms]))");
  EXPECT_EQ(Find(qs, "decode.mean_batch")->expr,
            "sum(rate(pdpool_worker_decode_tokens_total" + p +
                "[1500ms])) / sum(rate(pdpool_worker_step_seconds_count" + phase + "[1500ms]))");
  EXPECT_EQ(Find(qs, "ttft_seconds")->expr.substr(0, 25), "histogram_quantile(0.99, ");
  EXPECT_EQ(Find(qs, "prefill.tokens_per_second"), nullptr);
}

TEST(PoolQueriesTest, RecordingRuleFormKeepsTheGroupingLabels) {
  PoolQuerySelectors s;
  s.router = "";
  s.prefill = R"(role="prefill")";
  s.window = "2m";
  s.by = "namespace, pool";
  const auto qs = PoolQueryTexts(s);
  EXPECT_EQ(Find(qs, "request_rate")->expr,
            "sum by (namespace, pool) (rate(pdpool_router_requests_total{}[2m]))");
  EXPECT_EQ(Find(qs, "ttft_seconds")->expr,
            "histogram_quantile(0.9, sum by (namespace, pool, le) "
            "(rate(pdpool_router_ttft_seconds_bucket{}[2m])))");
  EXPECT_EQ(Find(qs, "prefill.kv_usage_ratio")->expr,
            R"(avg by (namespace, pool) (pdpool_worker_kv_cache_usage_ratio{role="prefill"}))");
  EXPECT_EQ(Find(qs, "decode.tokens_per_second"), nullptr);
}

TEST(PoolQueriesTest, EscapingAndFormatting) {
  EXPECT_EQ(PromQlString(R"(a"b\c)"), R"("a\"b\\c")");
  EXPECT_EQ(RegexEscape("a.b+c*(d)|[e]{f}^$?\\"), R"(a\.b\+c\*\(d\)\|\[e\]\{f\}\^\$\?\\)");
  EXPECT_EQ(FormatPromDuration(seconds(60)), "60s");
  EXPECT_EQ(FormatPromDuration(std::chrono::milliseconds(2500)), "2500ms");
  EXPECT_EQ(FormatPromDuration(Duration::zero()), "1ms");
  EXPECT_EQ(FormatPromFloat(0.9), "0.9");
  EXPECT_EQ(FormatPromFloat(0.999), "0.999");
  MetricsQuery q = Query();
  q.namespace_name = "ns\"x";
  EXPECT_EQ(BuildPoolQueries(q, kNow)[0].expr,
            R"(sum(rate(pdpool_router_requests_total{namespace="ns\"x",pool="llama"}[60s])))");
}

TEST(PoolQueriesTest, WarmWorkerRule) {
  const WallTime start = kNow - seconds(60);
  PoolPod pod = Pod("p", "prefill", true, start - seconds(30));
  EXPECT_TRUE(IsWarmWorker(pod, start, seconds(30)));
  EXPECT_FALSE(IsWarmWorker(pod, start, seconds(31)));
  pod.ready = false;
  EXPECT_FALSE(IsWarmWorker(pod, start, seconds(0)));
}

}  // namespace
}  // namespace pdpool::controller::planner
