// RequestRecord: what the replay measured of one request, client-side: the outcome the bench's
// accounting scores (bench/replay/outcome.h) plus a status and the end-to-end time. Times count
// from the request's *scheduled* send time, not from when it left (no coordinated omission: a
// client or router that falls behind shows as latency). Pure functions; thread-compatible.
#pragma once

#include <string>

#include "bench/live_replay/completion_client.h"
#include "bench/live_replay/schedule.h"
#include "bench/replay/outcome.h"

namespace pdpool::bench::live_replay {

struct RequestRecord {
  // arrival_s: the scheduled send time, wall seconds after the run's start. output_tokens: the
  // tokens delivered (of a failed request, those that arrived before it failed).
  replay::RequestOutcome outcome;
  std::string status = "ok";  // "ok", or why it failed
  double e2e_s = -1;          // scheduled send → end of the response; < 0: never sent
};

// TTFT = first token − scheduled; TPOT = (last − first) / (tokens − 1), 0 for one token.
RequestRecord MeasureRequest(const ScheduledRequest& request, TimePoint scheduled,
                             const CompletionResult& result);
// A request that failed without a response ("client overloaded", cut off by the end of the run).
RequestRecord FailedRequest(const ScheduledRequest& request, std::string reason);

}  // namespace pdpool::bench::live_replay
