// Sizing (see sizing.h).
#include "bench/replay/sizing.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace pdpool::bench::replay {
namespace {

double Seconds(Duration d) { return std::chrono::duration<double>(d).count(); }

}  // namespace

WorkerCapacity CapacityAt(const Scenario& scenario, const agent::PerfModel& prefill,
                          const agent::PerfModel& decode, double mean_prompt_tokens,
                          double mean_output_tokens) {
  WorkerCapacity c;
  const int budget = std::max(1, scenario.scheduler.max_batched_tokens);
  const int isl = std::max(1, static_cast<int>(std::lround(mean_prompt_tokens)));
  if (isl <= budget) {
    const int k = std::max(1, budget / isl);
    std::vector<agent::SeqWork> step(static_cast<size_t>(k), agent::SeqWork{isl, 0, true});
    c.prefill_tokens_per_s = k * isl / Seconds(prefill.StepTime(step));
  } else {
    double seconds = 0;
    for (int done = 0; done < isl; done += budget) {
      seconds += Seconds(prefill.PrefillTime(std::min(budget, isl - done), done));
    }
    c.prefill_tokens_per_s = isl / seconds;
  }
  const double context = std::max(1.0, mean_prompt_tokens + mean_output_tokens / 2);
  const int64_t kv_tokens = decode.KvCapacityTokens(scenario.gpu_memory_utilization);
  const int max_batch = static_cast<int>(std::min<int64_t>(
      std::max(1, scenario.scheduler.max_running), static_cast<int64_t>(kv_tokens / context)));
  auto step = [&](int b) {
    return Seconds(decode.DecodeStepTime(b, static_cast<int64_t>(std::llround(b * context))));
  };
  int lo = 0;
  for (int hi = max_batch; lo < hi;) {  // largest batch whose step meets the TPOT limit
    const int mid = lo + (hi - lo + 1) / 2;
    if (step(mid) <= scenario.tpot_s) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  c.decode_batch = lo;
  c.decode_tokens_per_s = lo > 0 ? lo / step(lo) : 0;
  return c;
}

Replicas ReplicasFor(const WorkerCapacity& capacity, double request_rate, double mean_prompt_tokens,
                     double mean_output_tokens, double utilization) {
  Replicas r;
  auto need = [&](double demand, double each) {
    if (!(demand > 0)) return 1;
    if (!(each > 0)) return 1 << 20;
    return std::max(1, static_cast<int>(std::ceil(demand / (each * utilization) - 1e-9)));
  };
  r.prefill = need(request_rate * mean_prompt_tokens, capacity.prefill_tokens_per_s);
  r.decode = need(request_rate * mean_output_tokens, capacity.decode_tokens_per_s);
  return r;
}

}  // namespace pdpool::bench::replay
