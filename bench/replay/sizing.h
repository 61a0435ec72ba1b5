// Sizing: offline capacity of one prefill and one decode worker from the sim PerfModel, and the
// replicas a load needs — how an operator sizes a fixed deployment from a load test of the
// engine (used for static-peak's starting point and every policy's initial configuration).
//  - prefill: prompt tokens/s of a worker running full steps (max_batched_tokens of prompts of
//    the mean length, each with its causal attention), planned at `utilization` of that;
//  - decode: generated tokens/s at the largest batch whose step time meets the TPOT limit and
//    whose KV fits (context = prompt + output/2, the mean over a sequence's life), bounded by
//    max_running, planned at `utilization`.
// Pure functions; thread-safe.
#pragma once

#include "agent/engine/sim/perf_model.h"
#include "bench/replay/scenario.h"

namespace pdpool::bench::replay {

struct WorkerCapacity {
  double prefill_tokens_per_s = 0;  // one prefill worker, full steps
  double decode_tokens_per_s = 0;   // one decode worker at its TPOT-limited batch
  int decode_batch = 0;
};

WorkerCapacity CapacityAt(const Scenario& scenario, const agent::PerfModel& prefill,
                          const agent::PerfModel& decode, double mean_prompt_tokens,
                          double mean_output_tokens);

struct Replicas {
  int prefill = 1;
  int decode = 1;
};

// Workers for `request_rate` of the given means at `utilization` of capacity (at least 1 each).
Replicas ReplicasFor(const WorkerCapacity& capacity, double request_rate, double mean_prompt_tokens,
                     double mean_output_tokens, double utilization = 0.8);

}  // namespace pdpool::bench::replay
