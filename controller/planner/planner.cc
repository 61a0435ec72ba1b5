// Planner implementation: forecast → needed replicas → stabilization, budget, moves → decision.
#include "controller/planner/planner.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

namespace pdpool::controller::planner {

const char* DecisionKindName(DecisionKind kind) {
  switch (kind) {
    case DecisionKind::kHold:
      return "hold";
    case DecisionKind::kScaleUp:
      return "scale_up";
    case DecisionKind::kScaleDown:
      return "scale_down";
    case DecisionKind::kRebalance:
      return "rebalance";
    case DecisionKind::kPending:
      return "pending";
    case DecisionKind::kNoMetrics:
      return "no_metrics";
  }
  return "hold";
}

namespace {

// Replicas for `demand` at `per_replica` each; `fallback` when one replica serves nothing
// within the SLO (the model says no size is enough: go as large as allowed).
int Needed(double demand, double per_replica, int fallback) {
  if (!(demand > 0)) return 0;
  if (!(per_replica > 0)) return fallback;
  const double n = std::ceil(demand / per_replica - 1e-9);
  return n > fallback ? fallback : static_cast<int>(n);
}

std::string Fixed(double v, int digits) {
  char buffer[64];
  std::snprintf(buffer, sizeof(buffer), "%.*f", digits, v);
  return buffer;
}

}  // namespace

Planner::Planner(PlannerSettings settings, CapacityModel capacity,
                 ForecasterSettings forecaster_settings)
    : settings_(settings), capacity_(std::move(capacity)), forecaster_(forecaster_settings) {}

PlannerDecision Planner::Decide(const PlannerInput& in) {
  PlannerDecision d;
  d.prefill = in.prefill.current;
  d.decode = in.decode.current;
  const auto hold_text = [&] {
    return "holding prefill " + std::to_string(d.prefill) + ", decode " + std::to_string(d.decode);
  };
  if (!in.signals_status.ok()) {
    d.kind = DecisionKind::kNoMetrics;
    d.reason = hold_text() + ": " + in.signals_status.message();
    return d;
  }
  const PoolSignals& s = in.signals;
  if (!HasValue(s.request_rate)) {
    d.kind = DecisionKind::kNoMetrics;
    d.reason = hold_text() + ": no request rate in the metrics";
    return d;
  }

  capacity_.Observe(s);
  forecaster_.Observe(s.request_rate, s.mean_prompt_tokens, s.mean_output_tokens);
  const double rate = forecaster_.PredictedRate();
  d.predicted_request_rate = rate;
  const double isl = forecaster_.PredictedPromptTokens();
  const double osl = forecaster_.PredictedOutputTokens();
  const double planned_rate = rate * settings_.load_headroom;

  const double prefill_each = capacity_.PrefillTokensPerSecond(isl);
  const double decode_each = capacity_.DecodeTokensPerSecond(isl + osl / 2);
  int need_p = Needed(planned_rate * isl, prefill_each, in.prefill.max);
  int need_d = Needed(planned_rate * osl, decode_each, in.decode.max);

  // Latency feedback: the model can be wrong (burstier arrivals, longer tails than the means
  // say, a slower host). A role whose own latency misses the SLO gets one more replica than it
  // has ready — unless an earlier action is still starting (its capacity is not
  // in these metrics yet; reacting again would double count: the pending guard).
  const bool prefill_pending = in.prefill.ready < in.prefill.current;
  const bool decode_pending = in.decode.ready < in.decode.current;
  const double ttft_limit = capacity_.settings().ttft_seconds;
  const double tpot_limit = capacity_.settings().tpot_seconds;
  const bool ttft_breach = HasValue(s.ttft_seconds) && s.ttft_seconds > ttft_limit;
  const bool tpot_breach = HasValue(s.tpot_seconds) && s.tpot_seconds > tpot_limit;
  // (A queue known to be empty points elsewhere — transfer, router — and adds nothing; an
  // unknown one, e.g. no warm prefill worker yet, does not stop the feedback.)
  if (ttft_breach && !prefill_pending && !(s.prefill.requests_waiting == 0)) {
    need_p = std::max(need_p, in.prefill.ready + 1);
  }
  if (tpot_breach && !decode_pending) need_d = std::max(need_d, in.decode.ready + 1);
  need_p = std::clamp(need_p, in.prefill.min, std::max(in.prefill.min, in.prefill.max));
  need_d = std::clamp(need_d, in.decode.min, std::max(in.decode.min, in.decode.max));
  d.needed_prefill = need_p;
  d.needed_decode = need_d;

  // Stabilization: scale down only to the highest recommendation of the whole window, and only
  // once the window is covered (a restarted controller first watches a full window).
  history_.push_back({in.now, need_p, need_d});
  while (!history_.empty() && history_.front().at < in.now - settings_.scale_down_stabilization) {
    history_.pop_front();
  }
  int window_p = need_p, window_d = need_d;
  for (const auto& r : history_) {
    window_p = std::max(window_p, r.prefill);
    window_d = std::max(window_d, r.decode);
  }
  if (first_seen_ == WallTime{}) first_seen_ = in.now;
  const bool window_covered = in.now - first_seen_ >= settings_.scale_down_stabilization;

  // Per role: up at once; down to the window's maximum, never while this role breaches or
  // anything is still starting.
  auto target = [&](const RoleState& role, int need, int window_max, bool breach) {
    if (need > role.current) return need;
    if (!window_covered || breach || prefill_pending || decode_pending) return role.current;
    return std::min(role.current, window_max);
  };
  int target_p = target(in.prefill, need_p, window_p, ttft_breach);
  int target_d = target(in.decode, need_d, window_d, tpot_breach);

  // In-place moves: one role short, the other holding more than it needs right now. The donor
  // gives up to its surplus over the current need (not the window's maximum: a move replaces a
  // pod start of minutes by a drain of seconds, and the donor's own SLO is checked), and only
  // ready workers move.
  int moves = 0;
  const bool same_shape = in.prefill.gpus_per_replica == in.decode.gpus_per_replica;
  if (in.rebalance_in_place && same_shape) {
    auto surplus = [](const RoleState& donor, int donor_need) {
      return std::min(donor.current - std::max(donor_need, donor.min), donor.ready);
    };
    if (target_p > in.prefill.current && !tpot_breach) {
      moves = std::max(0, std::min(target_p - in.prefill.current, surplus(in.decode, need_d)));
    } else if (target_d > in.decode.current && !ttft_breach) {
      moves = -std::max(0, std::min(target_d - in.decode.current, surplus(in.prefill, need_p)));
    }
  }
  int base_p = in.prefill.current + moves;  // after the moves, before new pods
  int base_d = in.decode.current - moves;
  if (moves > 0) target_d = std::min(target_d, base_d);
  if (moves < 0) target_p = std::min(target_p, base_p);

  // GPU limit: new pods only into what is free; share it by relative deficit.
  const int gp = std::max(1, in.prefill.gpus_per_replica);
  const int gd = std::max(1, in.decode.gpus_per_replica);
  int final_p = std::min(target_p, base_p);
  int final_d = std::min(target_d, base_d);
  int want_p = std::max(0, target_p - base_p);
  int want_d = std::max(0, target_d - base_d);
  int spare = in.gpu_limit > 0 ? in.gpu_limit - (base_p * gp + base_d * gd) : (1 << 30);
  bool budget_cut = false;
  while (want_p > 0 || want_d > 0) {
    const double short_p = want_p > 0 ? static_cast<double>(want_p) / std::max(1, target_p) : -1;
    const double short_d = want_d > 0 ? static_cast<double>(want_d) / std::max(1, target_d) : -1;
    const bool pick_p = short_p >= short_d;
    const int cost = pick_p ? gp : gd;
    if (cost > spare) {
      // The other role may still fit.
      const int other_cost = pick_p ? gd : gp;
      const int other_want = pick_p ? want_d : want_p;
      budget_cut = true;
      if (other_want > 0 && other_cost <= spare) {
        (pick_p ? want_p : want_d) = 0;
        continue;
      }
      break;
    }
    spare -= cost;
    if (pick_p) {
      ++final_p;
      --want_p;
    } else {
      ++final_d;
      --want_d;
    }
  }
  // A scale-down in one role never frees GPUs for the other in the same step (they are freed
  // only once drained); the sizes above already account for that.
  d.prefill = final_p;
  d.decode = final_d;
  d.moves_to_prefill = moves;

  std::ostringstream why;
  why << "forecast " << Fixed(rate, 2) << " req/s (prompt " << Fixed(isl, 0) << ", output "
      << Fixed(osl, 0) << " tokens): prefill needs " << need_p << " at " << Fixed(prefill_each, 0)
      << " tok/s each, decode needs " << need_d << " at " << Fixed(decode_each, 0) << " tok/s each";
  if (ttft_breach) why << "; TTFT " << Fixed(s.ttft_seconds, 3) << "s over the SLO";
  if (tpot_breach) why << "; TPOT " << Fixed(s.tpot_seconds, 3) << "s over the SLO";
  if (budget_cut) why << "; limited by the GPU budget / free GPUs (" << in.gpu_limit << ")";
  const bool up = final_p > base_p || final_d > base_d;
  const bool down = final_p < base_p || final_d < base_d;
  if (moves != 0) {
    d.kind = DecisionKind::kRebalance;
    why << "; moving " << std::abs(moves) << (moves > 0 ? " decode→prefill" : " prefill→decode");
  } else if (up) {
    d.kind = DecisionKind::kScaleUp;
  } else if (down) {
    d.kind = DecisionKind::kScaleDown;
  } else if (prefill_pending || decode_pending) {
    d.kind = DecisionKind::kPending;
    why << "; waiting for " << (in.prefill.current - in.prefill.ready) << " prefill and "
        << (in.decode.current - in.decode.ready) << " decode replicas to become ready";
  } else {
    d.kind = DecisionKind::kHold;
  }
  why << " → prefill " << in.prefill.current << "→" << d.prefill << ", decode " << in.decode.current
      << "→" << d.decode;
  d.reason = why.str();
  return d;
}

}  // namespace pdpool::controller::planner
