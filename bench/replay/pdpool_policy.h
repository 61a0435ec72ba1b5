// pdpool: the controller's own planner (controller/planner/planner.h) driven by the replay —
// the same Planner, CapacityModel (seeded from the prefill and decode workers' PerfModels, with
// the SLO and the workers' scheduler limits) and LoadForecaster the controller's PoolAutoscaler
// builds, fed the PoolSignals the simulation measures over the controller's window
// (max(interval, 60 s), warm workers only) and the RoleStates the controller would pass
// (current = desired workers, ready, min 1, max what the GPU budget leaves beside the other
// role's minimum), gpu_limit = the budget, in-place rebalancing on. Its decision is applied as
// the controller applies it: replica targets, and moves_to_prefill as in-place role moves.
// Not thread-safe (ScalingPolicy).
#pragma once

#include "agent/engine/sim/perf_model.h"
#include "bench/replay/scaling_policy.h"
#include "bench/replay/scenario.h"
#include "controller/planner/planner.h"

namespace pdpool::bench::replay {

struct PdpoolSettings {
  double interval_s = 15;
  double scale_down_stabilization_s = 300;
};

class PdpoolPolicy final : public ScalingPolicy {
 public:
  PdpoolPolicy(const Scenario& scenario, const agent::PerfModel& prefill,
               const agent::PerfModel& decode, PdpoolSettings settings, int initial_prefill,
               int initial_decode);
  std::string Name() const override { return "pdpool"; }
  double IntervalSeconds() const override { return settings_.interval_s; }
  double SignalsWindowSeconds() const override { return std::max(settings_.interval_s, 60.0); }
  int InitialPrefill() const override { return initial_prefill_; }
  int InitialDecode() const override { return initial_decode_; }
  PolicyDecision Decide(const PolicyInput& in) override;

 private:
  PdpoolSettings settings_;
  controller::planner::Planner planner_;
  int initial_prefill_;
  int initial_decode_;
};

}  // namespace pdpool::bench::replay
