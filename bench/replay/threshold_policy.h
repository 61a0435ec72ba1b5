// Threshold (HPA-like): what a Kubernetes HorizontalPodAutoscaler user sets up on the worker
// metrics — every sync period (15 s, HPA's default) each role moves by at most one replica:
//  - prefill: up when the queue depth per prefill worker (pdpool_worker_requests_waiting,
//    mean over the role's workers) exceeds `prefill_waiting_up` (default 8: about one full
//    8192-token step of 1k-token prompts waiting, i.e. a few hundred ms of queueing), down when
//    it is below `prefill_waiting_down` (0.5);
//  - decode: up when the mean KV usage exceeds `decode_kv_up` (0.8) or decode requests wait
//    for a batch slot (mean waiting per worker > `decode_waiting_up`, 1: the batch is full at
//    max_running), down when KV usage is below `decode_kv_down` (0.3) and nothing waits;
//  - scale-down stabilization as HPA's default behaviour: the target is the highest
//    recommendation of the last 300 s, so a role shrinks only after 5 minutes of low load.
// Both roles within [1, what the GPU budget leaves]. Not thread-safe (ScalingPolicy).
#pragma once

#include <deque>

#include "bench/replay/scaling_policy.h"

namespace pdpool::bench::replay {

struct ThresholdSettings {
  double interval_s = 15;
  double prefill_waiting_up = 8;
  double prefill_waiting_down = 0.5;
  double decode_kv_up = 0.8;
  double decode_kv_down = 0.3;
  double decode_waiting_up = 1;
  double stabilization_s = 300;
};

class ThresholdPolicy final : public ScalingPolicy {
 public:
  ThresholdPolicy(ThresholdSettings settings, int initial_prefill, int initial_decode)
      : settings_(settings), initial_prefill_(initial_prefill), initial_decode_(initial_decode) {}
  std::string Name() const override { return "threshold"; }
  double IntervalSeconds() const override { return settings_.interval_s; }
  int InitialPrefill() const override { return initial_prefill_; }
  int InitialDecode() const override { return initial_decode_; }
  PolicyDecision Decide(const PolicyInput& in) override;

 private:
  struct Recommendation {
    double t;
    int prefill;
    int decode;
  };
  ThresholdSettings settings_;
  int initial_prefill_;
  int initial_decode_;
  std::deque<Recommendation> history_;
};

}  // namespace pdpool::bench::replay
