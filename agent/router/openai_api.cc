// OpenAI request parsing, validation and response/chunk building (see openai_api.h).
#include "agent/router/openai_api.h"

#include <algorithm>
#include <cstdio>
#include <limits>
#include <utility>

namespace pdpool::agent {
namespace {

const char* JsonTypeName(const Json& v) {
  if (v.is_null()) return "null";
  if (v.is_boolean()) return "boolean";
  if (v.is_number_integer()) return "integer";
  if (v.is_number()) return "number";
  if (v.is_string()) return "string";
  if (v.is_array()) return "array";
  return "object";
}

ApiError WrongType(const std::string& param, const char* expected, const Json& got) {
  return InvalidRequest("'" + param + "' must be " + expected + ", got " + JsonTypeName(got),
                        param);
}

// The field, or nullptr when absent or null (OpenAI treats null as "not given").
const Json* Field(const Json& body, std::string_view name) { return JsonChild(body, name); }

std::optional<ApiError> ParseBool(const Json& body, const char* name, bool* out) {
  const Json* v = Field(body, name);
  if (v == nullptr) return std::nullopt;
  if (!v->is_boolean()) return WrongType(name, "a boolean", *v);
  *out = v->get<bool>();
  return std::nullopt;
}

std::optional<ApiError> ParseNumber(const Json& body, const char* name, double lo,
                                    bool lo_inclusive, double hi, double* out) {
  const Json* v = Field(body, name);
  if (v == nullptr) return std::nullopt;
  if (!v->is_number()) return WrongType(name, "a number", *v);
  double x = v->get<double>();
  bool lo_ok = lo_inclusive ? x >= lo : x > lo;
  if (!lo_ok || x > hi) {
    auto num = [](double d) {
      char buf[32];
      std::snprintf(buf, sizeof(buf), "%g", d);
      return std::string(buf);
    };
    std::string range = std::string(lo_inclusive ? "[" : "(") + num(lo) + ", " + num(hi) + "]";
    return InvalidRequest("'" + std::string(name) + "' must be in " + range + ", got " + v->dump(),
                          name);
  }
  *out = x;
  return std::nullopt;
}

// max_tokens-like integer fields: at least 1.
std::optional<ApiError> ParseTokenCount(const Json& body, const char* name,
                                        std::optional<int>* out) {
  const Json* v = Field(body, name);
  if (v == nullptr) return std::nullopt;
  if (!v->is_number_integer()) return WrongType(name, "an integer", *v);
  int64_t x = v->get<int64_t>();
  if (x < 1) {
    return InvalidRequest(
        "'" + std::string(name) + "' must be at least 1, got " + std::to_string(x), name);
  }
  *out = static_cast<int>(std::min<int64_t>(x, std::numeric_limits<int>::max()));
  return std::nullopt;
}

// Fields that change what is generated in ways the engine does not implement: refuse them
// rather than silently answer something else.
std::optional<ApiError> RejectUnsupported(const Json& body, ApiKind kind) {
  if (const Json* n = Field(body, "n")) {
    if (!n->is_number_integer() || n->get<int64_t>() != 1)
      return InvalidRequest("'n' must be 1: one choice per request is supported", "n");
  }
  if (const Json* b = Field(body, "best_of")) {
    if (!b->is_number_integer() || b->get<int64_t>() != 1)
      return InvalidRequest("'best_of' must be 1: it is not supported", "best_of");
  }
  if (const Json* e = Field(body, "echo")) {
    if (!e->is_boolean()) return WrongType("echo", "a boolean", *e);
    if (e->get<bool>()) return InvalidRequest("'echo' is not supported", "echo");
  }
  if (const Json* l = Field(body, "logprobs")) {
    if (!(l->is_boolean() && !l->get<bool>()))
      return InvalidRequest("'logprobs' is not supported", "logprobs");
  }
  if (Field(body, "top_logprobs") != nullptr)
    return InvalidRequest("'top_logprobs' is not supported", "top_logprobs");
  if (kind == ApiKind::kCompletion) {
    if (const Json* s = Field(body, "suffix")) {
      if (!(s->is_string() && s->get_ref<const std::string&>().empty()))
        return InvalidRequest("'suffix' is not supported", "suffix");
    }
  }
  for (const char* name : {"presence_penalty", "frequency_penalty"}) {
    if (const Json* p = Field(body, name)) {
      if (!p->is_number()) return WrongType(name, "a number", *p);
      if (p->get<double>() != 0.0)
        return InvalidRequest("'" + std::string(name) + "' is not supported (must be 0)", name);
    }
  }
  if (const Json* lb = Field(body, "logit_bias")) {
    if (!(lb->is_object() && lb->empty()))
      return InvalidRequest("'logit_bias' is not supported", "logit_bias");
  }
  if (kind == ApiKind::kChat) {
    for (const char* name : {"tools", "functions"}) {
      if (const Json* t = Field(body, name)) {
        if (!(t->is_array() && t->empty()))
          return InvalidRequest("'" + std::string(name) + "' is not supported", name);
      }
    }
    if (const Json* rf = Field(body, "response_format")) {
      if (!rf->is_object() || JsonStringAt(*rf, {"type"}) != "text")
        return InvalidRequest("'response_format' other than {\"type\": \"text\"} is not supported",
                              "response_format");
    }
  }
  return std::nullopt;
}

// The fields both endpoints share (everything but prompt/messages and max_tokens).
std::optional<ApiError> ParseCommon(const Json& body, ApiKind kind, CompletionRequest* out) {
  if (auto e = RejectUnsupported(body, kind)) return e;
  if (const Json* m = Field(body, "model")) {
    if (!m->is_string()) return WrongType("model", "a string", *m);
    out->model = m->get<std::string>();
  }
  if (auto e = ParseNumber(body, "temperature", 0.0, true, 2.0, &out->sampling.temperature))
    return e;
  if (auto e = ParseNumber(body, "top_p", 0.0, false, 1.0, &out->sampling.top_p)) return e;
  if (const Json* s = Field(body, "seed")) {
    if (!s->is_number_integer()) return WrongType("seed", "an integer", *s);
    out->sampling.seed =
        s->is_number_unsigned() ? static_cast<int64_t>(s->get<uint64_t>()) : s->get<int64_t>();
  }
  if (const Json* stop = Field(body, "stop")) {
    std::vector<std::string> stops;
    if (stop->is_string()) {
      stops.push_back(stop->get<std::string>());
    } else if (stop->is_array()) {
      if (stop->size() > kMaxStopStrings) {
        return InvalidRequest("'stop' may hold at most " + std::to_string(kMaxStopStrings) +
                                  " strings, got " + std::to_string(stop->size()),
                              "stop");
      }
      for (const Json& s : *stop) {
        if (!s.is_string()) return WrongType("stop", "a string or an array of strings", s);
        stops.push_back(s.get<std::string>());
      }
    } else {
      return WrongType("stop", "a string or an array of strings", *stop);
    }
    for (auto& s : stops) {
      if (!s.empty()) out->stop.push_back(std::move(s));
    }
  }
  if (auto e = ParseBool(body, "stream", &out->stream)) return e;
  if (const Json* so = Field(body, "stream_options")) {
    if (!so->is_object()) return WrongType("stream_options", "an object", *so);
    if (!out->stream) {
      return InvalidRequest("'stream_options' is only allowed when 'stream' is true",
                            "stream_options");
    }
    if (auto e = ParseBool(*so, "include_usage", &out->include_usage)) {
      e->param = "stream_options.include_usage";
      return e;
    }
  }
  if (auto e = ParseBool(body, "ignore_eos", &out->ignore_eos)) return e;
  return std::nullopt;
}

std::optional<ApiError> ParseTokenIds(const Json& array, const std::string& param,
                                      std::vector<int32_t>* out) {
  if (array.empty()) return InvalidRequest("'" + param + "' must not be empty", param);
  out->reserve(array.size());
  for (const Json& t : array) {
    if (!t.is_number_integer()) return WrongType(param, "an array of integer token ids", t);
    int64_t id = t.get<int64_t>();
    if (t.is_number_unsigned() || id < 0 || id > std::numeric_limits<int32_t>::max()) {
      return InvalidRequest(
          "'" + param + "' holds token id " + t.dump() + ", outside [0, 2147483647]", param);
    }
    out->push_back(static_cast<int32_t>(id));
  }
  return std::nullopt;
}

std::optional<ApiError> ParsePrompt(const Json& body, CompletionRequest* out) {
  const Json* p = Field(body, "prompt");
  if (p == nullptr) return InvalidRequest("'prompt' is required", "prompt");
  if (p->is_string()) {
    out->prompt_text = p->get<std::string>();
    return std::nullopt;
  }
  if (!p->is_array()) {
    return WrongType("prompt", "a string, an array of strings or an array of token ids", *p);
  }
  if (p->empty()) return InvalidRequest("'prompt' must not be empty", "prompt");
  const Json& first = p->front();
  if (first.is_number()) {
    out->prompt_is_tokens = true;
    return ParseTokenIds(*p, "prompt", &out->prompt_token_ids);
  }
  if (p->size() != 1) {
    return InvalidRequest(
        "'prompt' may hold only one prompt (batched prompts are not "
        "supported), got " +
            std::to_string(p->size()),
        "prompt");
  }
  if (first.is_string()) {
    out->prompt_text = first.get<std::string>();
    return std::nullopt;
  }
  if (first.is_array()) {
    out->prompt_is_tokens = true;
    return ParseTokenIds(first, "prompt", &out->prompt_token_ids);
  }
  return WrongType("prompt", "a string, an array of strings or an array of token ids", first);
}

std::optional<ApiError> ParseMessages(const Json& body, std::vector<ChatMessage>* out) {
  const Json* msgs = Field(body, "messages");
  if (msgs == nullptr) return InvalidRequest("'messages' is required", "messages");
  if (!msgs->is_array()) return WrongType("messages", "an array", *msgs);
  if (msgs->empty()) return InvalidRequest("'messages' must not be empty", "messages");
  for (size_t i = 0; i < msgs->size(); ++i) {
    const Json& m = (*msgs)[i];
    const std::string at = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) return WrongType(at, "an object", m);
    const Json* role = Field(m, "role");
    if (role == nullptr || !role->is_string())
      return InvalidRequest("'" + at + ".role' is required (a string)", at + ".role");
    ChatMessage msg;
    msg.role = role->get<std::string>();
    if (msg.role == "developer") msg.role = "system";  // newer clients' name for it
    if (msg.role != "system" && msg.role != "user" && msg.role != "assistant") {
      return InvalidRequest(
          "'" + at + ".role' must be system, user or assistant, got '" + msg.role + "'",
          at + ".role");
    }
    const Json* content = Field(m, "content");
    if (content == nullptr) {
      if (msg.role != "assistant")
        return InvalidRequest("'" + at + ".content' is required", at + ".content");
    } else if (content->is_string()) {
      msg.content = content->get<std::string>();
    } else if (content->is_array()) {
      for (size_t j = 0; j < content->size(); ++j) {
        const Json& part = (*content)[j];
        const std::string part_at = at + ".content[" + std::to_string(j) + "]";
        if (!part.is_object()) return WrongType(part_at, "an object", part);
        std::string type = JsonStringAt(part, {"type"});
        if (type != "text") {
          return InvalidRequest("'" + part_at +
                                    ".type' must be 'text' (only text is "
                                    "supported), got '" +
                                    type + "'",
                                part_at + ".type");
        }
        const Json* text = Field(part, "text");
        if (text == nullptr || !text->is_string())
          return InvalidRequest("'" + part_at + ".text' is required (a string)", part_at + ".text");
        if (j > 0) msg.content += '\n';
        msg.content += text->get_ref<const std::string&>();
      }
    } else {
      return WrongType(at + ".content", "a string or an array of content parts", *content);
    }
    out->push_back(std::move(msg));
  }
  return std::nullopt;
}

}  // namespace

