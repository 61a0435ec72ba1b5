// CapacityModel: what one prefill replica and one decode replica can serve within the pool's
// SLO — prefill as prompt tokens/s at which TTFT stays under the limit at the SLO's percentile,
// decode as generated tokens/s at which TPOT does, for a given context length. Seeded from the
// sim backend's PerfModel (model shape, GPU, tensor parallel, calibration), then refined online:
// each interval's warm-worker step times are compared with what the PerfModel predicts for the
// same work, and a smoothed correction factor per role scales the model (so a slower or faster
// real engine — or a miscalibrated sim — is learned in a few intervals). Samples from workers
// still warming up never get here (MetricsSource filters them). Not thread-safe: one per pool,
// used by that pool's planner only.
#pragma once

#include <cstdint>

#include "agent/engine/sim/perf_model.h"
#include "controller/planner/pool_signals.h"

namespace pdpool::controller::planner {

struct CapacitySettings {
  double ttft_seconds = 2.0;
  double tpot_seconds = 0.1;
  double percentile = 90;  // 50..99.9
  // The worker scheduler's limits (agent flags --max-batched-tokens, --max-running).
  int32_t max_batched_tokens = 8192;
  int32_t max_running = 256;
  double gpu_memory_utilization = 0.9;
  // Fraction of the SLO the model plans for (the rest absorbs bursts within an interval).
  double slo_headroom = 0.8;
  // Correction smoothing (weight of the newest sample) and its clamp.
  double correction_alpha = 0.3;
  double correction_min = 0.25;
  double correction_max = 4.0;
  // Fewest steps a role's window must hold before its step times refine the model.
  double min_steps_for_refinement = 20;
};

class CapacityModel {
 public:
  // One PerfModel for both roles (same tensor-parallel size)...
  CapacityModel(agent::PerfModel perf, CapacitySettings settings);
  // ...or one per role (prefill and decode replicas of different sizes).
  CapacityModel(agent::PerfModel prefill_perf, agent::PerfModel decode_perf,
                CapacitySettings settings);

  // Prompt tokens/s one prefill replica sustains with TTFT at the percentile ≤ the limit
  // (× headroom), for prompts of `mean_prompt_tokens`: the largest load at which the waiting
  // time's percentile (M/M/1 tail on the per-prompt service time) plus the prompt's own prefill
  // and KV handoff fits. 0 when even an idle replica misses the target.
  double PrefillTokensPerSecond(double mean_prompt_tokens) const;
  // Generated tokens/s one decode replica sustains with TPOT ≤ the limit (× headroom) at mean
  // context `mean_context_tokens`: the largest batch whose step time fits and whose KV fits the
  // cache, divided by its step time. 0 when even one sequence misses the target.
  double DecodeTokensPerSecond(double mean_context_tokens) const;
  // The batch behind DecodeTokensPerSecond.
  int32_t DecodeBatchAtTarget(double mean_context_tokens) const;

  // Folds one interval's observations in: prefill correction = observed seconds per prompt
  // token / modeled, decode correction = observed mean decode step / modeled step at the
  // observed batch and context. Roles with too few steps in the window are left as they are.
  void Observe(const PoolSignals& signals);

  double prefill_correction() const { return prefill_correction_; }
  double decode_correction() const { return decode_correction_; }
  const agent::PerfModel& prefill_perf() const { return prefill_perf_; }
  const agent::PerfModel& decode_perf() const { return decode_perf_; }
  const CapacitySettings& settings() const { return settings_; }

 private:
  double PrefillServiceSeconds(double prompt_tokens) const;
  double DecodeStepSeconds(int32_t batch, double mean_context_tokens) const;

  agent::PerfModel prefill_perf_;
  agent::PerfModel decode_perf_;
  CapacitySettings settings_;
  int64_t kv_capacity_tokens_;  // of one decode replica
  double prefill_correction_ = 1.0;
  double decode_correction_ = 1.0;
};

}  // namespace pdpool::controller::planner
