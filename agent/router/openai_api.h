// The OpenAI-compatible surface of the router: parsing and validating /v1/completions and
// /v1/chat/completions bodies (errors name the field and the limit), the plain chat template,
// response bodies, SSE chunks and OpenAI error bodies. No I/O; free functions are thread-safe,
// ChunkEncoder is immutable after construction (thread-compatible).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/json.h"

namespace pdpool::agent {

// An OpenAI-style error: {"error": {"message", "type", "param", "code"}} with an HTTP status.
struct ApiError {
  int status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::string param;  // empty: null
  std::string code;   // empty: null
};

ApiError InvalidRequest(std::string message, std::string param = "", std::string code = "");

// {"error": {...}} as text.
std::string ErrorBody(const ApiError& error);
// The body for a status that has no handler-made body (404 unknown path, 413, ...).
ApiError ErrorForStatus(int status);

// Serializes JSON whose strings may hold invalid UTF-8 (byte-level tokens can split a
// character): invalid bytes become U+FFFD instead of throwing.
std::string DumpJson(const Json& value);

enum class ApiKind { kCompletion, kChat };

struct RequestSampling {
  double temperature = 1.0;
  double top_p = 1.0;
  std::optional<int64_t> seed;
};

struct ChatMessage {
  std::string role;  // system, user, assistant
  std::string content;
};

// One parsed request of either endpoint.
struct CompletionRequest {
  ApiKind kind = ApiKind::kCompletion;
  std::string model;  // empty: the served model
  // The prompt as text (chat: the rendered template), or as token ids when prompt_is_tokens.
  std::string prompt_text;
  std::vector<int32_t> prompt_token_ids;
  bool prompt_is_tokens = false;
  std::optional<int> max_tokens;  // absent: the endpoint's default (see ResolveMaxTokens)
  RequestSampling sampling;
  std::vector<std::string> stop;  // non-empty strings, at most kMaxStopStrings
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool ignore_eos = false;     // extension (vLLM's name)
};

inline constexpr size_t kMaxStopStrings = 4;
inline constexpr int kDefaultCompletionMaxTokens = 16;
inline constexpr int kDefaultChatMaxTokensCap = 1024;

// Parse a /v1/completions body. Returns the first error found, or nullopt and fills *out.
std::optional<ApiError> ParseCompletionRequest(const Json& body, CompletionRequest* out);
// Parse a /v1/chat/completions body (messages rendered with ApplyChatTemplate).
std::optional<ApiError> ParseChatRequest(const Json& body, CompletionRequest* out);

// "<|role|>\ncontent\n" per message, then "<|assistant|>\n".
std::string ApplyChatTemplate(const std::vector<ChatMessage>& messages);

// 404 model_not_found unless the request names the served model (or none).
std::optional<ApiError> CheckModel(const CompletionRequest& request, std::string_view served_model);

// Checks the prompt against the context and decides max_tokens: 1 <= max_tokens <=
// max_model_len - prompt_tokens. Defaults: 16 for completions (clamped to what is left), for
// chat what is left capped at kDefaultChatMaxTokensCap. max_model_len 0 means unknown: only
// the defaults apply. Returns the error or the resolved value.
std::optional<ApiError> ResolveMaxTokens(const CompletionRequest& request, int prompt_tokens,
                                         int max_model_len, int* max_tokens);

struct TokenUsage {
  int prompt_tokens = 0;
  int completion_tokens = 0;
};

// Identity of one response: every body and chunk of it repeats these.
struct ResponseHeader {
  ApiKind kind = ApiKind::kCompletion;
  std::string id;  // "cmpl-..." or "chatcmpl-..."
  int64_t created = 0;
  std::string model;
};

// The non-streaming body.
Json BuildResponse(const ResponseHeader& header, std::string_view text,
                   std::string_view finish_reason, const TokenUsage& usage);

// GET /v1/models.
Json BuildModelList(std::string_view model, int64_t created);

inline constexpr std::string_view kSseDone = "data: [DONE]\n\n";

// "data: <json>\n\n".
std::string SseEvent(const Json& value);

// Builds the SSE events of one streamed response without a JSON document per token: the
// parts that never change are rendered once.
class ChunkEncoder {
 public:
  ChunkEncoder(ResponseHeader header, bool include_usage);

  // Chat only: the first chunk, delta {"role": "assistant", "content": ""}.
  std::string RoleEvent() const;
  // A chunk carrying text (completions: choices[0].text; chat: delta.content).
  std::string TextEvent(std::string_view text) const;
  // The last choice chunk: empty text/delta and the finish reason.
  std::string FinishEvent(std::string_view finish_reason) const;
  // With include_usage: the extra chunk with empty choices and the usage.
  std::string UsageEvent(const TokenUsage& usage) const;
  // A mid-stream failure: data: {"error": {...}}.
  static std::string ErrorEvent(const ApiError& error);

 private:
  std::string Chunk(std::string_view choice) const;

  ResponseHeader header_;
  bool include_usage_;
  std::string prefix_;  // data: {"id":..,"object":..,"created":..,"model":..,"choices":[
};

}  // namespace pdpool::agent
