// Simulation: one replay of a trace through a disaggregated pool in virtual time, under one
// ScalingPolicy. Every worker is the real agent::Scheduler over a KV block allocator sized by the
// sim backend (NewSimBackend), stepping on a shared VirtualClock; a discrete-event loop (arrivals,
// step completions, KV transfers, workers becoming ready, role moves, policy ticks) runs the
// workers concurrently in virtual time. Requests follow the router's disaggregated flow
// (agent/router/generation_flow.cc): reserve KV on a decode worker, prefill (prefill_only) on a
// prefill worker, push the KV (PerfModel::KvTransferTime over NVLink), then decode from the
// reservation with the prefill's first token. Not thread-safe: one thread runs one Simulation;
// separate Simulations share nothing mutable and may run on separate threads.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "bench/replay/outcome.h"
#include "bench/replay/scaling_policy.h"
#include "bench/replay/scenario.h"
#include "bench/replay/trace.h"
#include "common/status.h"

namespace pdpool::bench::replay {

// The pool once a minute (and at each policy decision).
struct TimelinePoint {
  double t_s = 0;
  int prefill_ready = 0;
  int decode_ready = 0;
  int prefill_desired = 0;
  int decode_desired = 0;
  int gpus_held = 0;
  double arrivals_per_s = 0;  // since the previous point
};

struct RunResult {
  std::string policy;
  Summary summary;
  int scale_actions = 0;    // decisions that changed a role's target (each role counted)
  int moves = 0;            // workers moved in place between roles
  int workers_started = 0;  // new workers (pods) started after t = 0
  int peak_gpus = 0;
  int initial_prefill = 0;
  int initial_decode = 0;
  double wall_seconds = 0;  // real time this replay took
  double cpu_seconds = 0;   // CPU time of the thread that ran it
  int64_t engine_steps = 0;
  int64_t sequence_steps = 0;  // Σ sequences per step (the scheduler's work)
  int64_t preemptions = 0;
  int64_t client_retries = 0;   // 503s retried after Retry-After
  int64_t prefill_retries = 0;  // reservation expired before the KV push: the router retried
  std::vector<TimelinePoint> timeline;
  // "t=..s reason" of each decision that changed the pool (of every one with
  // SimulationOptions::record_every_decision), the first 5000.
  std::vector<std::string> decisions;
};

struct SimulationOptions {
  // All GPUs count as held for the whole run and the policy may only move workers between the
  // roles (replica targets that differ from the current counts are ignored).
  bool fixed_budget = false;
  // Also run each step through SimBackend::Step and check its modeled time equals the one the
  // replay computed from the same PerfModel (slow: the backend validates every block id).
  bool verify_backend = false;
  double timeline_period_s = 60;
  bool keep_outcomes = false;          // RunResult has no per-request list; tests ask for it
  bool record_every_decision = false;  // RunResult::decisions: holds too, not only changes
};

class Simulation {
 public:
  Simulation(const Scenario& scenario, const std::vector<TraceRequest>& trace,
             ScalingPolicy* policy, SimulationOptions options = {});
  ~Simulation();
  Simulation(const Simulation&) = delete;
  Simulation& operator=(const Simulation&) = delete;

  // Replays the whole trace; errors when a worker cannot be built (model does not fit the GPU)
  // or the policy's initial configuration does not fit the GPU budget.
  StatusOr<RunResult> Run();
  // Per-request outcomes of the last Run (when options.keep_outcomes; all of them, scored or
  // not: see Scenario::score_from_s).
  const std::vector<RequestOutcome>& outcomes() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pdpool::bench::replay
