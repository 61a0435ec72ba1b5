// PoolSignals and MetricsSource: what the planner observes about one pool over one interval,
// and the interface that reads it — from the Prometheus HTTP API (PrometheusMetricsSource) or
// by scraping the pool's pods directly (ScrapeMetricsSource). The metric names behind each field
// are the contract in ../shared/TARGETS.md (router: pdpool_router_*, worker: pdpool_worker_*).
// Plain values; a MetricsSource implementation says its own thread-safety.
#pragma once

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "common/clock.h"
#include "common/status.h"

namespace pdpool::controller::planner {

inline constexpr double kNoValue = std::numeric_limits<double>::quiet_NaN();
inline bool HasValue(double v) { return !std::isnan(v); }

// One worker role's load and speed over the window, summed (or averaged where said) over the
// role's *warm* workers only: a worker whose pod became ready less than `warmup` before the
// window started is left out, so cold-start samples (model load, first CUDA graphs, empty caches)
// never reach the capacity model. kNoValue where there were no samples.
struct RoleSignals {
  int warm_workers = 0;  // workers whose samples are included
  double tokens_per_second =
      kNoValue;  // prefill: prompt tokens computed/s; decode: tokens generated/s
  double requests_waiting = kNoValue;  // pdpool_worker_requests_waiting, summed (queue depth)
  double requests_running = kNoValue;  // pdpool_worker_requests_running, summed
  double kv_usage_ratio = kNoValue;    // pdpool_worker_kv_cache_usage_ratio, mean over workers
  // Engine steps of the role's own phase (prefill workers: phase="prefill", decode workers:
  // phase="decode") from pdpool_worker_step_seconds: steps/s and mean seconds per step.
  double steps_per_second = kNoValue;
  double mean_step_seconds = kNoValue;
  // Mean sequences per decode step (decode role: decode tokens / decode steps).
  double mean_batch = kNoValue;
};

// Client-visible load and latency of one pool over the window (router metrics; not filtered by
// warm-up: users see every request).
struct PoolSignals {
  WallTime window_end{};
  double window_seconds = 0;
  double request_rate = kNoValue;        // requests/s finished at the routers (any code)
  double mean_prompt_tokens = kNoValue;  // per request
  double mean_output_tokens = kNoValue;  // per request
  double ttft_seconds = kNoValue;        // at the SLO's percentile (histogram quantile)
  double tpot_seconds = kNoValue;        // at the SLO's percentile
  double inflight_requests = kNoValue;   // pdpool_router_inflight_requests, summed
  RoleSignals prefill;
  RoleSignals decode;
};

// A pod of the pool as the controller's cache sees it (for warm-up filtering and scraping).
struct PoolPod {
  std::string name;
  std::string ip;          // status.podIP, "" when unassigned
  std::string role;        // "prefill" | "decode" | "router"
  int port = 0;            // the port serving /metrics (worker 8000, router 8080)
  bool ready = false;      // condition Ready
  WallTime ready_since{};  // lastTransitionTime of Ready (meaningful when ready)
};

struct MetricsQuery {
  std::string namespace_name;
  std::string pool;
  int percentile = 90;  // of the SLO (50..99.9)
  Duration window = std::chrono::seconds(60);
  Duration warmup = std::chrono::seconds(60);
  std::vector<PoolPod> pods;  // the pool's pods now (router and workers)
};

class MetricsSource {
 public:
  virtual ~MetricsSource() = default;
  // Reads the pool's signals for the window ending now. Errors:
  //  - Unavailable: the source could not be reached or answered with an error (message names
  //    the URL or pod and the cause, e.g. "prometheus http://...: connection refused");
  //  - NotFound: reachable but it has no samples of the pool's router metrics (nothing scraped
  //    yet, or the pool's pods are not scraped at all).
  // The planner holds the current size on any error.
  virtual StatusOr<PoolSignals> Read(const MetricsQuery& query) = 0;
  // "prometheus" or "scrape": for logs, conditions and Events.
  virtual std::string Name() const = 0;
};

}  // namespace pdpool::controller::planner
