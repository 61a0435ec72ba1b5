// Threshold policy (see threshold_policy.h).
#include "bench/replay/threshold_policy.h"

#include <algorithm>
#include <cstdio>

namespace pdpool::bench::replay {

using controller::planner::HasValue;

PolicyDecision ThresholdPolicy::Decide(const PolicyInput& in) {
  const auto& p = in.signals.prefill;
  const auto& d = in.signals.decode;
  int want_p = in.prefill.desired;
  int want_d = in.decode.desired;
  const double p_waiting =
      p.warm_workers > 0 && HasValue(p.requests_waiting) ? p.requests_waiting / p.warm_workers : -1;
  const double d_waiting =
      d.warm_workers > 0 && HasValue(d.requests_waiting) ? d.requests_waiting / d.warm_workers : -1;
  const double d_kv = HasValue(d.kv_usage_ratio) ? d.kv_usage_ratio : -1;
  // No warm worker reports (all just started): hold, as HPA does with missing metrics.
  if (p_waiting >= 0) {
    if (p_waiting > settings_.prefill_waiting_up) {
      ++want_p;
    } else if (p_waiting < settings_.prefill_waiting_down) {
      --want_p;
    }
  }
  if (d_kv >= 0 && d_waiting >= 0) {
    if (d_kv > settings_.decode_kv_up || d_waiting > settings_.decode_waiting_up) {
      ++want_d;
    } else if (d_kv < settings_.decode_kv_down && d_waiting <= 0) {
      --want_d;
    }
  }
  const int gp = std::max(1, in.prefill.gpus_per_replica);
  const int gd = std::max(1, in.decode.gpus_per_replica);
  want_p = std::clamp(want_p, 1, std::max(1, (in.gpu_budget - gd) / gp));
  want_d = std::clamp(want_d, 1, std::max(1, (in.gpu_budget - gp) / gd));
  // Stabilization: scale down only to the highest recommendation of the window.
  history_.push_back({in.now_s, want_p, want_d});
  while (!history_.empty() && history_.front().t < in.now_s - settings_.stabilization_s) {
    history_.pop_front();
  }
  int max_p = want_p, max_d = want_d;
  for (const Recommendation& r : history_) {
    max_p = std::max(max_p, r.prefill);
    max_d = std::max(max_d, r.decode);
  }
  PolicyDecision out;
  out.prefill = want_p > in.prefill.desired ? want_p : std::min(in.prefill.desired, max_p);
  out.decode = want_d > in.decode.desired ? want_d : std::min(in.decode.desired, max_d);
  // The rack: a scale-up that does not fit waits (HPA's pods would stay Pending).
  while (out.prefill * gp + out.decode * gd > in.gpu_budget &&
         (out.prefill > in.prefill.desired || out.decode > in.decode.desired)) {
    if (out.prefill > in.prefill.desired) {
      --out.prefill;
    } else {
      --out.decode;
    }
  }
  char reason[200];
  std::snprintf(reason, sizeof reason,
                "prefill waiting/worker %.2f, decode KV %.2f waiting/worker %.2f → prefill %d, "
                "decode %d",
                p_waiting, d_kv, d_waiting, out.prefill, out.decode);
  out.reason = reason;
  return out;
}

}  // namespace pdpool::bench::replay
