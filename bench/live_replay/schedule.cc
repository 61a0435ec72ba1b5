// Schedule: window, multiplier, compression and caps (see schedule.h).
#include "bench/live_replay/schedule.h"

#include <algorithm>
#include <cmath>
#include <string>

namespace pdpool::bench::live_replay {

StatusOr<Schedule> BuildSchedule(const std::vector<replay::TraceRequest>& trace,
                                 const ScheduleOptions& options) {
  if (!(options.time_compression >= 1) || !std::isfinite(options.time_compression)) {
    return Status::InvalidArgument(
        "--time-compression must be >= 1 (trace seconds per wall "
        "second), got " +
        std::to_string(options.time_compression));
  }
  if (options.max_prompt_tokens < 0 || options.max_output_tokens < 0) {
    return Status::InvalidArgument(
        std::string(options.max_prompt_tokens < 0 ? "--max-prompt-tokens" : "--max-output-tokens") +
        " must be >= 0 (0: no cap)");
  }
  if (options.window_start_s < 0) {
    return Status::InvalidArgument("--window-start must be >= 0 s");
  }
  if (options.window_end_s > 0 && options.window_end_s <= options.window_start_s) {
    return Status::InvalidArgument("--window-end (" + std::to_string(options.window_end_s) +
                                   " s) must be after --window-start (" +
                                   std::to_string(options.window_start_s) +
                                   " s), or <= 0 for the end of the trace");
  }
  const std::vector<replay::TraceRequest> window =
      replay::SelectWindow(trace, options.window_start_s, options.window_end_s);
  if (window.empty()) {
    return Status::InvalidArgument("no trace request in the window --window-start " +
                                   std::to_string(options.window_start_s) + " --window-end " +
                                   std::to_string(options.window_end_s));
  }
  Schedule schedule;
  schedule.window_requests = static_cast<int64_t>(window.size());
  schedule.window_s = options.window_end_s > 0 ? options.window_end_s - options.window_start_s
                                               : window.back().arrival_s;
  schedule.wall_s = schedule.window_s / options.time_compression;

  replay::MultiplierOptions multiplier;
  multiplier.multiplier = options.rate_multiplier;
  multiplier.seed = options.seed;
  multiplier.span_s = options.window_end_s > 0 ? schedule.window_s : 0;
  auto merged = replay::ApplyRateMultiplier(window, multiplier);
  if (!merged.ok()) return merged.status();
  if (merged->empty()) {
    return Status::InvalidArgument("--rate-multiplier " + std::to_string(options.rate_multiplier) +
                                   " kept none of the window's " + std::to_string(window.size()) +
                                   " requests");
  }

  schedule.requests.reserve(merged->size());
  for (const replay::TraceRequest& r : *merged) {
    ScheduledRequest s;
    s.index = static_cast<int64_t>(schedule.requests.size());
    s.trace_s = r.arrival_s;
    s.send_s = r.arrival_s / options.time_compression;
    s.prompt_tokens = r.prompt_tokens;
    s.output_tokens = r.output_tokens;
    if (options.max_prompt_tokens > 0 && s.prompt_tokens > options.max_prompt_tokens) {
      s.prompt_tokens = options.max_prompt_tokens;
      ++schedule.prompt_capped;
    }
    if (options.max_output_tokens > 0 && s.output_tokens > options.max_output_tokens) {
      s.output_tokens = options.max_output_tokens;
      ++schedule.output_capped;
    }
    schedule.requests.push_back(s);
  }
  return schedule;
}

}  // namespace pdpool::bench::live_replay
