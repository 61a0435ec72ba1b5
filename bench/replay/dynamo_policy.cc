// Dynamo-style SLA planner (see dynamo_policy.h).
#include "bench/replay/dynamo_policy.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace pdpool::bench::replay {
namespace {

using controller::planner::HasValue;

double Seconds(Duration d) { return std::chrono::duration<double>(d).count(); }

constexpr double kIslStep = 64;
constexpr double kContextStep = 128;

}  // namespace

DynamoProfile::DynamoProfile(const Scenario& scenario, const agent::PerfModel& prefill,
                             const agent::PerfModel& decode)
    : ttft_target_(scenario.ttft_s),
      prefill_gpus_(prefill.tensor_parallel()),
      decode_gpus_(decode.tensor_parallel()),
      isl_step_(kIslStep),
      context_step_(kContextStep) {
  const int max_len = std::max(2, scenario.scheduler.max_model_len);
  const int budget = std::max(1, scenario.scheduler.max_batched_tokens);
  for (double isl = isl_step_; isl <= max_len + isl_step_ - 1; isl += isl_step_) {
    const int tokens = static_cast<int>(isl);
    double seconds = 0;
    for (int done = 0; done < tokens; done += budget) {
      seconds += Seconds(prefill.PrefillTime(std::min(budget, tokens - done), done));
    }
    const int64_t bytes =
        int64_t{tokens} * prefill.KvBytesPerTokenPerGpu() * prefill.tensor_parallel();
    prefill_seconds_.push_back(seconds);
    prefill_ttft_.push_back(seconds + Seconds(prefill.KvTransferTime(bytes)));
  }
  const int64_t kv_tokens = decode.KvCapacityTokens(scenario.gpu_memory_utilization);
  for (double context = context_step_; context <= max_len + context_step_ - 1;
       context += context_step_) {
    Row row;
    row.context = context;
    const int max_batch = static_cast<int>(std::max<int64_t>(
        1, std::min<int64_t>(std::max(1, scenario.scheduler.max_running),
                             static_cast<int64_t>(static_cast<double>(kv_tokens) / context))));
    for (int b = 1; b <= max_batch; ++b) {
      const double itl =
          Seconds(decode.DecodeStepTime(b, static_cast<int64_t>(std::llround(b * context))));
      row.itl.push_back(itl);
      row.throughput_per_gpu.push_back(b / itl / decode_gpus_);
    }
    decode_.push_back(std::move(row));
  }
}

double DynamoProfile::PrefillTtft(double isl) const {
  const double x =
      std::clamp(isl / isl_step_ - 1, 0.0, static_cast<double>(prefill_ttft_.size() - 1));
  const size_t i = static_cast<size_t>(std::floor(x));
  const size_t j = std::min(i + 1, prefill_ttft_.size() - 1);
  const double w = x - static_cast<double>(i);
  return prefill_ttft_[i] * (1 - w) + prefill_ttft_[j] * w;
}

double DynamoProfile::PrefillThroughputPerGpu(double isl) const {
  const double x =
      std::clamp(isl / isl_step_ - 1, 0.0, static_cast<double>(prefill_seconds_.size() - 1));
  const size_t i = static_cast<size_t>(std::floor(x));
  const size_t j = std::min(i + 1, prefill_seconds_.size() - 1);
  const double w = x - static_cast<double>(i);
  if (PrefillTtft(isl) > ttft_target_) return 0;
  const double seconds = prefill_seconds_[i] * (1 - w) + prefill_seconds_[j] * w;
  const double tokens = std::clamp(isl, isl_step_, isl_step_ * prefill_seconds_.size());
  return tokens / seconds / prefill_gpus_;
}

const DynamoProfile::Row& DynamoProfile::RowFor(double context, const Row** upper,
                                                double* weight) const {
  const double x =
      std::clamp(context / context_step_ - 1, 0.0, static_cast<double>(decode_.size() - 1));
  const size_t i = static_cast<size_t>(std::floor(x));
  *upper = &decode_[std::min(i + 1, decode_.size() - 1)];
  *weight = x - static_cast<double>(i);
  return decode_[i];
}