ApiError InvalidRequest(std::string message, std::string param, std::string code) {
  ApiError e;
  e.status = 400;
  e.message = std::move(message);
  e.param = std::move(param);
  e.code = std::move(code);
  return e;
}

std::string ErrorBody(const ApiError& error) {
  Json body = {{"error",
                {{"message", error.message},
                 {"type", error.type},
                 {"param", error.param.empty() ? Json() : Json(error.param)},
                 {"code", error.code.empty() ? Json() : Json(error.code)}}}};
  return DumpJson(body);
}

ApiError ErrorForStatus(int status) {
  ApiError e;
  e.status = status;
  switch (status) {
    case 400:
      e.message = "bad request";
      break;
    case 401:
      e.message = "missing or invalid API key";
      e.code = "invalid_api_key";
      break;
    case 404:
      e.message = "not found";
      e.code = "not_found";
      break;
    case 405:
      e.message = "method not allowed";
      break;
    case 413:
      e.message = "request body too large";
      e.code = "request_too_large";
      break;
    case 503:
      e.message = "no worker available; retry later";
      e.type = "server_error";
      break;
    default:
      e.message = "HTTP " + std::to_string(status);
      if (status >= 500) e.type = "server_error";
  }
  return e;
}

std::string DumpJson(const Json& value) {
  return value.dump(-1, ' ', false, Json::error_handler_t::replace);
}

