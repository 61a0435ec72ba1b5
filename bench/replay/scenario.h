// Scenario: everything one replay run is set up with (trace, model, GPU, tensor parallel, SLO,
// GPU budget, worker start, scheduler limits), filled from the command line and printed at the
// top of the report. Plain value; thread-compatible.
#pragma once

#include <cstdint>
#include <string>

#include "agent/engine/scheduler.h"
#include "agent/engine/sim/perf_model.h"
#include "agent/model/model_config.h"
#include "common/status.h"

namespace pdpool::bench::replay {

struct Scenario {
  std::string trace_path;
  double rate_multiplier = 1.0;
  double shift_window_s = 60;  // the copies' random shifts (trace.h)
  double window_start_s = 0;
  double window_end_s = 0;  // <= 0: end of the trace
  uint64_t seed = 1;

  std::string model_name = "llama-3.1-70b";
  agent::ModelConfig model;
  std::string gpu = "GB200";
  int prefill_tp = 4;  // GPUs per prefill worker
  int decode_tp = 4;   // GPUs per decode worker
  double gpu_memory_utilization = 0.9;
  agent::SchedulerConfig scheduler;  // of every worker

  double ttft_s = 2.0;
  double tpot_s = 0.2;
  double percentile = 99;
  int gpus = 72;  // the rack: the most GPUs the pool may hold

  double worker_start_s = 0;      // a new worker's load time before it serves
  double move_s = 1.0;            // an in-place role move after its drain
  double reservation_ttl_s = 30;  // the decode worker's unclaimed-reservation TTL (worker flag)
  double retry_after_s = 1;       // a client retries a 503 after Retry-After (the worker's 1 s)
  double client_timeout_s = 60;   // a request not started by then is given up (fails the SLO)
  double metrics_warmup_s = 60;   // MetricsQuery::warmup: new workers' samples left out that long
  // Scoring starts here: requests arriving earlier are replayed (every policy adapts to the
  // trace) but not counted, and GPU-seconds count from here.
  double score_from_s = 0;
};

// The model's PerfModel at `tp` GPUs (the sim backend's catalog and built-in calibration).
StatusOr<agent::PerfModel> MakePerfModel(const Scenario& scenario, int tp);

}  // namespace pdpool::bench::replay