double DynamoProfile::DecodeItl(double concurrency, double context) const {
  const Row* upper = nullptr;
  double w = 0;
  const Row& lower = RowFor(context, &upper, &w);
  auto at = [&](const Row& r) {
    const size_t b = static_cast<size_t>(
        std::clamp(std::lround(concurrency), 1L, static_cast<long>(r.itl.size())));
    return r.itl[b - 1];
  };
  return at(lower) * (1 - w) + at(*upper) * w;
}

double DynamoProfile::BestDecodeThroughputPerGpu(double itl, double context) const {
  const Row* upper = nullptr;
  double w = 0;
  const Row& lower = RowFor(context, &upper, &w);
  auto best = [&](const Row& r) {
    for (size_t b = r.itl.size(); b >= 1; --b) {
      if (r.itl[b - 1] <= itl) return r.throughput_per_gpu[b - 1];
    }
    return r.throughput_per_gpu[0];
  };
  return best(lower) * (1 - w) + best(*upper) * w;
}

Replicas DynamoReplicaFormula(const DynamoFormulaInput& in) {
  Replicas r;
  const double interval = in.interval_s > 0 ? in.interval_s : 1;
  const double correction =
      in.full_prefill_correction ? in.p_correction : std::min(1.0, in.p_correction);
  const double prefill_demand = in.num_req * in.isl / interval * correction;
  if (in.prefill_throughput_per_gpu > 0) {
    r.prefill = static_cast<int>(
        std::ceil(prefill_demand / in.prefill_throughput_per_gpu / std::max(1, in.prefill_gpus)));
  } else {
    r.prefill = in.min_endpoint;  // no throughput meets the TTFT target
  }
  const double decode_demand = in.num_req * in.osl / interval;
  if (in.decode_throughput_per_gpu > 0) {
    r.decode = static_cast<int>(
        std::ceil(decode_demand / in.decode_throughput_per_gpu / std::max(1, in.decode_gpus)));
  } else {
    r.decode = in.min_endpoint;
  }
  r.prefill = std::max(r.prefill, in.min_endpoint);
  r.decode = std::max(r.decode, in.min_endpoint);
  const int total = r.prefill * in.prefill_gpus + r.decode * in.decode_gpus;
  if (in.gpu_budget > 0 && total > in.gpu_budget) {
    const double scale = static_cast<double>(in.gpu_budget) / total;
    // Python's round() rounds halves to even; std::nearbyint does too (default rounding mode).
    r.prefill = std::max(in.min_endpoint, static_cast<int>(std::nearbyint(r.prefill * scale)));
    r.decode = std::max(
        in.min_endpoint,
        static_cast<int>(std::nearbyint(
            static_cast<double>(in.gpu_budget - r.prefill * in.prefill_gpus) / in.decode_gpus)));
  }
  return r;
}

void LoadPredictor::Add(double value) {
  data_.push_back(std::isnan(value) ? 0.0 : value);
  while (data_.size() > window_) data_.pop_front();
}

double LoadPredictor::Predict() const {
  if (data_.empty()) return 0;
  const double last = data_.back();
  if (kind_ == Kind::kConstant || data_.size() < 5) return last;
  // ARIMA(1,1,0) with drift: z_t = c + φ z_{t−1} on the first differences, least squares.
  std::vector<double> z;
  for (size_t i = 1; i < data_.size(); ++i) z.push_back(data_[i] - data_[i - 1]);
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  const double n = static_cast<double>(z.size() - 1);
  for (size_t i = 1; i < z.size(); ++i) {
    sx += z[i - 1];
    sy += z[i];
    sxx += z[i - 1] * z[i - 1];
    sxy += z[i - 1] * z[i];
  }
  const double det = n * sxx - sx * sx;
  double phi = 0, c = n > 0 ? sy / n : 0;
  if (std::abs(det) > 1e-12) {
    phi = std::clamp((n * sxy - sx * sy) / det, -0.99, 0.99);  // stationary differences
    c = (sy - phi * sx) / n;
  }
  return std::max(0.0, last + c + phi * z.back());
}

