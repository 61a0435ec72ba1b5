// LiveView: rendering and in-place redraw (see live_view.h).
#include "bench/live_replay/live_view.h"

#include <algorithm>
#include <cstdio>

#include "bench/live_replay/format.h"

namespace pdpool::bench::live_replay {
namespace {

constexpr int kBarWidth = 40;

std::string Printf(const char* format, auto... args) {
  char buf[256];
  std::snprintf(buf, sizeof(buf), format, args...);
  return buf;
}

// "120 ms (SLO 450 ms, ok)", "- (SLO 450 ms)" when nothing completed in the window.
std::string VersusSlo(const std::optional<double>& value, double limit) {
  if (!value) return "- (SLO " + FormatSeconds(limit) + ")";
  return FormatSeconds(*value) + " (SLO " + FormatSeconds(limit) + ", " +
         (*value <= limit ? "ok" : "OVER") + ")";
}

std::string PoolText(const LiveViewState& s) {
  if (!s.pool_sampled) return "not sampled (no --pool)";
  std::string text = "-";
  if (s.pool) {
    text =
        Printf("P %d/%d  D %d/%d  GPUs %lld", s.pool->prefill_ready, s.pool->prefill_desired,
               s.pool->decode_ready, s.pool->decode_desired, static_cast<long long>(s.pool->gpus));
  }
  if (!s.pool_error.empty()) text += "  (sample failed: " + s.pool_error.substr(0, 60) + ")";
  return text;
}

std::string ProgressBar(int64_t sent, int64_t total) {
  const double fraction = total > 0 ? std::clamp(double(sent) / double(total), 0.0, 1.0) : 1.0;
  const int filled = static_cast<int>(fraction * kBarWidth);
  return "[" + std::string(filled, '#') + std::string(kBarWidth - filled, '.') + "] " +
         Printf("%lld/%lld sent (%.0f %%)", static_cast<long long>(sent),
                static_cast<long long>(total), fraction * 100);
}

}  // namespace

std::vector<std::string> RenderLiveView(const LiveViewState& s, const replay::SloLimits& slo) {
  const SecondStats& r = s.last_second;
  return {
      "wall " + FormatClock(s.elapsed_s) + " / " + FormatClock(s.total_wall_s) + "   trace " +
          Printf("%.0f s", s.trace_s) + "   " + s.phase,
      Printf("requests/s offered %lld  completed %lld   in flight %lld   errors %lld",
             static_cast<long long>(r.offered), static_cast<long long>(r.completed),
             static_cast<long long>(s.totals.inflight), static_cast<long long>(s.totals.errors)),
      "pool " + PoolText(s),
      "TTFT p90 " + VersusSlo(r.ttft_p90_s, slo.ttft_s) + "   TPOT p90 " +
          VersusSlo(r.tpot_p90_s, slo.tpot_s),
      ProgressBar(s.totals.offered, s.total_requests),
  };
}

std::string RenderStatusLine(const LiveViewState& s, const replay::SloLimits& slo) {
  const SecondStats& r = s.last_second;
  return "wall " + FormatClock(s.elapsed_s) + Printf(" trace %.0fs", s.trace_s) +
         Printf(" sent %lld/%lld offered %lld/s completed %lld/s inflight %lld errors %lld",
                static_cast<long long>(s.totals.offered), static_cast<long long>(s.total_requests),
                static_cast<long long>(r.offered), static_cast<long long>(r.completed),
                static_cast<long long>(s.totals.inflight),
                static_cast<long long>(s.totals.errors)) +
         " pool " + PoolText(s) + " TTFT p90 " + VersusSlo(r.ttft_p90_s, slo.ttft_s) +
         " TPOT p90 " + VersusSlo(r.tpot_p90_s, slo.tpot_s) + " " + s.phase;
}

void LiveView::Draw(const LiveViewState& state, const replay::SloLimits& slo) {
  std::string out;
  if (!tty_) {
    out = RenderStatusLine(state, slo) + "\n";
  } else {
    // Back to the first line of the previous drawing, then rewrite each line.
    if (lines_drawn_ > 0) out = "\x1b[" + std::to_string(lines_drawn_) + "A";
    const std::vector<std::string> lines = RenderLiveView(state, slo);
    for (const std::string& line : lines) out += "\r\x1b[2K" + line + "\n";
    lines_drawn_ = static_cast<int>(lines.size());
  }
  std::fwrite(out.data(), 1, out.size(), out_);
  std::fflush(out_);
}

}  // namespace pdpool::bench::live_replay
