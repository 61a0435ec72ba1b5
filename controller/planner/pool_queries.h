// The PromQL behind every PoolSignals field, in one place: PrometheusMetricsSource issues these
// queries, tests check them, and the Helm chart's PrometheusRule recording rules can be generated
// from the same texts (PoolQueryTexts with `by = "namespace, pool"` and role-only selectors).
// Also the metric names both sources read and the warm-up rule for worker pods
// (ScrapeMetricsSource applies the same rule to the pods it scrapes).
// Pure functions; thread-safe.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/clock.h"
#include "controller/planner/pool_signals.h"

namespace pdpool::controller::planner {

// Metric names (the contract in TARGETS.md; emitted by agent/router/router_metrics.cc and
// agent/worker/worker_metrics.cc).
inline constexpr std::string_view kRouterRequestsTotal = "pdpool_router_requests_total";
inline constexpr std::string_view kRouterTtftSeconds = "pdpool_router_ttft_seconds";
inline constexpr std::string_view kRouterTpotSeconds = "pdpool_router_tpot_seconds";
// One observation per served request (the requests whose prompt and generated tokens are
// counted): the denominator of the per-request token means.
inline constexpr std::string_view kRouterE2eSeconds = "pdpool_router_e2e_seconds";
inline constexpr std::string_view kRouterPromptTokensTotal = "pdpool_router_prompt_tokens_total";
inline constexpr std::string_view kRouterGenerationTokensTotal =
    "pdpool_router_generation_tokens_total";
inline constexpr std::string_view kRouterInflightRequests = "pdpool_router_inflight_requests";
inline constexpr std::string_view kWorkerRequestsRunning = "pdpool_worker_requests_running";
inline constexpr std::string_view kWorkerRequestsWaiting = "pdpool_worker_requests_waiting";
inline constexpr std::string_view kWorkerKvCacheUsageRatio = "pdpool_worker_kv_cache_usage_ratio";
inline constexpr std::string_view kWorkerPrefillTokensTotal = "pdpool_worker_prefill_tokens_total";
inline constexpr std::string_view kWorkerDecodeTokensTotal = "pdpool_worker_decode_tokens_total";
inline constexpr std::string_view kWorkerStepSeconds = "pdpool_worker_step_seconds";

// Which PoolSignals field a query fills.
enum class SignalField {
  kRequestRate,
  kMeanPromptTokens,
  kMeanOutputTokens,
  kTtftSeconds,
  kTpotSeconds,
  kInflightRequests,
  // RoleSignals fields (PoolQuery::role says which role):
  kWarmWorkers,
  kTokensPerSecond,
  kRequestsWaiting,
  kRequestsRunning,
  kKvUsageRatio,
  kStepsPerSecond,
  kMeanStepSeconds,
  kMeanBatch,
};

// "request_rate", "tokens_per_second", ...: the field's name in PoolSignals/RoleSignals.
std::string_view SignalFieldName(SignalField field);

struct PoolQuery {
  std::string role;  // "" for pool-level (router) signals, else "prefill" | "decode"
  SignalField field;
  std::string name;  // "request_rate", "prefill.tokens_per_second": logs, recording rule names
  std::string expr;  // PromQL
};

// Where the queries look. Selectors are label matchers without braces
// (`namespace="serving",pool="llama"`); "" selects every series of the metric.
struct PoolQuerySelectors {
  std::string router;
  // Each role's worker series, including `role="..."`; nullopt leaves the role's queries out
  // (no warm worker).
  std::optional<std::string> prefill;
  std::optional<std::string> decode;
  std::string window = "1m";  // range of rate(): a PromQL duration
  double quantile = 0.9;      // of the TTFT/TPOT histograms
  // Labels every aggregation keeps ("namespace, pool" for recording rules over all pools); ""
  // aggregates to one value.
  std::string by;
};

// The queries, pool-level first (request_rate is the first: it decides NotFound).
// Expressions (R router selector, P role selector, W window, Q quantile, X the role's phase):
// clang-format off
//   request_rate        sum(rate(pdpool_router_requests_total{R}[W]))
//   mean_prompt_tokens  sum(rate(pdpool_router_prompt_tokens_total{R}[W]))
//                         / sum(rate(pdpool_router_e2e_seconds_count{R}[W]))
//   mean_output_tokens  same with pdpool_router_generation_tokens_total
//   ttft_seconds        histogram_quantile(Q,
//                         sum by (le) (rate(pdpool_router_ttft_seconds_bucket{R}[W])))
//   tpot_seconds        same with pdpool_router_tpot_seconds_bucket
//   inflight_requests   sum(pdpool_router_inflight_requests{R})
//   warm_workers        count(pdpool_worker_requests_running{P})
//   tokens_per_second   sum(rate(pdpool_worker_{prefill|decode}_tokens_total{P}[W]))
//   requests_waiting    sum(pdpool_worker_requests_waiting{P})
//   requests_running    sum(pdpool_worker_requests_running{P})
//   kv_usage_ratio      avg(pdpool_worker_kv_cache_usage_ratio{P})
//   steps_per_second    sum(rate(pdpool_worker_step_seconds_count{P,phase="X"}[W]))
//   mean_step_seconds   sum(rate(..._sum{P,phase="X"}[W])) / sum(rate(..._count{P,phase="X"}[W]))
//   mean_batch (decode) sum(rate(pdpool_worker_decode_tokens_total{P}[W]))
//                         / sum(rate(pdpool_worker_step_seconds_count{P,phase="decode"}[W]))
// clang-format on
// With `by`, every sum/count/avg becomes `op by (<by>) (...)` and the quantiles'
// `sum by (<by>, le)`. The per-request means divide by served requests (one e2e observation per
// request whose tokens were counted), not by pdpool_router_requests_total, which also counts
// errors and /v1/models calls.
std::vector<PoolQuery> PoolQueryTexts(const PoolQuerySelectors& selectors);

// Warm-up rule: a worker's samples count when its pod is ready and became ready at least
// `warmup` before the window started (cold-start samples never reach the capacity model).
bool IsWarmWorker(const PoolPod& pod, WallTime window_start, Duration warmup);

// The queries for one pool and window ending at `window_end`: namespace and pool selectors,
// each role's selector restricted to its warm pods (`pod=~"a|b"`, names regex-escaped); a role
// without warm pods has no queries.
std::vector<PoolQuery> BuildPoolQueries(const MetricsQuery& query, WallTime window_end);

// PromQL building blocks.
std::string PromQlString(std::string_view s);  // a double-quoted string literal, escaped
std::string RegexEscape(std::string_view s);   // RE2 metacharacters backslash-escaped
std::string FormatPromDuration(Duration d);    // "60s", "1500ms" (at least 1ms)
std::string FormatPromFloat(double v);         // shortest round-trip form: "0.9", "0.999"

}  // namespace pdpool::controller::planner