std::optional<ApiError> ParseCompletionRequest(const Json& body, CompletionRequest* out) {
  *out = CompletionRequest{};
  out->kind = ApiKind::kCompletion;
  if (!body.is_object()) return InvalidRequest("the request body must be a JSON object");
  if (auto e = ParseCommon(body, ApiKind::kCompletion, out)) return e;
  if (auto e = ParseTokenCount(body, "max_tokens", &out->max_tokens)) return e;
  return ParsePrompt(body, out);
}

std::optional<ApiError> ParseChatRequest(const Json& body, CompletionRequest* out) {
  *out = CompletionRequest{};
  out->kind = ApiKind::kChat;
  if (!body.is_object()) return InvalidRequest("the request body must be a JSON object");
  if (auto e = ParseCommon(body, ApiKind::kChat, out)) return e;
  // The newer name wins when both are given, as OpenAI documents.
  if (auto e = ParseTokenCount(body, "max_tokens", &out->max_tokens)) return e;
  if (auto e = ParseTokenCount(body, "max_completion_tokens", &out->max_tokens)) return e;
  std::vector<ChatMessage> messages;
  if (auto e = ParseMessages(body, &messages)) return e;
  out->prompt_text = ApplyChatTemplate(messages);
  return std::nullopt;
}

std::string ApplyChatTemplate(const std::vector<ChatMessage>& messages) {
  std::string out;
  for (const ChatMessage& m : messages) {
    out += "<|";
    out += m.role;
    out += "|>\n";
    out += m.content;
    out += '\n';
  }
  out += "<|assistant|>\n";
  return out;
}

