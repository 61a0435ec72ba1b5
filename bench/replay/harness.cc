// Harness (see harness.h).
#include "bench/replay/harness.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

namespace pdpool::bench::replay {

void ParallelFor(int n, int jobs, const std::function<void(int)>& fn) {
  jobs = std::clamp(jobs, 1, std::max(1, n));
  if (jobs == 1) {
    for (int i = 0; i < n; ++i) fn(i);
    return;
  }
  std::atomic<int> next{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < jobs; ++t) {
    threads.emplace_back([&] {
      for (int i = next++; i < n; i = next++) fn(i);
    });
  }
  for (std::thread& t : threads) t.join();
}

namespace {

struct Models {
  agent::PerfModel prefill;
  agent::PerfModel decode;
};

StatusOr<Models> BuildModels(const Scenario& scenario) {
  auto prefill = MakePerfModel(scenario, scenario.prefill_tp);
  if (!prefill.ok()) return prefill.status();
  auto decode = MakePerfModel(scenario, scenario.decode_tp);
  if (!decode.ok()) return decode.status();
  return Models{std::move(prefill).value(), std::move(decode).value()};
}

// Every autoscaler's starting size: what the PerfModel capacity gives (80% utilization) for the
// busiest minute of the warm-up (the first minute without one) — a pool already running at the
// trace's opening load, so no policy starts in a hole the harness dug.
Replicas InitialReplicas(const Scenario& scenario, const Models& m,
                         const std::vector<TraceRequest>& trace) {
  const double start = trace.empty() ? 0 : trace.front().arrival_s;
  TraceStats::Minute busiest = MinuteAt(trace, start);
  for (double t = start + 1; t + 60 <= std::max(start + 60, scenario.score_from_s + 60) + 1e-9;
       t += 1) {
    const TraceStats::Minute minute = MinuteAt(trace, t);
    if (minute.prompt_tokens_per_s > busiest.prompt_tokens_per_s) busiest = minute;
  }
  const WorkerCapacity c = CapacityAt(scenario, m.prefill, m.decode, busiest.mean_prompt_tokens,
                                      busiest.mean_output_tokens);
  Replicas r = ReplicasFor(c, busiest.requests_per_s, busiest.mean_prompt_tokens,
                           busiest.mean_output_tokens);
  while (r.prefill * scenario.prefill_tp + r.decode * scenario.decode_tp > scenario.gpus &&
         (r.prefill > 1 || r.decode > 1)) {
    (r.prefill >= r.decode ? r.prefill : r.decode)--;
  }
  return r;
}

}  // namespace

StatusOr<Comparison> RunComparison(const Scenario& scenario, const std::vector<TraceRequest>& trace,
                                   const HarnessOptions& options) {
  auto models = BuildModels(scenario);
  if (!models.ok()) return models.status();
  Comparison out;
  out.initial = InitialReplicas(scenario, *models, trace);
  const bool want_static = std::find(options.policies.begin(), options.policies.end(),
                                     "static-peak") != options.policies.end();
  if (want_static) {
    auto sizing =
        SizeStaticPeak(scenario, trace, options.attainment_target, options.static_sizing_by_replay);
    if (!sizing.ok()) return sizing.status();
    out.static_peak = std::move(sizing).value();
  }
  std::vector<std::unique_ptr<ScalingPolicy>> policies;
  for (const std::string& name : options.policies) {
    if (name == "static-peak") {
      policies.push_back(std::make_unique<FixedPolicy>(
          "static-peak", out.static_peak.chosen.prefill, out.static_peak.chosen.decode));
    } else if (name == "threshold") {
      policies.push_back(std::make_unique<ThresholdPolicy>(options.threshold, out.initial.prefill,
                                                           out.initial.decode));
    } else if (name == "dynamo-style") {
      policies.push_back(std::make_unique<DynamoPolicy>(scenario, models->prefill, models->decode,
                                                        options.dynamo, out.initial.prefill,
                                                        out.initial.decode));
    } else if (name == "pdpool") {
      policies.push_back(std::make_unique<PdpoolPolicy>(scenario, models->prefill, models->decode,
                                                        options.pdpool, out.initial.prefill,
                                                        out.initial.decode));
    } else {
      return Status::InvalidArgument("--policy: unknown policy \"" + name +
                                     "\" (static-peak, threshold, dynamo-style, pdpool, all)");
    }
  }
  std::vector<StatusOr<RunResult>> results(policies.size(), Status::Internal("not run"));
  ParallelFor(static_cast<int>(policies.size()), options.jobs, [&](int i) {
    SimulationOptions so;
    so.verify_backend = options.verify_backend;
    so.record_every_decision = options.record_every_decision;
    Simulation sim(scenario, trace, policies[static_cast<size_t>(i)].get(), so);
    results[static_cast<size_t>(i)] = sim.Run();
  });
  for (auto& r : results) {
    if (!r.ok()) return r.status();
    out.results.push_back(std::move(r).value());
  }
  return out;
}

StatusOr<FixedBudgetComparison> RunFixedBudget(const Scenario& scenario,
                                               const std::vector<TraceRequest>& trace,
                                               const HarnessOptions& options) {
  auto models = BuildModels(scenario);
  if (!models.ok()) return models.status();
  const int gp = scenario.prefill_tp;
  const int gd = scenario.decode_tp;
  std::vector<Replicas> splits;
  for (int p = 1; p * gp + gd <= scenario.gpus; ++p) {
    splits.push_back({p, (scenario.gpus - p * gp) / gd});
  }
  if (splits.empty()) {
    return Status::InvalidArgument("--gpus " + std::to_string(scenario.gpus) +
                                   " holds no prefill + decode pair at the given TP");
  }
  FixedBudgetComparison out;
  // pdpool starts from the split proportional to the trace's mean demand (what an operator
  // would set up front), not from the best split (unknown before the fact).
  const TraceStats stats = ComputeTraceStats(trace);
  const WorkerCapacity c = CapacityAt(scenario, models->prefill, models->decode,
                                      stats.mean_prompt_tokens, stats.mean_output_tokens);
  const double need_p = stats.mean_rate * stats.mean_prompt_tokens / c.prefill_tokens_per_s;
  const double need_d = stats.mean_rate * stats.mean_output_tokens / c.decode_tokens_per_s;
  double best_balance = -1;
  for (const Replicas& s : splits) {
    const double balance =
        std::min(s.prefill / std::max(need_p, 1e-9), s.decode / std::max(need_d, 1e-9));
    if (balance > best_balance) {
      best_balance = balance;
      out.pdpool_start = s;
    }
  }
  const int n = static_cast<int>(splits.size());
  std::vector<StatusOr<RunResult>> results(static_cast<size_t>(n) + 1, Status::Internal("not run"));
  ParallelFor(n + 1, options.jobs, [&](int i) {
    SimulationOptions so;
    so.fixed_budget = true;
    so.verify_backend = options.verify_backend;
    so.record_every_decision = options.record_every_decision;
    if (i == n) {
      PdpoolPolicy policy(scenario, models->prefill, models->decode, options.pdpool,
                          out.pdpool_start.prefill, out.pdpool_start.decode);
      Simulation sim(scenario, trace, &policy, so);
      results[static_cast<size_t>(i)] = sim.Run();
      return;
    }
    const Replicas& s = splits[static_cast<size_t>(i)];
    FixedPolicy policy("fixed " + std::to_string(s.prefill) + ":" + std::to_string(s.decode),
                       s.prefill, s.decode);
    Simulation sim(scenario, trace, &policy, so);
    results[static_cast<size_t>(i)] = sim.Run();
  });
  for (int i = 0; i < n; ++i) {
    auto& r = results[static_cast<size_t>(i)];
    if (!r.ok()) return r.status();
    out.splits.push_back(std::move(r).value());
    const double g = out.splits.back().summary.goodput_per_gpu;
    if (out.best_index < 0 ||
        g > out.splits[static_cast<size_t>(out.best_index)].summary.goodput_per_gpu) {
      out.best_index = i;
    }
  }
  if (!results.back().ok()) return results.back().status();
  out.pdpool = std::move(results.back()).value();
  return out;
}

}  // namespace pdpool::bench::replay
