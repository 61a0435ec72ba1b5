// CapacityModel implementation: queueing bound for prefill, batch search for decode, smoothed
// step-time corrections.
#include "controller/planner/capacity_model.h"

#include <algorithm>
#include <cmath>

namespace pdpool::controller::planner {

namespace {

double Seconds(Duration d) { return std::chrono::duration<double>(d).count(); }

// The `quantile` (0..1) of an M/M/1 queue's waiting time at utilization `rho` with service rate
// `mu` per second: P(W > t) = rho · exp(−mu (1 − rho) t).
double MM1WaitQuantile(double rho, double mu, double quantile) {
  const double tail = 1.0 - quantile;
  if (rho <= tail) return 0;
  return std::log(rho / tail) / (mu * (1.0 - rho));
}

}  // namespace

CapacityModel::CapacityModel(agent::PerfModel perf, CapacitySettings settings)
    : CapacityModel(perf, perf, settings) {}

CapacityModel::CapacityModel(agent::PerfModel prefill_perf, agent::PerfModel decode_perf,
                             CapacitySettings settings)
    : prefill_perf_(std::move(prefill_perf)),
      decode_perf_(std::move(decode_perf)),
      settings_(settings),
      kv_capacity_tokens_(decode_perf_.KvCapacityTokens(settings.gpu_memory_utilization)) {}

double CapacityModel::PrefillServiceSeconds(double prompt_tokens) const {
  const int tokens = std::max(1, static_cast<int>(std::lround(prompt_tokens)));
  // Long prompts run in chunks of the token budget, each attending to what came before.
  double seconds = 0;
  for (int done = 0; done < tokens;) {
    const int chunk = std::min(tokens - done, std::max(1, settings_.max_batched_tokens));
    seconds += Seconds(prefill_perf_.PrefillTime(chunk, done));
    done += chunk;
  }
  return seconds * prefill_correction_;
}

double CapacityModel::DecodeStepSeconds(int32_t batch, double mean_context_tokens) const {
  const auto total = static_cast<int64_t>(std::llround(batch * std::max(1.0, mean_context_tokens)));
  return Seconds(decode_perf_.DecodeStepTime(batch, total)) * decode_correction_;
}

double CapacityModel::PrefillTokensPerSecond(double mean_prompt_tokens) const {
  if (!(mean_prompt_tokens > 0)) mean_prompt_tokens = 1;
  const double service = PrefillServiceSeconds(mean_prompt_tokens);
  const double handoff = Seconds(prefill_perf_.KvTransferTime(static_cast<int64_t>(
      std::llround(mean_prompt_tokens * static_cast<double>(prefill_perf_.KvBytesPerToken())))));
  const double budget = settings_.ttft_seconds * settings_.slo_headroom - service - handoff;
  if (budget < 0 || service <= 0) return 0;
  const double mu = 1.0 / service;
  const double quantile = std::clamp(settings_.percentile / 100.0, 0.5, 0.999);
  // Largest utilization whose waiting-time quantile fits the budget (monotone in rho).
  double lo = 0, hi = 0.98;
  if (MM1WaitQuantile(hi, mu, quantile) <= budget) {
    lo = hi;
  } else {
    for (int i = 0; i < 50; ++i) {
      const double mid = (lo + hi) / 2;
      (MM1WaitQuantile(mid, mu, quantile) <= budget ? lo : hi) = mid;
    }
  }
  return lo * mu * mean_prompt_tokens;
}

int32_t CapacityModel::DecodeBatchAtTarget(double mean_context_tokens) const {
  const double limit = settings_.tpot_seconds * settings_.slo_headroom;
  const double context = std::max(1.0, mean_context_tokens);
  int32_t max_batch = std::max(1, settings_.max_running);
  if (kv_capacity_tokens_ > 0) {
    max_batch = std::min<int64_t>(max_batch, static_cast<int64_t>(kv_capacity_tokens_ / context));
  } else {
    return 0;  // the weights leave no room for a KV cache
  }
  if (max_batch < 1 || DecodeStepSeconds(1, context) > limit) return 0;
  int32_t lo = 1, hi = max_batch;  // step time grows with the batch: largest batch that fits
  while (lo < hi) {
    const int32_t mid = lo + (hi - lo + 1) / 2;
    if (DecodeStepSeconds(mid, context) <= limit) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

double CapacityModel::DecodeTokensPerSecond(double mean_context_tokens) const {
  const int32_t batch = DecodeBatchAtTarget(mean_context_tokens);
  if (batch == 0) return 0;
  return batch / DecodeStepSeconds(batch, mean_context_tokens);
}

void CapacityModel::Observe(const PoolSignals& signals) {
  auto fold = [&](double* correction, double sample) {
    if (!(sample > 0) || !std::isfinite(sample)) return;
    sample = std::clamp(sample, settings_.correction_min, settings_.correction_max);
    *correction =
        (1 - settings_.correction_alpha) * *correction + settings_.correction_alpha * sample;
  };
  auto enough_steps = [&](const RoleSignals& role) {
    return role.warm_workers > 0 && HasValue(role.steps_per_second) &&
           HasValue(role.mean_step_seconds) && HasValue(role.tokens_per_second) &&
           role.steps_per_second * signals.window_seconds >= settings_.min_steps_for_refinement;
  };
  if (enough_steps(signals.prefill) && signals.prefill.tokens_per_second > 0) {
    const double tokens_per_step =
        signals.prefill.tokens_per_second / signals.prefill.steps_per_second;
    const int chunk = std::max(1, static_cast<int>(std::lround(tokens_per_step)));
    fold(&prefill_correction_,
         signals.prefill.mean_step_seconds / Seconds(prefill_perf_.PrefillTime(chunk, 0)));
  }
  if (enough_steps(signals.decode) && HasValue(signals.mean_prompt_tokens) &&
      HasValue(signals.mean_output_tokens)) {
    const double batch = HasValue(signals.decode.mean_batch)
                             ? signals.decode.mean_batch
                             : signals.decode.tokens_per_second / signals.decode.steps_per_second;
    const int b = std::max(1, static_cast<int>(std::lround(batch)));
    const double context = signals.mean_prompt_tokens + signals.mean_output_tokens / 2;
    const auto total = static_cast<int64_t>(std::llround(b * std::max(1.0, context)));
    fold(&decode_correction_,
         signals.decode.mean_step_seconds / Seconds(decode_perf_.DecodeStepTime(b, total)));
  }
}

}  // namespace pdpool::controller::planner
