// Outcome accounting (see outcome.h).
#include "bench/replay/outcome.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace pdpool::bench::replay {

bool MeetsSlo(const RequestOutcome& r, const SloLimits& slo) {
  return r.completed && r.ttft_s >= 0 && r.ttft_s <= slo.ttft_s && r.tpot_s >= 0 &&
         r.tpot_s <= slo.tpot_s;
}

double Percentile(std::vector<double>* values, double p) {
  if (values->empty()) return 0;
  const double n = static_cast<double>(values->size());
  size_t rank = static_cast<size_t>(std::ceil(std::clamp(p, 0.0, 100.0) / 100.0 * n));
  rank = std::clamp<size_t>(rank, 1, values->size());
  std::nth_element(values->begin(), values->begin() + static_cast<std::ptrdiff_t>(rank - 1),
                   values->end());
  return (*values)[rank - 1];
}

void GpuAccounting::Set(double t, int gpus_held) {
  if (!started_) {
    started_ = true;
    start_ = t;
    last_t_ = t;
  }
  if (t > last_t_) {
    gpu_seconds_ += held_ * (t - last_t_);
    last_t_ = t;
  }
  held_ = gpus_held;
  peak_ = std::max(peak_, gpus_held);
}

double GpuAccounting::GpuSeconds(double t_end) const {
  if (!started_) return 0;
  return gpu_seconds_ + (t_end > last_t_ ? held_ * (t_end - last_t_) : 0.0);
}

Summary Summarize(const std::vector<RequestOutcome>& outcomes, const SloLimits& slo,
                  double gpu_seconds, double duration_s) {
  Summary s;
  s.requests = static_cast<int64_t>(outcomes.size());
  std::vector<double> ttft, tpot;
  ttft.reserve(outcomes.size());
  tpot.reserve(outcomes.size());
  for (const RequestOutcome& r : outcomes) {
    ttft.push_back(r.ttft_s >= 0 ? r.ttft_s : std::numeric_limits<double>::infinity());
    if (!r.completed) {
      ++s.failed;
      continue;
    }
    ++s.completed;
    tpot.push_back(r.tpot_s);
    s.output_tokens += r.output_tokens;
    if (MeetsSlo(r, slo)) {
      ++s.met_slo;
      s.good_output_tokens += r.output_tokens;
    }
  }
  s.attainment = s.requests > 0 ? static_cast<double>(s.met_slo) / s.requests : 0;
  s.ttft_p90_s = Percentile(&ttft, 90);
  s.ttft_p99_s = Percentile(&ttft, 99);
  s.tpot_p90_s = Percentile(&tpot, 90);
  s.tpot_p99_s = Percentile(&tpot, 99);
  s.duration_s = duration_s;
  s.gpu_seconds = gpu_seconds;
  s.gpu_hours = gpu_seconds / 3600.0;
  s.mean_gpus = duration_s > 0 ? gpu_seconds / duration_s : 0;
  s.goodput_per_gpu = gpu_seconds > 0 ? s.good_output_tokens / gpu_seconds : 0;
  s.throughput_per_gpu = gpu_seconds > 0 ? s.output_tokens / gpu_seconds : 0;
  return s;
}

}  // namespace pdpool::bench::replay
