// LiveStats: per-second counts and rolling percentiles (see live_stats.h).
#include "bench/live_replay/live_stats.h"

#include <cmath>
#include <vector>

#include "bench/replay/outcome.h"

namespace pdpool::bench::live_replay {

LiveStats::Counts& LiveStats::At(double t_s) {
  return seconds_[static_cast<int64_t>(std::floor(t_s))];
}

void LiveStats::RecordOffered(double t_s) {
  std::lock_guard lock(mu_);
  ++At(t_s).offered;
  ++totals_.offered;
  ++totals_.inflight;
}

void LiveStats::RecordCompleted(double t_s, double ttft_s, double tpot_s) {
  std::lock_guard lock(mu_);
  ++At(t_s).completed;
  ++totals_.completed;
  --totals_.inflight;
  recent_.push_back({t_s, ttft_s, tpot_s});
}

void LiveStats::RecordFailed(double t_s) {
  std::lock_guard lock(mu_);
  ++At(t_s).errors;
  ++totals_.errors;
  --totals_.inflight;
}

SecondStats LiveStats::TakeSecond(int64_t second) {
  std::lock_guard lock(mu_);
  SecondStats row;
  row.second = second;
  if (auto it = seconds_.find(second); it != seconds_.end()) {
    row.offered = it->second.offered;
    row.completed = it->second.completed;
    row.errors = it->second.errors;
  }
  row.inflight = totals_.inflight;
  const double end = static_cast<double>(second + 1);
  const double begin = end - window_s_;
  // Entries finish out of order by a few milliseconds at most: drop only what is well outside.
  while (!recent_.empty() && recent_.front().t_s < begin - 1.0) recent_.pop_front();
  std::vector<double> ttft, tpot;
  for (const Completion& c : recent_) {
    if (c.t_s < begin || c.t_s >= end) continue;
    if (c.ttft_s >= 0) ttft.push_back(c.ttft_s);
    if (c.tpot_s >= 0) tpot.push_back(c.tpot_s);
  }
  if (!ttft.empty()) row.ttft_p90_s = replay::Percentile(&ttft, 90);
  if (!tpot.empty()) row.tpot_p90_s = replay::Percentile(&tpot, 90);
  return row;
}

LiveTotals LiveStats::Totals() const {
  std::lock_guard lock(mu_);
  return totals_;
}

}  // namespace pdpool::bench::live_replay
