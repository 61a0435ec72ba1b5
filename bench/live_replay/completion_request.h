// CompletionRequest: the body of one replayed request to the router's /v1/completions. The
// pool's models use a byte tokenizer (one token per byte) and the router puts BOS before a text
// prompt, as vLLM does: a prompt of N tokens is N − 1 bytes of plain ASCII text (at least one:
// the router refuses an empty prompt). Each prompt starts with the request's index so no two are
// alike (a prefix cache cannot make the replay look faster than the trace would be).
// Pure functions; thread-safe.
#pragma once

#include <cstdint>
#include <string>

namespace pdpool::bench::live_replay {

// Exactly `bytes` bytes of printable ASCII words ("r17 the quick brown fox ..."), cut mid-word
// at the end; "" for bytes <= 0.
std::string PromptText(int64_t index, int32_t bytes);

// PromptBytes(N) = max(1, N − 1): the text bytes of an N-token prompt (see above).
int32_t PromptBytes(int32_t prompt_tokens);

// {model, prompt: PromptText(index, PromptBytes(prompt_tokens)), max_tokens: output_tokens,
//  stream: true, stream_options: {include_usage: true}, ignore_eos: true, temperature: 0}
// as JSON text.
std::string CompletionBody(const std::string& model, int64_t index, int32_t prompt_tokens,
                           int32_t output_tokens);

}  // namespace pdpool::bench::live_replay
