// PoolAutoscaler: the planner's home inside the controller. The PoolReconciler calls Evaluate
// for every pool with spec.autoscaling.enabled on each reconcile; at most once per
// spec.autoscaling.interval it reads the pool's metrics (Prometheus at
// spec.autoscaling.prometheus.url, or the pods scraped directly), runs the pool's Planner and
// returns the decision for the reconciler to apply (ReplicaSets, in-place moves, status, Event).
// The per-pool state (forecaster, capacity corrections, stabilization history) lives here, in
// memory; the sizes themselves live in the pool's status, so a new leader carries on from them
// (it watches one full stabilization window before scaling down). The planner is rebuilt when
// the fields it depends on change (model, GPU type, SLO, replica shapes, interval, window).
// Thread-safe: Evaluate may run concurrently for different pools (the work queue never runs one
// pool twice at once).
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "common/clock.h"
#include "controller/controller_metrics.h"
#include "controller/planner/planner.h"
#include "controller/planner/pool_signals.h"
#include "controller/pool_spec.h"

namespace pdpool::controller::planner {

// Builds the MetricsSource of a pool: `prometheus_url` empty → scrape the pods.
using MetricsSourceFactory =
    std::function<std::unique_ptr<MetricsSource>(const std::string& prometheus_url)>;

// The production factory: PrometheusMetricsSource or ScrapeMetricsSource on `clock`.
MetricsSourceFactory DefaultMetricsSourceFactory(Clock* clock);

struct AutoscalerOptions {
  MetricsSourceFactory source_factory;
  // Pods ready for less than this are left out of the capacity samples (model load, warm-up).
  Duration warmup = std::chrono::seconds(60);
  // Shortest window of the signals: each read covers max(min_window, the pool's interval), so
  // short intervals still see enough requests for a percentile.
  Duration min_window = std::chrono::seconds(60);
};

// What the reconciler knows about the pool this pass.
struct PoolView {
  std::string namespace_name;
  std::string name;
  const PoolSpec* spec = nullptr;
  RoleState prefill;  // current = the sizes the ReplicaSets are asked for now
  RoleState decode;
  int gpu_limit = 0;        // see PlannerInput::gpu_limit
  std::string gpu_product;  // nvidia.com/gpu.product of the domain's nodes ("" → h100)
  std::vector<PoolPod> pods;
};

struct AutoscaleResult {
  bool evaluated = false;  // false: not due yet (or the planner cannot run: see error)
  Duration next_in{};      // until the next evaluation is due
  PlannerDecision decision;
  Status metrics_status;  // the MetricsSource's answer
  PoolSignals signals;
  std::string source_name;  // "prometheus" | "scrape"
  Status error;             // the planner cannot be built (e.g. unknown GPU/model): hold
};

class PoolAutoscaler {
 public:
  explicit PoolAutoscaler(AutoscalerOptions options, ControllerMetrics* metrics = nullptr);

  AutoscaleResult Evaluate(const PoolView& view, WallTime now);
  // The sizes of this pool's last decision (false before the first). The reconciler prefers them
  // to status.{prefill,decode}.desiredReplicas, which its cache may not show yet right after the
  // write (reading the stale value back would undo a scale-up for one pass).
  bool LastSizes(const std::string& ns, const std::string& name, int* prefill, int* decode);
  // The pool is gone or stopped autoscaling: drop its state and metrics series.
  void Forget(const std::string& ns, const std::string& name);

 private:
  struct PoolState;
  std::shared_ptr<PoolState> StateFor(const std::string& key);

  AutoscalerOptions options_;
  ControllerMetrics* metrics_;
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<PoolState>> pools_;  // guarded by mu_
};

}  // namespace pdpool::controller::planner