std::optional<ApiError> CheckModel(const CompletionRequest& request,
                                   std::string_view served_model) {
  if (request.model.empty() || request.model == served_model) return std::nullopt;
  ApiError e;
  e.status = 404;
  e.message = "The model '" + request.model + "' does not exist; this pool serves '" +
              std::string(served_model) + "'";
  e.param = "model";
  e.code = "model_not_found";
  return e;
}

std::optional<ApiError> ResolveMaxTokens(const CompletionRequest& request, int prompt_tokens,
                                         int max_model_len, int* max_tokens) {
  const char* prompt_param = request.kind == ApiKind::kChat ? "messages" : "prompt";
  if (prompt_tokens <= 0) return InvalidRequest("the prompt is empty", prompt_param);
  const char* max_param = request.kind == ApiKind::kChat ? "max_completion_tokens" : "max_tokens";
  if (max_model_len <= 0) {
    // Context unknown: the worker enforces it.
    *max_tokens = request.max_tokens.value_or(
        request.kind == ApiKind::kChat ? kDefaultChatMaxTokensCap : kDefaultCompletionMaxTokens);
    return std::nullopt;
  }
  if (prompt_tokens >= max_model_len) {
    return InvalidRequest("This model's maximum context length is " +
                              std::to_string(max_model_len) + " tokens. However, your prompt has " +
                              std::to_string(prompt_tokens) +
                              " tokens, which leaves no room for output.",
                          prompt_param, "context_length_exceeded");
  }
  const int left = max_model_len - prompt_tokens;
  if (request.max_tokens) {
    if (*request.max_tokens > left) {
      return InvalidRequest(
          "'" + std::string(max_param) + "' is too large: " + std::to_string(*request.max_tokens) +
              ". This model's maximum context length is " + std::to_string(max_model_len) +
              " tokens and your prompt has " + std::to_string(prompt_tokens) +
              " tokens, so at most " + std::to_string(left) + " tokens can be generated.",
          max_param, "context_length_exceeded");
    }
    *max_tokens = *request.max_tokens;
    return std::nullopt;
  }
  *max_tokens = request.kind == ApiKind::kChat ? std::min(left, kDefaultChatMaxTokensCap)
                                               : std::min(left, kDefaultCompletionMaxTokens);
  return std::nullopt;
}

