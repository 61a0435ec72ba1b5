// CompletionStream: SSE parsing and token timing (see completion_stream.h).
#include "bench/live_replay/completion_stream.h"

#include "common/json.h"

namespace pdpool::bench::live_replay {

void CompletionStream::Feed(std::string_view bytes, TimePoint now) {
  pending_.append(bytes);
  size_t start = 0;
  for (size_t nl = pending_.find('\n'); nl != std::string::npos; nl = pending_.find('\n', start)) {
    ParseLine(std::string_view(pending_).substr(start, nl - start), now);
    start = nl + 1;
  }
  pending_.erase(0, start);
}

void CompletionStream::Finish(TimePoint now) {
  if (pending_.empty()) return;
  const std::string last = std::move(pending_);
  pending_.clear();
  ParseLine(last, now);
}

void CompletionStream::ParseLine(std::string_view line, TimePoint now) {
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  // Blank lines end events, ':' lines are comments; other fields (event:, id:) carry nothing
  // the router sends.
  constexpr std::string_view kData = "data:";
  if (line.substr(0, kData.size()) != kData) return;
  std::string_view data = line.substr(kData.size());
  if (!data.empty() && data.front() == ' ') data.remove_prefix(1);
  ParseData(data, now);
}

void CompletionStream::ParseData(std::string_view data, TimePoint now) {
  if (done_ || !error_.empty()) return;
  if (data == "[DONE]") {
    done_ = true;
    return;
  }
  const Json chunk = Json::parse(data.begin(), data.end(), nullptr, /*allow_exceptions=*/false);
  if (chunk.is_discarded() || !chunk.is_object()) {
    error_ = "malformed event: " + std::string(data.substr(0, 60));
    return;
  }
  if (const Json* e = JsonChild(chunk, "error"); e != nullptr) {
    const std::string message = JsonStringAt(*e, {"message"});
    error_ = message.empty() ? e->dump() : message;
    return;
  }
  if (const Json* tokens = JsonPath(chunk, {"usage", "completion_tokens"});
      tokens != nullptr && tokens->is_number_integer()) {
    usage_tokens_ = tokens->get<int64_t>();
  }
  const Json* choices = JsonChild(chunk, "choices");
  if (choices == nullptr || !choices->is_array() || choices->empty()) return;
  const Json& choice = (*choices)[0];
  const Json* text = JsonChild(choice, "text");
  if (text == nullptr || !text->is_string()) return;
  const bool finished = JsonChild(choice, "finish_reason") != nullptr;
  if (text->get_ref<const std::string&>().empty() && finished) return;
  ++token_events_;
  if (!first_token_) first_token_ = now;
  last_token_ = now;
}

}  // namespace pdpool::bench::live_replay
