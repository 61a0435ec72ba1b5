// LiveView: the replay's progress on a terminal. On a TTY a few lines redrawn in place (ANSI
// cursor movement) about twice a second: wall and trace time, offered and completed request
// rates, in flight, the pool's prefill and decode workers ready/desired and its GPUs, TTFT and
// TPOT p90 against the SLO, errors, and a progress bar of requests sent. Elsewhere (CI, logs)
// one plain line per call. The Render functions are pure; LiveView is thread-compatible (the
// runner's reporting thread owns it).
#pragma once

#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "bench/live_replay/live_stats.h"
#include "bench/live_replay/pool_sampler.h"
#include "bench/replay/outcome.h"

namespace pdpool::bench::live_replay {

struct LiveViewState {
  double elapsed_s = 0;     // wall seconds since the run's start
  double total_wall_s = 0;  // wall seconds the schedule spans
  double trace_s = 0;       // trace seconds reached (window start + elapsed × compression)
  SecondStats last_second;  // the latest full second
  LiveTotals totals;
  int64_t total_requests = 0;  // scheduled
  bool pool_sampled = false;   // --pool given
  std::optional<PoolSample> pool;
  std::string pool_error;  // the last sample's failure, "" when it succeeded
  std::string phase;       // "replaying", "all sent: 3 in flight", "done", ...
  bool finished = false;   // the run is over: the last state
};

// The TTY view's lines (no ANSI codes, no newlines).
std::vector<std::string> RenderLiveView(const LiveViewState& state, const replay::SloLimits& slo);
// One plain line with the same numbers.
std::string RenderStatusLine(const LiveViewState& state, const replay::SloLimits& slo);

class LiveView {
 public:
  // `tty`: redraw in place; else a plain line per Draw.
  LiveView(std::FILE* out, bool tty) : out_(out), tty_(tty) {}
  void Draw(const LiveViewState& state, const replay::SloLimits& slo);

 private:
  std::FILE* out_;
  bool tty_;
  int lines_drawn_ = 0;
};

}  // namespace pdpool::bench::live_replay
