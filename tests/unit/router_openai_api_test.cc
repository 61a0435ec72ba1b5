// Tests of the router's OpenAI surface without a server: request parsing and validation
// (errors name the field), the chat template, context/max_tokens resolution, error bodies,
// response bodies, SSE framing, and OutputText (stop strings, split UTF-8, EOS).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "agent/model/tokenizer.h"
#include "agent/router/openai_api.h"
#include "agent/router/output_text.h"

namespace pdpool::agent {
namespace {

CompletionRequest ParseOk(const Json& body) {
  CompletionRequest r;
  auto e = ParseCompletionRequest(body, &r);
  EXPECT_FALSE(e.has_value()) << (e ? e->message : "");
  return r;
}

ApiError ParseErr(const Json& body, ApiKind kind = ApiKind::kCompletion) {
  CompletionRequest r;
  auto e = kind == ApiKind::kChat ? ParseChatRequest(body, &r) : ParseCompletionRequest(body, &r);
  EXPECT_TRUE(e.has_value()) << body.dump();
  return e.value_or(ApiError{});
}

// Splits an SSE stream into the JSON of its data events; "[DONE]" as a string.
std::vector<Json> SseData(const std::string& stream) {
  std::vector<Json> out;
  size_t pos = 0;
  while (pos < stream.size()) {
    size_t end = stream.find("\n\n", pos);
    EXPECT_NE(end, std::string::npos) << "unterminated event: " << stream.substr(pos);
    if (end == std::string::npos) break;
    std::string event = stream.substr(pos, end - pos);
    EXPECT_EQ(event.rfind("data: ", 0), 0u) << event;
    std::string data = event.substr(6);
    out.push_back(data == "[DONE]" ? Json("[DONE]") : Json::parse(data));
    pos = end + 2;
  }
  return out;
}

TEST(RouterOpenAiApiTest, CompletionPromptForms) {
  auto r = ParseOk({{"model", "tiny"}, {"prompt", "hello"}, {"max_tokens", 7}});
  EXPECT_EQ(r.model, "tiny");
  EXPECT_EQ(r.prompt_text, "hello");
  EXPECT_FALSE(r.prompt_is_tokens);
  EXPECT_EQ(r.max_tokens, 7);

  r = ParseOk({{"prompt", {"one"}}});
  EXPECT_EQ(r.prompt_text, "one");
  EXPECT_FALSE(r.max_tokens.has_value());

  r = ParseOk({{"prompt", {1, 2, 3}}});
  EXPECT_TRUE(r.prompt_is_tokens);
  EXPECT_EQ(r.prompt_token_ids, (std::vector<int32_t>{1, 2, 3}));

  r = ParseOk({{"prompt", Json::array({Json::array({5, 6})})}});
  EXPECT_EQ(r.prompt_token_ids, (std::vector<int32_t>{5, 6}));
}

TEST(RouterOpenAiApiTest, CompletionRejectsBatchesAndBadPrompts) {
  ApiError e = ParseErr({{"prompt", {"a", "b"}}});
  EXPECT_EQ(e.status, 400);
  EXPECT_EQ(e.param, "prompt");
  EXPECT_NE(e.message.find("only one"), std::string::npos) << e.message;

  EXPECT_EQ(ParseErr({{"max_tokens", 3}}).param, "prompt");          // missing
  EXPECT_EQ(ParseErr({{"prompt", Json::array()}}).param, "prompt");  // empty
  EXPECT_EQ(ParseErr({{"prompt", {1, -2}}}).param, "prompt");        // negative id
  EXPECT_EQ(ParseErr({{"prompt", 42}}).param, "prompt");             // wrong type
  EXPECT_EQ(ParseErr(Json::array({1, 2})).status, 400);              // not an object
}

TEST(RouterOpenAiApiTest, ParameterLimitsNameTheField) {
  auto check = [](Json extra, const std::string& param, const std::string& needle) {
    Json body = {{"prompt", "x"}};
    body.update(extra);
    ApiError e = ParseErr(body);
    EXPECT_EQ(e.status, 400) << body.dump();
    EXPECT_EQ(e.param, param) << body.dump();
    EXPECT_NE(e.message.find(needle), std::string::npos) << e.message;
  };
  check({{"max_tokens", 0}}, "max_tokens", "at least 1");
  check({{"max_tokens", 1.5}}, "max_tokens", "integer");
  check({{"temperature", 2.5}}, "temperature", "[0, 2]");
  check({{"temperature", -0.1}}, "temperature", "[0, 2]");
  check({{"top_p", 0}}, "top_p", "(0, 1]");
  check({{"top_p", 1.01}}, "top_p", "(0, 1]");
  check({{"seed", "x"}}, "seed", "integer");
  check({{"stop", {"a", "b", "c", "d", "e"}}}, "stop", "at most 4");
  check({{"stop", 3}}, "stop", "string");
  check({{"n", 2}}, "n", "must be 1");
  check({{"echo", true}}, "echo", "not supported");
  check({{"logprobs", 2}}, "logprobs", "not supported");
  check({{"best_of", 3}}, "best_of", "");
  check({{"stream", "yes"}}, "stream", "boolean");
  check({{"stream_options", {{"include_usage", true}}}}, "stream_options", "stream");
  check({{"presence_penalty", 0.5}}, "presence_penalty", "not supported");
  check({{"model", 3}}, "model", "string");
}

TEST(RouterOpenAiApiTest, AcceptsNeutralValuesOfUnsupportedFields) {
  auto r = ParseOk({{"prompt", "x"},
                    {"n", 1},
                    {"echo", false},
                    {"logprobs", nullptr},
                    {"presence_penalty", 0},
                    {"temperature", 0},
                    {"top_p", 1},
                    {"seed", 7},
                    {"stop", {"", "END"}},
                    {"stream", true},
                    {"stream_options", {{"include_usage", true}}},
                    {"ignore_eos", true},
                    {"user", "someone"}});
  EXPECT_EQ(r.sampling.temperature, 0.0);
  EXPECT_EQ(r.sampling.seed, 7);
  EXPECT_EQ(r.stop, std::vector<std::string>{"END"});
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  EXPECT_TRUE(r.ignore_eos);
}

TEST(RouterOpenAiApiTest, ChatTemplateAndContentParts) {
  CompletionRequest r;
  Json body = {{"model", "tiny"},
               {"messages",
                {{{"role", "system"}, {"content", "Be brief."}},
                 {{"role", "user"},
                  {"content",
                   {{{"type", "text"}, {"text", "Hi"}}, {{"type", "text"}, {"text", "there"}}}}}}},
               {"max_completion_tokens", 9},
               {"max_tokens", 3}};
  ASSERT_FALSE(ParseChatRequest(body, &r).has_value());
  EXPECT_EQ(r.kind, ApiKind::kChat);
  EXPECT_EQ(r.prompt_text, "<|system|>\nBe brief.\n<|user|>\nHi\nthere\n<|assistant|>\n");
  EXPECT_EQ(r.max_tokens, 9);  // max_completion_tokens wins
}

TEST(RouterOpenAiApiTest, ChatRejectsBadMessages) {
  EXPECT_EQ(ParseErr({{"messages", Json::array()}}, ApiKind::kChat).param, "messages");
  EXPECT_EQ(ParseErr({{"prompt", "x"}}, ApiKind::kChat).param, "messages");
  EXPECT_EQ(ParseErr({{"messages", {{{"role", "tool"}, {"content", "x"}}}}}, ApiKind::kChat).param,
            "messages[0].role");
  EXPECT_EQ(ParseErr({{"messages", {{{"role", "user"}}}}}, ApiKind::kChat).param,
            "messages[0].content");
  Json image = {{"messages",
                 {{{"role", "user"},
                   {"content", {{{"type", "image_url"}, {"image_url", {{"url", "x"}}}}}}}}}};
  ApiError e = ParseErr(image, ApiKind::kChat);
  EXPECT_EQ(e.param, "messages[0].content[0].type");
  EXPECT_NE(e.message.find("only text"), std::string::npos);
  EXPECT_EQ(ParseErr({{"messages", {{{"role", "user"}, {"content", "x"}}}},
                      {"tools", {{{"type", "function"}}}}},
                     ApiKind::kChat)
                .param,
            "tools");
}

TEST(RouterOpenAiApiTest, ModelMismatchIs404ModelNotFound) {
  CompletionRequest r;
  r.model = "other";
  auto e = CheckModel(r, "tiny");
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->status, 404);
  EXPECT_EQ(e->code, "model_not_found");
  r.model = "tiny";
  EXPECT_FALSE(CheckModel(r, "tiny").has_value());
  r.model = "";
  EXPECT_FALSE(CheckModel(r, "tiny").has_value());
}

TEST(RouterOpenAiApiTest, ResolveMaxTokensAgainstContext) {
  CompletionRequest completion;
  int max = 0;
  ASSERT_FALSE(ResolveMaxTokens(completion, 10, 100, &max).has_value());
  EXPECT_EQ(max, 16);
  ASSERT_FALSE(ResolveMaxTokens(completion, 90, 100, &max).has_value());
  EXPECT_EQ(max, 10);  // default clamped to what is left
  completion.max_tokens = 90;
  auto e = ResolveMaxTokens(completion, 11, 100, &max);
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->param, "max_tokens");
  EXPECT_NE(e->message.find("at most 89"), std::string::npos) << e->message;
  completion.max_tokens = 89;
  ASSERT_FALSE(ResolveMaxTokens(completion, 11, 100, &max).has_value());
  EXPECT_EQ(max, 89);

