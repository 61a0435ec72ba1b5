// Outcome accounting of a replay: per-request results, SLO attainment (DistServe's definition:
// a request meets the SLO when both its TTFT and its TPOT are within the limits), latency
// percentiles, GPU-seconds (GPUs held over time) and goodput per GPU (output tokens of the
// requests that met the SLO ÷ GPU-seconds). Pure functions and small value types;
// thread-compatible.
#pragma once

#include <cstdint>
#include <vector>

namespace pdpool::bench::replay {

struct RequestOutcome {
  double arrival_s = 0;
  int32_t prompt_tokens = 0;
  int32_t output_tokens = 0;
  bool completed = false;  // every output token delivered
  double ttft_s = -1;      // arrival → first token at the router; < 0: never got one
  // (last token − first token) / (output tokens − 1); 0 for one-token outputs; < 0: not
  // completed.
  double tpot_s = -1;
};

struct SloLimits {
  double ttft_s = 2.0;
  double tpot_s = 0.2;
};

bool MeetsSlo(const RequestOutcome& r, const SloLimits& slo);

// Nearest-rank percentile (p in (0, 100]) of `values`; reorders them. 0 when empty.
double Percentile(std::vector<double>* values, double p);

// Integrates GPUs held over time. Times must not go backwards.
class GpuAccounting {
 public:
  void Set(double t, int gpus_held);
  // GPU-seconds from the first Set to t_end (t_end >= the last Set).
  double GpuSeconds(double t_end) const;
  int held() const { return held_; }
  int peak() const { return peak_; }

 private:
  bool started_ = false;
  double start_ = 0;
  double last_t_ = 0;
  int held_ = 0;
  int peak_ = 0;
  double gpu_seconds_ = 0;
};

struct Summary {
  int64_t requests = 0;
  int64_t completed = 0;
  int64_t failed = 0;  // never completed (gave up, reservation expired, ...)
  int64_t met_slo = 0;
  double attainment = 0;  // met / requests
  // TTFT percentiles count requests that never got a first token as infinitely late
  // (reported as +inf); TPOT percentiles are over completed requests.
  double ttft_p90_s = 0;
  double ttft_p99_s = 0;
  double tpot_p90_s = 0;
  double tpot_p99_s = 0;
  int64_t output_tokens = 0;       // of completed requests
  int64_t good_output_tokens = 0;  // of requests that met the SLO
  double duration_s = 0;
  double gpu_seconds = 0;
  double gpu_hours = 0;
  double mean_gpus = 0;           // gpu_seconds / duration
  double goodput_per_gpu = 0;     // good output tokens / GPU-second
  double throughput_per_gpu = 0;  // all output tokens / GPU-second
};

Summary Summarize(const std::vector<RequestOutcome>& outcomes, const SloLimits& slo,
                  double gpu_seconds, double duration_s);

}  // namespace pdpool::bench::replay
