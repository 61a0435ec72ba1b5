// RequestRecord: client-side measurement of one request (see request_record.h).
#include "bench/live_replay/request_record.h"

#include <chrono>

namespace pdpool::bench::live_replay {
namespace {

double Seconds(TimePoint from, TimePoint to) {
  return std::chrono::duration<double>(to - from).count();
}

}  // namespace

RequestRecord MeasureRequest(const ScheduledRequest& request, TimePoint scheduled,
                             const CompletionResult& result) {
  RequestRecord r = FailedRequest(request, result.ok ? "ok" : result.error);
  r.outcome.output_tokens = static_cast<int32_t>(result.tokens);
  r.outcome.completed = result.ok;
  r.e2e_s = Seconds(scheduled, result.end);
  if (result.first_token) r.outcome.ttft_s = Seconds(scheduled, *result.first_token);
  if (result.ok && result.first_token && result.last_token) {
    r.outcome.tpot_s = result.tokens > 1 ? Seconds(*result.first_token, *result.last_token) /
                                               static_cast<double>(result.tokens - 1)
                                         : 0.0;
  }
  return r;
}

RequestRecord FailedRequest(const ScheduledRequest& request, std::string reason) {
  RequestRecord r;
  r.outcome.arrival_s = request.send_s;
  r.outcome.prompt_tokens = request.prompt_tokens;
  r.outcome.output_tokens = 0;
  r.outcome.completed = false;
  r.status = std::move(reason);
  return r;
}

}  // namespace pdpool::bench::live_replay
