// CompletionRequest: prompt text and request body (see completion_request.h).
#include "bench/live_replay/completion_request.h"

#include <algorithm>
#include <string_view>

#include "common/json.h"

namespace pdpool::bench::live_replay {

std::string PromptText(int64_t index, int32_t bytes) {
  if (bytes <= 0) return "";
  static constexpr std::string_view kWords = "the quick brown fox jumps over the lazy dog ";
  std::string text = "r" + std::to_string(index) + " ";
  const size_t size = static_cast<size_t>(bytes);
  text.reserve(size + kWords.size());
  while (text.size() < size) text += kWords;
  text.resize(size);
  return text;
}

int32_t PromptBytes(int32_t prompt_tokens) { return std::max(1, prompt_tokens - 1); }

std::string CompletionBody(const std::string& model, int64_t index, int32_t prompt_tokens,
                           int32_t output_tokens) {
  const Json body = {{"model", model},
                     {"prompt", PromptText(index, PromptBytes(prompt_tokens))},
                     {"max_tokens", output_tokens},
                     {"stream", true},
                     {"stream_options", {{"include_usage", true}}},
                     {"ignore_eos", true},
                     {"temperature", 0}};
  return body.dump();
}

}  // namespace pdpool::bench::live_replay
