// Planner: pdpool's autoscaling decision for one pool, once per interval. From the interval's
// signals it forecasts next interval's load (LoadForecaster), sizes prefill and decode with the
// CapacityModel, and turns that into a decision that respects the pool's bounds, its GPU budget
// and the free GPUs of its NVLink domain:
//  - scale up at once (the recommendation plus what is already pending);
//  - scale down only to the highest recommendation of the stabilization window, one role at a
//    time, and only when the replicas left still carry the current load under the target
//    (consolidation-aware: no 2↔1 flapping, no scale-down into a breach);
//  - wait while a previous action is still starting (pending guard: a replica desired but not
//    ready) — except moves, which take seconds;
//  - when one role is short and the other has surplus, move ready workers in place between the
//    roles (rebalance) instead of starting pods; with a GPU budget, moving is also how the pool
//    follows a change in the prompt/output mix at a fixed size;
//  - on missing or failed metrics, hold the current size.
// Pure logic over its inputs and its own history (no clock, no I/O): the controller and the
// trace-replay harness drive the same code. Not thread-safe: one per pool.
#pragma once

#include <deque>
#include <string>

#include "common/clock.h"
#include "common/status.h"
#include "controller/planner/capacity_model.h"
#include "controller/planner/load_forecaster.h"
#include "controller/planner/pool_signals.h"

namespace pdpool::controller::planner {

struct RoleState {
  int current = 1;  // desired replicas now (what the ReplicaSets are asked for)
  int ready = 1;    // ready replicas now
  int min = 1;
  int max = 1;
  int gpus_per_replica = 1;
};

struct PlannerInput {
  WallTime now{};
  Status signals_status;  // not ok: metrics could not be read (hold)
  PoolSignals signals;    // valid when signals_status is ok
  RoleState prefill;
  RoleState decode;
  // Most GPUs the pool's workers may hold after this decision: min(gpuBudget, GPUs held now +
  // free GPUs of the pool's domain). <= 0: no limit known.
  int gpu_limit = 0;
  bool rebalance_in_place = true;
};

enum class DecisionKind { kHold, kScaleUp, kScaleDown, kRebalance, kPending, kNoMetrics };
const char* DecisionKindName(DecisionKind kind);  // "hold", "scale_up", ... (metric label values)

struct PlannerDecision {
  DecisionKind kind = DecisionKind::kHold;
  int prefill = 1;  // desired replicas after the decision
  int decode = 1;
  // > 0: move this many ready decode workers to prefill in place; < 0: prefill → decode.
  // Already reflected in prefill/decode.
  int moves_to_prefill = 0;
  std::string reason;  // one line for status.lastScale, Events and logs
  double predicted_request_rate = kNoValue;
  // Replicas the load needs before bounds, budget and stabilization (kNoValue-free ints; 0 when
  // unknown).
  int needed_prefill = 0;
  int needed_decode = 0;
};

struct PlannerSettings {
  Duration interval = std::chrono::seconds(15);
  Duration scale_down_stabilization = std::chrono::seconds(300);
  // Load the sizing plans for on top of the forecast (1.0: exactly the forecast).
  double load_headroom = 1.1;
};

class Planner {
 public:
  Planner(PlannerSettings settings, CapacityModel capacity,
          ForecasterSettings forecaster_settings = {});

  PlannerDecision Decide(const PlannerInput& input);

  const CapacityModel& capacity() const { return capacity_; }
  const LoadForecaster& forecaster() const { return forecaster_; }

 private:
  struct Recommendation {
    WallTime at;
    int prefill;
    int decode;
  };

  PlannerSettings settings_;
  CapacityModel capacity_;
  LoadForecaster forecaster_;
  std::deque<Recommendation> history_;  // within the stabilization window
  WallTime first_seen_{};               // first decision with metrics
};

}  // namespace pdpool::controller::planner
