// RouterMetrics on prometheus-cpp (see router_metrics.h).
#include "agent/router/router_metrics.h"

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "common/admin_server.h"

namespace pdpool::agent {
namespace {

// 1 ms ... 60 s: token latencies at the low end, whole long generations at the top.
// The planner compares histogram_quantile() of these with the pool's SLO, and a quantile is
// only as exact as the bucket it falls in (it interpolates linearly inside it). So the buckets
// are dense where SLOs sit and include the common limits as bounds: TTFT 450 ms, 2 s, 4.5 s, 6 s
// (MLPerf's 70B and 405B interactive and server SLOs); TPOT 40, 80, 175, 200 ms.
const prometheus::Histogram::BucketBoundaries& TtftBuckets() {
  static const prometheus::Histogram::BucketBoundaries b = {
      0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.75, 1,
      1.25, 1.5,   1.75, 2,     2.5, 3,    4,   4.5,  5,   6,    7.5, 10,   15,  20,  30,   60};
  return b;
}
const prometheus::Histogram::BucketBoundaries& TpotBuckets() {
  static const prometheus::Histogram::BucketBoundaries b = {
      0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.035, 0.04, 0.045, 0.05, 0.06, 0.07, 0.08, 0.09,
      0.1,   0.125, 0.15, 0.175, 0.2,  0.25, 0.3,   0.4,  0.5,   0.75, 1,    2,    5};
  return b;
}
const prometheus::Histogram::BucketBoundaries& E2eBuckets() {
  static const prometheus::Histogram::BucketBoundaries b = {
      0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120, 300};
  return b;
}

constexpr const char* kStates[] = {"ready", "unhealthy", "not_ready"};
constexpr WorkerRole kRoles[] = {WorkerRole::kPrefill, WorkerRole::kDecode, WorkerRole::kBoth};

}  // namespace

RouterMetrics::RouterMetrics(std::string pool)
    : pool_(pool.empty() ? "default" : std::move(pool)),
      registry_(std::make_shared<prometheus::Registry>()) {
  auto& r = *registry_;
  requests_ = &prometheus::BuildCounter()
                   .Name("pdpool_router_requests_total")
                   .Help("Client API requests finished, by HTTP status code")
                   .Register(r);
  auto hist = [&](const char* name, const char* help,
                  const prometheus::Histogram::BucketBoundaries& buckets) {
    return &prometheus::BuildHistogram().Name(name).Help(help).Register(r).Add({{"pool", pool_}},
                                                                               buckets);
  };
  ttft_ = hist("pdpool_router_ttft_seconds",
               "Time to first token: request arrival to the first token sent to the client",
               TtftBuckets());
  tpot_ = hist("pdpool_router_tpot_seconds",
               "Time per output token: (last token time - first token time) / (tokens - 1)",
               TpotBuckets());
  e2e_ = hist("pdpool_router_e2e_seconds", "Request arrival to the last byte of the response",
              E2eBuckets());
  prompt_tokens_ = &prometheus::BuildCounter()
                        .Name("pdpool_router_prompt_tokens_total")
                        .Help("Prompt tokens of served requests")
                        .Register(r)
                        .Add({{"pool", pool_}});
  generation_tokens_ = &prometheus::BuildCounter()
                            .Name("pdpool_router_generation_tokens_total")
                            .Help("Tokens generated for clients")
                            .Register(r)
                            .Add({{"pool", pool_}});
  inflight_ = &prometheus::BuildGauge()
                   .Name("pdpool_router_inflight_requests")
                   .Help("Client requests being served now")
                   .Register(r)
                   .Add({{"pool", pool_}});
  prefill_retries_ = &prometheus::BuildCounter()
                          .Name("pdpool_router_prefill_retries_total")
                          .Help("Prefills retried on another worker after a failure")
                          .Register(r)
                          .Add({{"pool", pool_}});
  worker_errors_ = &prometheus::BuildCounter()
                        .Name("pdpool_router_worker_errors_total")
                        .Help("Failed calls to workers, by worker role and phase")
                        .Register(r);
  workers_ = &prometheus::BuildGauge()
                  .Name("pdpool_router_workers")
                  .Help("Workers the router knows, by role and state (ready, unhealthy, not_ready)")
                  .Register(r);
  for (size_t ri = 0; ri < 3; ++ri) {
    for (size_t si = 0; si < 3; ++si) {
      workers_by_role_state_[ri * 3 + si] = &workers_->Add(
          {{"pool", pool_}, {"role", WorkerRoleName(kRoles[ri])}, {"state", kStates[si]}});
    }
  }
  // The common outcomes exist at 0 from the start, so rate() sees their first increase.
  for (int code : {200, 400, 404, 413, 503})
    by_code_[code].store(&requests_->Add({{"pool", pool_}, {"code", std::to_string(code)}}));
}

RouterMetrics::~RouterMetrics() = default;

void RouterMetrics::CountRequest(int http_status) {
  if (http_status < 0 || http_status >= static_cast<int>(by_code_.size())) http_status = 0;
  prometheus::Counter* c = by_code_[http_status].load(std::memory_order_acquire);
  if (c == nullptr) {
    // Family::Add returns the same counter for the same labels, so a race is harmless.
    c = &requests_->Add({{"pool", pool_}, {"code", std::to_string(http_status)}});
    by_code_[http_status].store(c, std::memory_order_release);
  }
  c->Increment();
}

void RouterMetrics::ObserveTtft(double seconds) { ttft_->Observe(seconds); }
void RouterMetrics::ObserveTpot(double seconds) { tpot_->Observe(seconds); }
void RouterMetrics::ObserveE2e(double seconds) { e2e_->Observe(seconds); }
void RouterMetrics::AddPromptTokens(int64_t n) {
  prompt_tokens_->Increment(static_cast<double>(n));
}
void RouterMetrics::AddGenerationTokens(int64_t n) {
  generation_tokens_->Increment(static_cast<double>(n));
}
void RouterMetrics::InflightAdd(int delta) { inflight_->Increment(delta); }
void RouterMetrics::CountPrefillRetry() { prefill_retries_->Increment(); }

void RouterMetrics::CountWorkerError(WorkerRole role, const char* phase) {
  worker_errors_->Add({{"pool", pool_}, {"role", WorkerRoleName(role)}, {"phase", phase}})
      .Increment();
}

void RouterMetrics::UpdateWorkers(const std::vector<WorkerPool::WorkerState>& workers) {
  std::array<int, 9> counts{};
  for (const auto& w : workers) {
    size_t ri = static_cast<size_t>(w.role);
    size_t si = 0;
    while (si < 2 && std::string_view(kStates[si]) != w.state) ++si;
    ++counts[ri * 3 + si];
  }
  for (size_t i = 0; i < counts.size(); ++i) workers_by_role_state_[i]->Set(counts[i]);
}

std::string RouterMetrics::Serialize() const { return SerializeMetrics(*registry_); }

}  // namespace pdpool::agent