  e = ResolveMaxTokens(completion, 100, 100, &max);
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->param, "prompt");
  EXPECT_NE(e->message.find("maximum context length is 100"), std::string::npos);

  CompletionRequest chat;
  chat.kind = ApiKind::kChat;
  ASSERT_FALSE(ResolveMaxTokens(chat, 10, 100, &max).has_value());
  EXPECT_EQ(max, 90);
  ASSERT_FALSE(ResolveMaxTokens(chat, 10, 100000, &max).has_value());
  EXPECT_EQ(max, kDefaultChatMaxTokensCap);
  ASSERT_FALSE(ResolveMaxTokens(chat, 10, 0, &max).has_value());  // unknown context
  EXPECT_EQ(max, kDefaultChatMaxTokensCap);
}

TEST(RouterOpenAiApiTest, ErrorBodyShape) {
  Json body = Json::parse(ErrorBody(InvalidRequest("bad max_tokens", "max_tokens")));
  EXPECT_EQ(body["error"]["message"], "bad max_tokens");
  EXPECT_EQ(body["error"]["type"], "invalid_request_error");
  EXPECT_EQ(body["error"]["param"], "max_tokens");
  EXPECT_TRUE(body["error"]["code"].is_null());
  Json e413 = Json::parse(ErrorBody(ErrorForStatus(413)));
  EXPECT_EQ(e413["error"]["code"], "request_too_large");
}

