// Harness: builds the compared policies for a scenario and trace, runs them (each its own
// Simulation, optionally on parallel threads), and the fixed-budget comparison (every fixed
// prefill:decode split of the budget against pdpool's planner rebalancing the same GPUs).
// Functions; each Simulation is confined to the thread running it.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "bench/replay/dynamo_policy.h"
#include "bench/replay/pdpool_policy.h"
#include "bench/replay/scenario.h"
#include "bench/replay/simulation.h"
#include "bench/replay/static_peak_policy.h"
#include "bench/replay/threshold_policy.h"
#include "bench/replay/trace.h"

namespace pdpool::bench::replay {

struct HarnessOptions {
  std::vector<std::string> policies = {"static-peak", "threshold", "dynamo-style", "pdpool"};
  double attainment_target = 0.99;
  ThresholdSettings threshold;
  DynamoSettings dynamo;
  PdpoolSettings pdpool;
  int jobs = 1;  // policies replayed at once
  // Static-peak: the PerfModel seed confirmed and trimmed by replays of the busiest minutes
  // (true), or the PerfModel seed alone (false).
  bool static_sizing_by_replay = true;
  bool verify_backend = false;
  bool record_every_decision = false;
};

struct Comparison {
  Replicas initial;  // every autoscaler's start: sized for the warm-up's busiest minute
  StaticPeakSizing static_peak;
  std::vector<RunResult> results;  // in options.policies order
};

StatusOr<Comparison> RunComparison(const Scenario& scenario, const std::vector<TraceRequest>& trace,
                                   const HarnessOptions& options);

struct FixedBudgetComparison {
  std::vector<RunResult> splits;  // every split P:D of the budget
  int best_index = -1;            // by goodput per GPU
  RunResult pdpool;
  Replicas pdpool_start;
};

StatusOr<FixedBudgetComparison> RunFixedBudget(const Scenario& scenario,
                                               const std::vector<TraceRequest>& trace,
                                               const HarnessOptions& options);

// Runs fn(i) for i in [0, n) on up to `jobs` threads.
void ParallelFor(int n, int jobs, const std::function<void(int)>& fn);

}  // namespace pdpool::bench::replay
