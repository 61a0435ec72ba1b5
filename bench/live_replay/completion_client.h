// CompletionClient: the narrow interface the replay sends its requests through, one streamed
// /v1/completions each, so the runner is tested with a fake. HttpCompletionClient
// (http_completion_client.h) talks to a real router. Implementations are thread-safe: Send is
// called from many threads at once, CancelAll from any thread.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "common/clock.h"

namespace pdpool::bench::live_replay {

struct CompletionResult {
  bool ok = false;     // HTTP 200 and a stream that ended with [DONE] and no error event
  std::string error;   // when !ok: a short reason ("HTTP 503: no decode worker", "interrupted")
  int64_t tokens = 0;  // output tokens delivered (usage.completion_tokens when sent)
  std::optional<TimePoint> first_token;
  std::optional<TimePoint> last_token;
  TimePoint end{};  // when the response ended or the request failed
};

class CompletionClient {
 public:
  virtual ~CompletionClient() = default;
  // POSTs `body` (a CompletionBody) and reads the stream to its end; blocks until then.
  virtual CompletionResult Send(const std::string& body) = 0;
  // Aborts every Send in progress and makes later ones fail at once, with "interrupted".
  virtual void CancelAll() = 0;
};

}  // namespace pdpool::bench::live_replay
