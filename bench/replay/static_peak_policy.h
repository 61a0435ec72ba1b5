// Static-peak: a fixed prefill:decode deployment sized offline for the trace's busiest minute,
// as an operator sizes a deployment that never scales. Also FixedPolicy, any fixed split (the
// fixed-budget comparison's splits). Not thread-safe (ScalingPolicy).
#pragma once

#include <string>
#include <vector>

#include "bench/replay/scaling_policy.h"
#include "bench/replay/scenario.h"
#include "bench/replay/sizing.h"
#include "bench/replay/trace.h"
#include "common/status.h"

namespace pdpool::bench::replay {

class FixedPolicy final : public ScalingPolicy {
 public:
  FixedPolicy(std::string name, int prefill, int decode)
      : name_(std::move(name)), prefill_(prefill), decode_(decode) {}
  std::string Name() const override { return name_; }
  double IntervalSeconds() const override { return 0; }
  int InitialPrefill() const override { return prefill_; }
  int InitialDecode() const override { return decode_; }
  PolicyDecision Decide(const PolicyInput&) override { return {prefill_, decode_, 0, "fixed"}; }

 private:
  std::string name_;
  int prefill_;
  int decode_;
};

struct StaticPeakSizing {
  Replicas seed;     // from the PerfModel capacity at the busiest minutes' load
  Replicas chosen;   // the smallest that met the attainment target on them
  bool met = false;  // false: even the largest that fits the GPUs missed it
  bool by_replay = true;
  std::vector<std::string> log;  // one line per configuration tried
  double wall_seconds = 0;
};

// Sizes static-peak: P from the minute with the most prompt tokens, D from the minute with the
// most output tokens (CapacityAt at those minutes' means, 80% utilization) as the starting
// point; then replays of those minutes (each with the minute before it, from a warm start)
// grow the role whose SLO part misses more until attainment >= target, and shrink each role
// while it still holds — the smallest fixed deployment that serves the peak.
// With by_replay false: the seed alone (no replays).
StatusOr<StaticPeakSizing> SizeStaticPeak(const Scenario& scenario,
                                          const std::vector<TraceRequest>& trace,
                                          double attainment_target, bool by_replay = true);

}  // namespace pdpool::bench::replay
