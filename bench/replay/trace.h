// Trace: the request traces the replay harness drives (Azure LLM inference trace 2023 CSVs:
// TIMESTAMP, ContextTokens, GeneratedTokens), their time window, and the rate multiplier.
// The multiplier merges time-shifted copies of the trace (not time compression), so an
// hour-long replay keeps the trace's minute-to-minute shape at X times its rate:
//  - floor(X) full copies, copy 0 unshifted, copy k ≥ 1 shifted by a seeded offset drawn
//    uniformly from [0, shift_window) seconds, wrapping around the end of the time window (so
//    every copy keeps all its requests and the window keeps its length);
//  - the fractional part f = X − floor(X) as one more shifted copy that keeps each request with
//    probability f.
// Plain functions and values; thread-compatible.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace pdpool::bench::replay {

struct TraceRequest {
  double arrival_s = 0;  // seconds since the start of the (windowed) trace
  int32_t prompt_tokens = 0;
  int32_t output_tokens = 0;
};

// Parses a CSV with the header TIMESTAMP,ContextTokens,GeneratedTokens; TIMESTAMP is
// "YYYY-MM-DD HH:MM:SS[.fraction]". Arrivals become seconds since the earliest one, sorted.
// Errors name the file, the line and the field.
StatusOr<std::vector<TraceRequest>> ParseTraceCsv(const std::string& text,
                                                  const std::string& source_name);
StatusOr<std::vector<TraceRequest>> LoadTraceCsv(const std::string& path);
// The Azure conversation trace in ../shared/traces (from the repository root) or
// /work/shared/traces, whichever exists; the former when neither does (the error then names it).
std::string DefaultTracePath();

// The requests with start_s <= arrival < end_s, re-based so start_s becomes 0. end_s <= 0:
// to the end of the trace.
std::vector<TraceRequest> SelectWindow(const std::vector<TraceRequest>& trace, double start_s,
                                       double end_s);

struct MultiplierOptions {
  double multiplier = 1.0;
  double shift_window_s = 60.0;
  uint64_t seed = 1;
  // Length of the window the copies wrap around in; <= 0: last arrival + 1 ms.
  double span_s = 0;
};
// The merged, time-sorted trace (see the file comment). multiplier must be > 0.
StatusOr<std::vector<TraceRequest>> ApplyRateMultiplier(const std::vector<TraceRequest>& trace,
                                                        const MultiplierOptions& options);

struct TraceStats {
  int64_t requests = 0;
  double span_s = 0;  // last arrival − first arrival
  double mean_rate = 0;
  double mean_prompt_tokens = 0;
  double mean_output_tokens = 0;
  // Busiest 60 s windows on a 1 s grid: by requests, by prompt tokens (prefill demand) and by
  // output tokens (decode demand); each with its start and the means of the requests in it.
  struct Minute {
    double start_s = 0;
    double requests_per_s = 0;
    double prompt_tokens_per_s = 0;
    double output_tokens_per_s = 0;
    double mean_prompt_tokens = 0;
    double mean_output_tokens = 0;
  };
  Minute busiest_by_requests;
  Minute busiest_by_prompt_tokens;
  Minute busiest_by_output_tokens;
};
TraceStats ComputeTraceStats(const std::vector<TraceRequest>& trace);
// The load of the 60 s window starting at start_s.
TraceStats::Minute MinuteAt(const std::vector<TraceRequest>& trace, double start_s);

}  // namespace pdpool::bench::replay