TEST(RouterOpenAiApiTest, InvalidUtf8IsReplacedNotThrown) {
  std::string bad = "ok\xE2\x82";  // a cut euro sign
  std::string dumped;
  ASSERT_NO_THROW(dumped = DumpJson(Json(bad)));
  EXPECT_EQ(Json::parse(dumped).get<std::string>(), "ok\xEF\xBF\xBD");
}

TEST(RouterOpenAiApiTest, ResponseBodies) {
  ResponseHeader h{ApiKind::kCompletion, "cmpl-1", 1700000000, "tiny"};
  Json r = BuildResponse(h, "hi", "length", {3, 2});
  EXPECT_EQ(r["object"], "text_completion");
  EXPECT_EQ(r["choices"][0]["text"], "hi");
  EXPECT_EQ(r["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(r["usage"]["total_tokens"], 5);
  h.kind = ApiKind::kChat;
  r = BuildResponse(h, "yo", "stop", {1, 1});
  EXPECT_EQ(r["object"], "chat.completion");
  EXPECT_EQ(r["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(r["choices"][0]["message"]["content"], "yo");
  Json models = BuildModelList("tiny", 5);
  EXPECT_EQ(models["object"], "list");
  EXPECT_EQ(models["data"][0]["id"], "tiny");
  EXPECT_EQ(models["data"][0]["owned_by"], "pdpool");
}

TEST(RouterOpenAiApiTest, SseFramingOfCompletionChunks) {
  ChunkEncoder enc({ApiKind::kCompletion, "cmpl-7", 42, "tiny"}, /*include_usage=*/true);
  std::string stream = enc.TextEvent("he") + enc.TextEvent("llo \"q\"\n") +
                       enc.FinishEvent("length") + enc.UsageEvent({4, 2}) + std::string(kSseDone);
  auto events = SseData(stream);
  ASSERT_EQ(events.size(), 5u);
  EXPECT_EQ(events[0]["object"], "text_completion");
  EXPECT_EQ(events[0]["id"], "cmpl-7");
  EXPECT_EQ(events[0]["created"], 42);
  EXPECT_EQ(events[0]["choices"][0]["text"], "he");
  EXPECT_TRUE(events[0]["choices"][0]["finish_reason"].is_null());
  EXPECT_TRUE(events[0]["usage"].is_null());
  EXPECT_TRUE(events[0].contains("usage"));
  EXPECT_EQ(events[1]["choices"][0]["text"], "llo \"q\"\n");
  EXPECT_EQ(events[2]["choices"][0]["finish_reason"], "length");
  EXPECT_TRUE(events[3]["choices"].empty());
  EXPECT_EQ(events[3]["usage"]["completion_tokens"], 2);
  EXPECT_EQ(events[3]["usage"]["total_tokens"], 6);
  EXPECT_EQ(events[4], "[DONE]");
}

TEST(RouterOpenAiApiTest, SseFramingOfChatChunks) {
  ChunkEncoder enc({ApiKind::kChat, "chatcmpl-7", 42, "tiny"}, /*include_usage=*/false);
  auto events = SseData(enc.RoleEvent() + enc.TextEvent("\xFF") + enc.FinishEvent("stop"));
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[0]["object"], "chat.completion.chunk");
  EXPECT_EQ(events[0]["choices"][0]["delta"]["role"], "assistant");
  EXPECT_FALSE(events[0].contains("usage"));
  EXPECT_EQ(events[1]["choices"][0]["delta"]["content"], "\xEF\xBF\xBD");
  EXPECT_TRUE(events[2]["choices"][0]["delta"].empty());
  EXPECT_EQ(events[2]["choices"][0]["finish_reason"], "stop");
  auto err = SseData(ChunkEncoder::ErrorEvent(InvalidRequest("boom")));
  EXPECT_EQ(err[0]["error"]["message"], "boom");
}

std::vector<int32_t> Bytes(std::string_view s) { return ByteTokenizer().Encode(s); }

// Feeds tokens, returns the concatenated deltas.
std::string Feed(OutputText& out, const std::vector<int32_t>& tokens,
                 std::vector<std::string>* deltas = nullptr) {
  std::string all;
  for (int32_t t : tokens) {
    std::string d = out.Add(t);
    if (deltas) deltas->push_back(d);
    all += d;
  }
  return all;
}

TEST(RouterOutputTextTest, StopStringAcrossTokensIsTrimmedAndHeldBack) {
  ByteTokenizer tok;
  OutputText out(&tok, {"STOP"}, false);
  std::vector<std::string> deltas;
  std::string sent = Feed(out, Bytes("abST"), &deltas);
  EXPECT_EQ(sent, "ab");  // "ST" could start "STOP": held back
  EXPECT_FALSE(out.stopped());
  sent += Feed(out, Bytes("x"));
  EXPECT_EQ(sent, "abSTx");  // it did not
  sent += Feed(out, Bytes("STOPtail"));
  EXPECT_TRUE(out.stopped());
  sent += out.Flush();
  EXPECT_EQ(sent, "abSTx");
  EXPECT_EQ(out.text(), "abSTx");
  EXPECT_EQ(out.tokens(), 9);  // ...S, T, O, P: the stopping token counts; later ones do not
}

TEST(RouterOutputTextTest, SplitUtf8IsHeldUntilComplete) {
  ByteTokenizer tok;
  OutputText out(&tok, {}, false);
  std::string euro = "\xE2\x82\xAC";
  EXPECT_EQ(out.Add(static_cast<unsigned char>(euro[0])), "");
  EXPECT_EQ(out.Add(static_cast<unsigned char>(euro[1])), "");
  EXPECT_EQ(out.Add(static_cast<unsigned char>(euro[2])), euro);
  EXPECT_EQ(out.Add('a'), "a");
  EXPECT_EQ(out.Add(0xC3), "");
  EXPECT_EQ(out.Flush(), "\xC3");  // cut at the end: sent as is
}

TEST(RouterOutputTextTest, EosStopsUnlessIgnored) {
  ByteTokenizer tok;
  OutputText out(&tok, {}, false);
  Feed(out, Bytes("hi"));
  out.Add(tok.eos_id());
  EXPECT_TRUE(out.stopped());
  EXPECT_EQ(out.text(), "hi");
  OutputText keep(&tok, {}, true);
  keep.Add(tok.eos_id());
  EXPECT_FALSE(keep.stopped());
  EXPECT_EQ(keep.tokens(), 1);
}

TEST(RouterOutputTextTest, Utf8CompletePrefix) {
  EXPECT_EQ(Utf8CompletePrefix("abc"), 3u);
  EXPECT_EQ(Utf8CompletePrefix("a\xC3"), 1u);
  EXPECT_EQ(Utf8CompletePrefix("a\xC3\xA9"), 3u);
  EXPECT_EQ(Utf8CompletePrefix("\xF0\x9F\x98"), 0u);
  EXPECT_EQ(Utf8CompletePrefix("\xF0\x9F\x98\x80"), 4u);
  EXPECT_EQ(Utf8CompletePrefix("\xFF"), 1u);
  EXPECT_EQ(Utf8CompletePrefix(""), 0u);
}

}  // namespace
}  // namespace pdpool::agent