DynamoPolicy::DynamoPolicy(const Scenario& scenario, const agent::PerfModel& prefill,
                           const agent::PerfModel& decode, DynamoSettings settings,
                           int initial_prefill, int initial_decode)
    : scenario_(scenario),
      profile_(scenario, prefill, decode),
      settings_(settings),
      initial_prefill_(initial_prefill),
      initial_decode_(initial_decode),
      num_req_(settings.predictor),
      isl_(settings.predictor),
      osl_(settings.predictor) {}

PolicyDecision DynamoPolicy::Decide(const PolicyInput& in) {
  PolicyDecision out;
  out.prefill = in.prefill.desired;
  out.decode = in.decode.desired;
  const auto& s = in.signals;
  const double interval = settings_.interval_s;
  // observe_metrics: the interval's totals and means go to the predictors (NaN → 0).
  const double num_req = HasValue(s.request_rate) ? s.request_rate * s.window_seconds : 0;
  num_req_.Add(num_req);
  isl_.Add(s.mean_prompt_tokens);
  osl_.Add(s.mean_output_tokens);
  // make_adjustments: skipped while any metric is missing (no traffic).
  if (!HasValue(in.mean_ttft_s) || !HasValue(in.mean_itl_s) || !HasValue(s.mean_prompt_tokens) ||
      !HasValue(s.mean_output_tokens)) {
    out.reason = "metrics incomplete: holding";
    return out;
  }
  if (settings_.correction) {
    p_correction_ = in.mean_ttft_s / profile_.PrefillTtft(s.mean_prompt_tokens);
    const double duration = HasValue(in.mean_request_seconds) ? in.mean_request_seconds : 0;
    const double concurrency = num_req / std::max(1, in.decode.ready) * duration / interval;
    d_correction_ = in.mean_itl_s / profile_.DecodeItl(concurrency, s.mean_prompt_tokens +
                                                                        s.mean_output_tokens / 2);
  }
  const double next_num_req = num_req_.Predict();
  const double next_isl = isl_.Predict();
  const double next_osl = osl_.Predict();
  const double corrected_itl =
      d_correction_ > 0 ? scenario_.tpot_s / d_correction_ : scenario_.tpot_s;
  DynamoFormulaInput f;
  f.num_req = next_num_req;
  f.isl = next_isl;
  f.osl = next_osl;
  f.interval_s = interval;
  f.p_correction = p_correction_;
  f.full_prefill_correction =
      settings_.prefill_correction == DynamoSettings::PrefillCorrection::kFull;
  f.prefill_throughput_per_gpu = profile_.PrefillThroughputPerGpu(next_isl);
  f.decode_throughput_per_gpu =
      profile_.BestDecodeThroughputPerGpu(corrected_itl, next_isl + next_osl / 2);
  f.prefill_gpus = in.prefill.gpus_per_replica;
  f.decode_gpus = in.decode.gpus_per_replica;
  f.gpu_budget = in.gpu_budget;
  f.min_endpoint = settings_.min_endpoint;
  const Replicas r = DynamoReplicaFormula(f);
  out.prefill = r.prefill;
  out.decode = r.decode;
  char reason[256];
  std::snprintf(reason, sizeof reason,
                "predicted %.0f req (ISL %.0f, OSL %.0f) per %.0fs; correction p=%.2f d=%.2f; "
                "prefill %.0f tok/s/GPU, decode %.0f tok/s/GPU → prefill %d, decode %d",
                next_num_req, next_isl, next_osl, interval, p_correction_, d_correction_,
                f.prefill_throughput_per_gpu, f.decode_throughput_per_gpu, r.prefill, r.decode);
  out.reason = reason;
  return out;
}

}  // namespace pdpool::bench::replay