Json BuildResponse(const ResponseHeader& header, std::string_view text,
                   std::string_view finish_reason, const TokenUsage& usage) {
  Json choice = {{"index", 0}, {"finish_reason", finish_reason}, {"logprobs", nullptr}};
  if (header.kind == ApiKind::kChat) {
    choice["message"] = {{"role", "assistant"}, {"content", text}};
  } else {
    choice["text"] = text;
  }
  return {{"id", header.id},
          {"object", header.kind == ApiKind::kChat ? "chat.completion" : "text_completion"},
          {"created", header.created},
          {"model", header.model},
          {"choices", Json::array({std::move(choice)})},
          {"usage",
           {{"prompt_tokens", usage.prompt_tokens},
            {"completion_tokens", usage.completion_tokens},
            {"total_tokens", usage.prompt_tokens + usage.completion_tokens}}}};
}

Json BuildModelList(std::string_view model, int64_t created) {
  return {
      {"object", "list"},
      {"data",
       Json::array(
           {{{"id", model}, {"object", "model"}, {"created", created}, {"owned_by", "pdpool"}}})}};
}

std::string SseEvent(const Json& value) {
  std::string out = "data: ";
  out += DumpJson(value);
  out += "\n\n";
  return out;
}

ChunkEncoder::ChunkEncoder(ResponseHeader header, bool include_usage)
    : header_(std::move(header)), include_usage_(include_usage) {
  prefix_ = "data: {\"id\":";
  prefix_ += DumpJson(header_.id);
  prefix_ += header_.kind == ApiKind::kChat ? ",\"object\":\"chat.completion.chunk\""
                                            : ",\"object\":\"text_completion\"";
  prefix_ += ",\"created\":" + std::to_string(header_.created);
  prefix_ += ",\"model\":" + DumpJson(header_.model);
  prefix_ += ",\"choices\":[";
}

std::string ChunkEncoder::Chunk(std::string_view choice) const {
  std::string out;
  out.reserve(prefix_.size() + choice.size() + 32);
  out += prefix_;
  out += choice;
  out += ']';
  // With include_usage every chunk but the last carries "usage": null, as OpenAI sends it.
  if (include_usage_) out += ",\"usage\":null";
  out += "}\n\n";
  return out;
}

std::string ChunkEncoder::RoleEvent() const {
  return Chunk(
      R"({"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null})");
}

std::string ChunkEncoder::TextEvent(std::string_view text) const {
  std::string choice;
  if (header_.kind == ApiKind::kChat) {
    choice = R"({"index":0,"delta":{"content":)";
    choice += DumpJson(Json(text));
    choice += R"(},"logprobs":null,"finish_reason":null})";
  } else {
    choice = R"({"index":0,"text":)";
    choice += DumpJson(Json(text));
    choice += R"(,"logprobs":null,"finish_reason":null})";
  }
  return Chunk(choice);
}

std::string ChunkEncoder::FinishEvent(std::string_view finish_reason) const {
  std::string choice =
      header_.kind == ApiKind::kChat ? R"({"index":0,"delta":{})" : R"({"index":0,"text":"")";
  choice += R"(,"logprobs":null,"finish_reason":)";
  choice += DumpJson(Json(finish_reason));
  choice += '}';
  return Chunk(choice);
}

std::string ChunkEncoder::UsageEvent(const TokenUsage& usage) const {
  std::string out = prefix_;
  out += "],\"usage\":{\"prompt_tokens\":" + std::to_string(usage.prompt_tokens) +
         ",\"completion_tokens\":" + std::to_string(usage.completion_tokens) +
         ",\"total_tokens\":" + std::to_string(usage.prompt_tokens + usage.completion_tokens) +
         "}}\n\n";
  return out;
}

std::string ChunkEncoder::ErrorEvent(const ApiError& error) {
  std::string out = "data: ";
  out += ErrorBody(error);
  out += "\n\n";
  return out;
}

}  // namespace pdpool::agent
