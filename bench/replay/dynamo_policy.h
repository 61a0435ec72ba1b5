// Dynamo-style: NVIDIA Dynamo's SLA planner (throughput-based scaling, components/planner
// planner_core.py), re-implemented on the replay's signals. Every adjustment interval (180 s,
// Dynamo's default):
//  1. observe the interval's request count, mean ISL and OSL, mean TTFT and mean ITL, mean
//     request duration (Dynamo queries the frontend's averages over the interval);
//  2. correction factors: p = mean TTFT / profiled TTFT(ISL); d = mean ITL / profiled ITL at the
//     observed per-worker concurrency (requests / decode workers × duration / interval) and
//     context ISL + OSL/2;
//  3. predict next interval's request count, ISL, OSL (constant: the last value; or arima: an
//     ARIMA(1,1,0) least-squares fit over the last 100 intervals once 5 are seen — Dynamo calls
//     pmdarima's auto_arima, which on such short series mostly picks a random walk);
//  4. prefill = ceil(num_req · ISL / interval · min(1, p) ÷ (profiled prefill tokens/s per GPU at
//     ISL · GPUs per engine)) — min(1, p) as Dynamo's code has it;
//     decode = ceil(num_req · OSL / interval ÷ (best profiled decode tokens/s per GPU whose ITL
//     ≤ target / d at context ISL + OSL/2 · GPUs per engine));
//  5. at least min_endpoint (1) each; over the GPU budget, both scaled down proportionally
//     (prefill rounded, decode gets what is left), as Dynamo does;
//  6. set both replica counts (no stabilization; new workers load, removed ones drain).
// Its "pre-deployment profiling" sweeps the sim PerfModel as Dynamo's profiler sweeps the
// engine: prefill TTFT and throughput per GPU over ISL (one prompt at a time, chunked at the
// token budget, plus the KV push), decode ITL and throughput per GPU over (context, batch up to
// what max_running and the KV cache allow). Lookups interpolate linearly between grid points.
// Not thread-safe (ScalingPolicy); DynamoProfile is immutable after construction.
#pragma once

#include <deque>
#include <string>
#include <vector>

#include "agent/engine/sim/perf_model.h"
#include "bench/replay/scaling_policy.h"
#include "bench/replay/scenario.h"
#include "bench/replay/sizing.h"

namespace pdpool::bench::replay {

class DynamoProfile {
 public:
  DynamoProfile(const Scenario& scenario, const agent::PerfModel& prefill,
                const agent::PerfModel& decode);

  // TTFT of one prompt on an idle prefill worker (prefill + KV push), seconds.
  double PrefillTtft(double isl) const;
  // Prompt tokens/s per GPU of that prefill; 0 when even that misses the TTFT target.
  double PrefillThroughputPerGpu(double isl) const;
  // ITL at `concurrency` sequences of `context` tokens (batch clamped to what fits).
  double DecodeItl(double concurrency, double context) const;
  // Tokens/s per GPU at the largest profiled batch whose ITL <= `itl` at `context`; the
  // smallest batch's when none does (Dynamo's find_best_throughput_per_gpu).
  double BestDecodeThroughputPerGpu(double itl, double context) const;

 private:
  struct Row {  // one context length
    double context = 0;
    std::vector<double> itl;  // by batch − 1
    std::vector<double> throughput_per_gpu;
  };
  const Row& RowFor(double context, const Row** upper, double* weight) const;

  double ttft_target_;
  int prefill_gpus_;
  int decode_gpus_;
  double isl_step_;
  std::vector<double> prefill_ttft_;     // by ISL grid index
  std::vector<double> prefill_seconds_;  // engine time only
  double context_step_;
  std::vector<Row> decode_;
};

// The replica formula of step 4-5 on already looked-up profile numbers (pure; unit-tested).
struct DynamoFormulaInput {
  double num_req = 0;  // predicted requests next interval
  double isl = 0;
  double osl = 0;
  double interval_s = 180;
  double p_correction = 1;
  bool full_prefill_correction = false;   // p instead of min(1, p)
  double prefill_throughput_per_gpu = 0;  // at isl
  double decode_throughput_per_gpu = 0;   // at the corrected ITL and context isl + osl/2
  int prefill_gpus = 1;                   // per engine
  int decode_gpus = 1;
  int gpu_budget = 0;  // <= 0: none
  int min_endpoint = 1;
};
Replicas DynamoReplicaFormula(const DynamoFormulaInput& in);

// Dynamo's load predictors.
class LoadPredictor {
 public:
  enum class Kind { kConstant, kArima };
  explicit LoadPredictor(Kind kind, size_t window = 100) : kind_(kind), window_(window) {}
  void Add(double value);  // NaN counts as 0, as Dynamo's add_data_point does
  double Predict() const;

 private:
  Kind kind_;
  size_t window_;
  std::deque<double> data_;
};

struct DynamoSettings {
  double interval_s = 180;
  LoadPredictor::Kind predictor = LoadPredictor::Kind::kConstant;
  int min_endpoint = 1;
  bool correction = true;  // Dynamo's --no-correction off
  // How the TTFT correction enters the prefill demand: Dynamo's code multiplies by
  // min(1, p) (only a faster-than-profiled prefill lowers it); kFull multiplies by p (the
  // reading "with a correction factor actual_ttft/expected_ttft" of TARGETS.md).
  enum class PrefillCorrection { kClamped, kFull };
  PrefillCorrection prefill_correction = PrefillCorrection::kClamped;
};

class DynamoPolicy final : public ScalingPolicy {
 public:
  DynamoPolicy(const Scenario& scenario, const agent::PerfModel& prefill,
               const agent::PerfModel& decode, DynamoSettings settings, int initial_prefill,
               int initial_decode);
  std::string Name() const override { return "dynamo-style"; }
  double IntervalSeconds() const override { return settings_.interval_s; }
  int InitialPrefill() const override { return initial_prefill_; }
  int InitialDecode() const override { return initial_decode_; }
  PolicyDecision Decide(const PolicyInput& in) override;

  const DynamoProfile& profile() const { return profile_; }

 private:
  const Scenario& scenario_;
  DynamoProfile profile_;
  DynamoSettings settings_;
  int initial_prefill_;
  int initial_decode_;
  LoadPredictor num_req_;
  LoadPredictor isl_;
  LoadPredictor osl_;
  double p_correction_ = 1;
  double d_correction_ = 1;
};

}  // namespace pdpool::bench::replay
