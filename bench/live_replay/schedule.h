// Schedule: which requests a live replay sends, and when. A window of the trace, the rate
// multiplier of bench/replay/trace.h (X time-shifted copies merged; X < 1 keeps each request with
// probability X, seeded), time compression (C trace seconds per wall second: a request arriving
// t seconds into the window is sent t / C seconds after the run starts) and the token caps.
// Pure functions and values; thread-compatible.
#pragma once

#include <cstdint>
#include <vector>

#include "bench/replay/trace.h"
#include "common/status.h"

namespace pdpool::bench::live_replay {

struct ScheduleOptions {
  double window_start_s = 0;  // trace seconds
  double window_end_s = 0;    // <= 0: to the end of the trace
  double rate_multiplier = 1;
  double time_compression = 1;  // trace seconds per wall second, >= 1
  uint64_t seed = 1;
  int32_t max_prompt_tokens = 0;  // 0: no cap
  int32_t max_output_tokens = 0;  // 0: no cap
};

struct ScheduledRequest {
  int64_t index = 0;          // position in send order
  double trace_s = 0;         // arrival, seconds after the window's start
  double send_s = 0;          // wall seconds after the run's start: trace_s / time_compression
  int32_t prompt_tokens = 0;  // capped
  int32_t output_tokens = 0;  // capped
};

struct Schedule {
  // Sorted by send_s.
  std::vector<ScheduledRequest> requests;
  int64_t window_requests = 0;  // trace requests in the window, before the multiplier
  int64_t prompt_capped = 0;    // requests whose prompt was cut to max_prompt_tokens
  int64_t output_capped = 0;    // requests whose output was cut to max_output_tokens
  double window_s = 0;          // trace seconds the window spans
  double wall_s = 0;            // window_s / time_compression
};

// Errors name the flag: --window-start/--window-end (an empty or inverted window),
// --rate-multiplier, --time-compression, --max-prompt-tokens, --max-output-tokens.
StatusOr<Schedule> BuildSchedule(const std::vector<replay::TraceRequest>& trace,
                                 const ScheduleOptions& options);

}  // namespace pdpool::bench::live_replay
