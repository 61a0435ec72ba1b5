// Report: the files a live replay leaves in --out — timeseries.csv (one row per wall second),
// requests.csv (one row per request offered), summary.json and summary.md — and the numbers
// of the summary (bench/replay Summarize over the requests, GPU-seconds from the pool samples).
// Pure functions building text, plus WriteTextFile; thread-compatible.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "bench/live_replay/live_stats.h"
#include "bench/live_replay/pool_sampler.h"
#include "bench/live_replay/request_record.h"
#include "bench/live_replay/schedule.h"
#include "bench/replay/outcome.h"
#include "common/json.h"
#include "common/status.h"

namespace pdpool::bench::live_replay {

// ---- timeseries.csv -------------------------------------------------------------------------

struct TimeseriesRow {
  SecondStats stats;
  double trace_s = 0;              // trace seconds at the start of the row's wall second
  std::optional<PoolSample> pool;  // the latest sample; empty without --pool or before one
};
// wall_s,trace_s,offered_rps,completed_rps,errors,inflight,ttft_p90_s,tpot_p90_s,
// prefill_ready,prefill_desired,decode_ready,decode_desired,gpus
std::string TimeseriesHeader();
// One line with its newline; unknown values are empty cells.
std::string TimeseriesLine(const TimeseriesRow& row);

// ---- requests.csv ---------------------------------------------------------------------------

// arrival_s,prompt_tokens,output_tokens,status,ttft_s,tpot_s,e2e_s,met_slo; a header, then one
// line per record in the given order.
std::string RequestsCsv(const std::vector<RequestRecord>& records, const replay::SloLimits& slo);

// ---- summary --------------------------------------------------------------------------------

enum class StopReason {
  kCompleted,  // every scheduled request was sent and finished
  kDuration,   // --duration reached
  kSignal,     // SIGINT or SIGTERM
};
const char* StopReasonName(StopReason reason);  // "completed" | "duration" | "signal"

// What was replayed, against what: the summary's header lines.
struct RunDescription {
  std::string router;
  std::string model;
  std::string trace_path;
  ScheduleOptions schedule_options;
  int64_t scheduled = 0;  // requests in the schedule
  int64_t window_requests = 0;
  int64_t prompt_capped = 0;
  int64_t output_capped = 0;
  double window_s = 0;
  replay::SloLimits slo;
  double percentile = 99;  // the SLO is met when this % of requests meet both limits
  std::string pool;        // "namespace/name"; empty without --pool
};

// How the run went.
struct RunFacts {
  double wall_s = 0;  // run start → last request finished or given up on
  StopReason stop_reason = StopReason::kCompleted;
  int64_t overloaded = 0;  // refused by the client: --max-inflight requests already in flight
  int64_t cut_off = 0;     // still in flight when the drain after a stop ended
  // GPUs held, from the pool samples (sampled false without --pool).
  bool gpus_sampled = false;
  double gpu_seconds = 0;
  int peak_gpus = 0;
  int64_t sample_failures = 0;
};

struct RunNumbers {
  replay::Summary summary;  // over the requests offered
  double ttft_at_percentile_s = 0;
  double tpot_at_percentile_s = 0;
  bool slo_met = false;  // attainment >= percentile
  double output_tokens_per_s = 0;
};

RunNumbers ComputeNumbers(const std::vector<RequestRecord>& records,
                          const RunDescription& description, const RunFacts& facts);
Json SummaryJson(const RunDescription& description, const RunFacts& facts,
                 const RunNumbers& numbers);
// A markdown table of the results and lines saying what ran.
std::string SummaryMarkdown(const RunDescription& description, const RunFacts& facts,
                            const RunNumbers& numbers);

// Writes (replaces) the file; errors name the path.
Status WriteTextFile(const std::string& path, const std::string& text);

}  // namespace pdpool::bench::live_replay
