// ScalingPolicy: the interface every autoscaling policy the replay compares implements
// (static-peak, threshold, dynamo-style, pdpool). The simulation calls Decide once per
// IntervalSeconds() with what a controller could observe then — the pool's router and worker
// signals over the policy's window (the same PoolSignals pdpool's controller reads from
// Prometheus) and the replica counts — and carries out the returned replica targets and in-place
// moves. Implementations are not thread-safe: one per simulation run.
#pragma once

#include <string>

#include "common/clock.h"
#include "controller/planner/pool_signals.h"

namespace pdpool::bench::replay {

struct RoleView {
  int desired = 0;   // workers assigned to the role, starting or serving (not draining)
  int ready = 0;     // serving now
  int starting = 0;  // waiting for GPUs, loading, or moving in
  int draining = 0;  // leaving: finishing in-flight work
  int gpus_per_replica = 1;
};

struct PolicyInput {
  double now_s = 0;     // virtual seconds since the start of the replay
  WallTime wall_now{};  // the same instant as wall time (for planner::Planner)
  // Router and warm-worker signals over the policy's window (SignalsWindowSeconds, or less at
  // the start). TTFT/TPOT at the scenario's percentile.
  controller::planner::PoolSignals signals;
  // Interval means a Prometheus query over the same window also gives (Dynamo's planner reads
  // averages, not percentiles): TTFT, inter-token latency (token-weighted), request duration.
  double mean_ttft_s = controller::planner::kNoValue;
  double mean_itl_s = controller::planner::kNoValue;
  double mean_request_seconds = controller::planner::kNoValue;
  RoleView prefill;
  RoleView decode;
  int gpu_budget = 0;         // the rack
  int gpus_held = 0;          // by all workers now, draining ones included
  bool fixed_budget = false;  // all GPUs held whatever the policy asks: only the split matters
};

struct PolicyDecision {
  int prefill = 1;  // target workers per role (after the moves)
  int decode = 1;
  // > 0: move this many ready decode workers to prefill in place; < 0: prefill → decode.
  int moves_to_prefill = 0;
  std::string reason;
};

class ScalingPolicy {
 public:
  virtual ~ScalingPolicy() = default;
  virtual std::string Name() const = 0;
  // Seconds between decisions; <= 0: never (a fixed configuration).
  virtual double IntervalSeconds() const = 0;
  // The signals' window (a Prometheus range); defaults to the interval.
  virtual double SignalsWindowSeconds() const { return IntervalSeconds(); }
  // Workers per role at the start of the replay, all warm.
  virtual int InitialPrefill() const = 0;
  virtual int InitialDecode() const = 0;
  virtual PolicyDecision Decide(const PolicyInput& input) = 0;
};

}  // namespace pdpool::bench::replay
