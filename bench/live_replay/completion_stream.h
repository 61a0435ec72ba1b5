// CompletionStream: parses the server-sent events of one streamed /v1/completions response
// (`data: {...}` chunks, an error event `data: {"error": ...}`, `data: [DONE]`) as its bytes
// arrive, and times the tokens. A token event is a chunk whose choice carries text, or an empty
// text without a finish_reason (the router sends the first token at once even when its text is
// held back: that moment is the time to first token). The token count is the usage chunk's
// completion_tokens when the stream has one, else the token events counted.
// Thread-compatible: one stream, one thread.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "common/clock.h"

namespace pdpool::bench::live_replay {

class CompletionStream {
 public:
  // Bytes that arrived at `now`, split anywhere (a line may span calls).
  void Feed(std::string_view bytes, TimePoint now);
  // The connection ended at `now`: a last line without its newline is parsed.
  void Finish(TimePoint now);

  bool done() const { return done_; }  // `data: [DONE]` seen
  // An error event's message, or what was malformed; empty when none.
  const std::string& error() const { return error_; }
  std::optional<TimePoint> first_token() const { return first_token_; }
  std::optional<TimePoint> last_token() const { return last_token_; }
  int64_t token_events() const { return token_events_; }
  bool has_usage() const { return usage_tokens_ >= 0; }
  int64_t Tokens() const { return usage_tokens_ >= 0 ? usage_tokens_ : token_events_; }

 private:
  void ParseLine(std::string_view line, TimePoint now);
  void ParseData(std::string_view data, TimePoint now);

  std::string pending_;
  bool done_ = false;
  std::string error_;
  std::optional<TimePoint> first_token_;
  std::optional<TimePoint> last_token_;
  int64_t token_events_ = 0;
  int64_t usage_tokens_ = -1;
};

}  // namespace pdpool::bench::live_replay
