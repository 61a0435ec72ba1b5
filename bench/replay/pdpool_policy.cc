// pdpool policy (see pdpool_policy.h).
#include "bench/replay/pdpool_policy.h"

#include <algorithm>

namespace pdpool::bench::replay {
namespace {

namespace planner = controller::planner;

planner::Planner MakePlanner(const Scenario& scenario, const agent::PerfModel& prefill,
                             const agent::PerfModel& decode, const PdpoolSettings& settings) {
  planner::CapacitySettings capacity;
  capacity.ttft_seconds = scenario.ttft_s;
  capacity.tpot_seconds = scenario.tpot_s;
  capacity.percentile = scenario.percentile;
  capacity.max_batched_tokens = scenario.scheduler.max_batched_tokens;
  capacity.max_running = scenario.scheduler.max_running;
  capacity.gpu_memory_utilization = scenario.gpu_memory_utilization;
  planner::PlannerSettings ps;
  ps.interval =
      std::chrono::duration_cast<Duration>(std::chrono::duration<double>(settings.interval_s));
  ps.scale_down_stabilization = std::chrono::duration_cast<Duration>(
      std::chrono::duration<double>(settings.scale_down_stabilization_s));
  return planner::Planner(ps, planner::CapacityModel(prefill, decode, capacity));
}

}  // namespace

PdpoolPolicy::PdpoolPolicy(const Scenario& scenario, const agent::PerfModel& prefill,
                           const agent::PerfModel& decode, PdpoolSettings settings,
                           int initial_prefill, int initial_decode)
    : settings_(settings),
      planner_(MakePlanner(scenario, prefill, decode, settings)),
      initial_prefill_(initial_prefill),
      initial_decode_(initial_decode) {}

PolicyDecision PdpoolPolicy::Decide(const PolicyInput& in) {
  planner::PlannerInput pi;
  pi.now = in.wall_now;
  pi.signals = in.signals;
  if (!planner::HasValue(in.signals.request_rate)) {
    pi.signals_status = Status::NotFound("no router samples in the window");
  }
  const int gp = std::max(1, in.prefill.gpus_per_replica);
  const int gd = std::max(1, in.decode.gpus_per_replica);
  pi.prefill.current = in.prefill.desired;
  pi.prefill.ready = in.prefill.ready;
  pi.prefill.min = 1;
  pi.prefill.max = std::max(1, (in.gpu_budget - gd) / gp);
  pi.prefill.gpus_per_replica = gp;
  pi.decode.current = in.decode.desired;
  pi.decode.ready = in.decode.ready;
  pi.decode.min = 1;
  pi.decode.max = std::max(1, (in.gpu_budget - gp) / gd);
  pi.decode.gpus_per_replica = gd;
  pi.gpu_limit = in.gpu_budget;
  pi.rebalance_in_place = true;
  const planner::PlannerDecision d = planner_.Decide(pi);
  PolicyDecision out;
  out.prefill = d.prefill;
  out.decode = d.decode;
  out.moves_to_prefill = d.moves_to_prefill;
  out.reason = std::string(planner::DecisionKindName(d.kind)) + ": " + d.reason;
  return out;
}

}  // namespace pdpool::bench::replay
