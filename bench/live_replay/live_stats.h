// LiveStats: the replay's running counts, bucketed by wall second of the run, for the
// timeseries and the live view: requests offered (sent, or refused by the client) and finished
// (completed or failed) in each second, requests in flight, and TTFT/TPOT p90 over the requests
// completed in the last `window_s` seconds (nearest rank, as bench/replay/outcome.h).
// Times are seconds since the run's start, passed in (no clock here). Thread-safe.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <optional>

namespace pdpool::bench::live_replay {

struct SecondStats {
  int64_t second = 0;     // the row covers [second, second + 1)
  int64_t offered = 0;    // requests sent (or refused as client overloaded) in it
  int64_t completed = 0;  // requests that completed in it
  int64_t errors = 0;     // requests that failed in it
  int64_t inflight = 0;   // sent and not finished, when the row was taken
  // Over the requests completed in [second + 1 − window, second + 1); empty when none.
  std::optional<double> ttft_p90_s;
  std::optional<double> tpot_p90_s;
};

struct LiveTotals {
  int64_t offered = 0;
  int64_t completed = 0;
  int64_t errors = 0;
  int64_t inflight = 0;
};

class LiveStats {
 public:
  explicit LiveStats(double window_s = 10) : window_s_(window_s) {}

  void RecordOffered(double t_s);
  // A completed request's TTFT and TPOT count in the rolling p90s; a failed one's do not.
  void RecordCompleted(double t_s, double ttft_s, double tpot_s);
  void RecordFailed(double t_s);

  // The row of second `second`. Rows are taken in increasing order: completions older than
  // the window of the row asked for are forgotten.
  SecondStats TakeSecond(int64_t second);
  LiveTotals Totals() const;

 private:
  struct Counts {
    int64_t offered = 0;
    int64_t completed = 0;
    int64_t errors = 0;
  };
  struct Completion {
    double t_s;
    double ttft_s;
    double tpot_s;
  };
  Counts& At(double t_s);  // requires mu_

  const double window_s_;
  mutable std::mutex mu_;
  std::map<int64_t, Counts> seconds_;
  std::deque<Completion> recent_;  // roughly in time order (threads finish concurrently)
  LiveTotals totals_;
};

}  // namespace pdpool::bench::live_replay
