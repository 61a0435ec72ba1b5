// Static-peak sizing (see static_peak_policy.h).
#include "bench/replay/static_peak_policy.h"

#include <algorithm>
#include <chrono>
#include <cstdio>

#include "bench/replay/simulation.h"

namespace pdpool::bench::replay {
namespace {

struct Trial {
  double attainment = 1;
  int64_t ttft_misses = 0;
  int64_t tpot_misses = 0;
};

}  // namespace

StatusOr<StaticPeakSizing> SizeStaticPeak(const Scenario& full_scenario,
                                          const std::vector<TraceRequest>& trace,
                                          double attainment_target, bool by_replay) {
  Scenario scenario = full_scenario;
  scenario.score_from_s = 0;  // the peak windows are scored whole
  const auto wall_start = std::chrono::steady_clock::now();
  StaticPeakSizing out;
  const TraceStats stats = ComputeTraceStats(trace);
  auto prefill_perf = MakePerfModel(scenario, scenario.prefill_tp);
  if (!prefill_perf.ok()) return prefill_perf.status();
  auto decode_perf = MakePerfModel(scenario, scenario.decode_tp);
  if (!decode_perf.ok()) return decode_perf.status();

  const TraceStats::Minute& pm = stats.busiest_by_prompt_tokens;
  const TraceStats::Minute& dm = stats.busiest_by_output_tokens;
  const WorkerCapacity pc = CapacityAt(scenario, *prefill_perf, *decode_perf, pm.mean_prompt_tokens,
                                       pm.mean_output_tokens);
  const WorkerCapacity dc = CapacityAt(scenario, *prefill_perf, *decode_perf, dm.mean_prompt_tokens,
                                       dm.mean_output_tokens);
  out.seed.prefill =
      ReplicasFor(pc, pm.requests_per_s, pm.mean_prompt_tokens, pm.mean_output_tokens).prefill;
  out.seed.decode =
      ReplicasFor(dc, dm.requests_per_s, dm.mean_prompt_tokens, dm.mean_output_tokens).decode;

  out.by_replay = by_replay;
  if (!by_replay) {
    out.chosen = out.seed;
    out.met = true;
    out.log.push_back("sized from the PerfModel alone (no replays)");
    return out;
  }
  // The peak windows, each with the minute before it (queues build up as they would).
  std::vector<std::vector<TraceRequest>> windows;
  std::vector<double> starts = {pm.start_s};
  if (std::abs(dm.start_s - pm.start_s) >= 60) starts.push_back(dm.start_s);
  for (double s : starts) {
    const double from = std::max(0.0, s - 60);
    windows.push_back(SelectWindow(trace, from, s + 60));
  }

  auto fits = [&](const Replicas& r) {
    return r.prefill >= 1 && r.decode >= 1 &&
           r.prefill * scenario.prefill_tp + r.decode * scenario.decode_tp <= scenario.gpus;
  };
  auto run = [&](const Replicas& r) -> StatusOr<Trial> {
    Trial t;
    int64_t requests = 0, met = 0;
    for (const auto& w : windows) {
      FixedPolicy policy("static-peak", r.prefill, r.decode);
      SimulationOptions options;
      options.keep_outcomes = true;
      options.timeline_period_s = 0;
      Simulation sim(scenario, w, &policy, options);
      auto result = sim.Run();
      if (!result.ok()) return result.status();
      requests += result->summary.requests;
      met += result->summary.met_slo;
      for (const RequestOutcome& o : sim.outcomes()) {
        if (!o.completed || o.ttft_s < 0 || o.ttft_s > scenario.ttft_s) ++t.ttft_misses;
        if (o.completed && o.tpot_s > scenario.tpot_s) ++t.tpot_misses;
      }
    }
    t.attainment = requests > 0 ? static_cast<double>(met) / requests : 1;
    char line[160];
    std::snprintf(line, sizeof line,
                  "P=%d D=%d: attainment %.4f on the peak minutes (TTFT misses %lld, TPOT "
                  "misses %lld)",
                  r.prefill, r.decode, t.attainment, static_cast<long long>(t.ttft_misses),
                  static_cast<long long>(t.tpot_misses));
    out.log.push_back(line);
    return t;
  };

  Replicas r = out.seed;
  r.prefill = std::max(1, r.prefill);
  r.decode = std::max(1, r.decode);
  while (!fits(r) && (r.prefill > 1 || r.decode > 1)) {
    (r.prefill * scenario.prefill_tp >= r.decode * scenario.decode_tp ? r.prefill : r.decode)--;
  }
  auto trial = run(r);
  if (!trial.ok()) return trial.status();
  // Grow until the peak is served (or the rack is full).
  while (trial->attainment < attainment_target) {
    Replicas next = r;
    (trial->ttft_misses >= trial->tpot_misses ? next.prefill : next.decode)++;
    if (!fits(next)) {
      Replicas other = r;
      (trial->ttft_misses >= trial->tpot_misses ? other.decode : other.prefill)++;
      if (!fits(other)) break;
      next = other;
    }
    r = next;
    trial = run(r);
    if (!trial.ok()) return trial.status();
  }
  out.met = trial->attainment >= attainment_target;
  // Shrink each role while the peak is still served.
  if (out.met) {
    for (int role = 0; role < 2; ++role) {
      for (;;) {
        Replicas next = r;
        int& n = role == 0 ? next.prefill : next.decode;
        if (n <= 1) break;
        --n;
        auto t = run(next);
        if (!t.ok()) return t.status();
        if (t->attainment < attainment_target) break;
        r = next;
      }
    }
  }
  out.chosen = r;
  out.wall_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - wall_start).count();
  return out;
}

}  // namespace pdpool::bench::replay
