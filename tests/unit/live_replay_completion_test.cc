// One replayed request (bench/live_replay/completion_request.h, completion_stream.h,
// request_record.h, http_completion_client.h's ParseRouterUrl): the body sent to the router,
// the parsing of its server-sent events, and the TTFT/TPOT measured from them — the numbers
// the live replay's report is made of.
#include <gtest/gtest.h>

#include <string>

#include "bench/live_replay/completion_request.h"
#include "bench/live_replay/completion_stream.h"
#include "bench/live_replay/http_completion_client.h"
#include "bench/live_replay/request_record.h"
#include "common/json.h"

namespace pdpool::bench::live_replay {
namespace {

TimePoint At(double seconds) {
  return TimePoint(std::chrono::duration_cast<Duration>(std::chrono::duration<double>(seconds)));
}

double Seconds(TimePoint t) { return std::chrono::duration<double>(t.time_since_epoch()).count(); }

TEST(LiveReplayPromptTest, PromptHasExactlyTheBytesAskedForInPrintableAscii) {
  for (int32_t n : {1, 2, 3, 7, 44, 45, 1000, 32768}) {
    const std::string text = PromptText(12345, n);
    ASSERT_EQ(text.size(), static_cast<size_t>(n));
    for (char c : text) ASSERT_TRUE(c >= 0x20 && c < 0x7f) << static_cast<int>(c);
  }
  EXPECT_EQ(PromptText(0, 0), "");
  EXPECT_EQ(PromptText(3, 20), "r3 the quick brown f");
  EXPECT_NE(PromptText(3, 100), PromptText(4, 100));
}

TEST(LiveReplayPromptTest, BodyAsksForAStreamOfExactlyTheTokens) {
  const Json body = Json::parse(CompletionBody("test-tiny", 9, 374, 44));
  EXPECT_EQ(body["model"], "test-tiny");
  // The router puts BOS before the text: 373 bytes are 374 prompt tokens.
  EXPECT_EQ(body["prompt"].get<std::string>().size(), 373u);
  EXPECT_EQ(body["max_tokens"], 44);
  EXPECT_EQ(body["stream"], true);
  EXPECT_EQ(body["stream_options"]["include_usage"], true);
  EXPECT_EQ(body["ignore_eos"], true);
  EXPECT_EQ(body["temperature"], 0);
  // The router refuses an empty prompt: a one-token prompt is one byte (BOS + 1).
  EXPECT_EQ(Json::parse(CompletionBody("m", 0, 1, 1))["prompt"].get<std::string>().size(), 1u);
}

// What the router sends for a 3-token completion with include_usage (agent/router ChunkEncoder).
std::string RouterStream(bool usage, const std::string& first_text = "a") {
  const std::string head =
      R"(data: {"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[)";
  const std::string tail = usage ? R"(],"usage":null})" : "]}";
  std::string s;
  for (const std::string& text : {first_text, std::string("b"), std::string("c")}) {
    s += head + R"({"index":0,"text":")" + text + R"(","logprobs":null,"finish_reason":null})" +
         tail + "\n\n";
  }
  s += head + R"({"index":0,"text":"","logprobs":null,"finish_reason":"length"})" + tail + "\n\n";
  if (usage) {
    s += head + R"(],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}})" +
         "\n\n";
  }
  return s + "data: [DONE]\n\n";
}

TEST(LiveReplayStreamTest, TimesTokensAsTheBytesArriveSplitAnywhere) {
  const std::string stream = RouterStream(true);
  // One byte per Feed, the clock at the byte's position: a token's time is when its line ends.
  CompletionStream parser;
  for (size_t i = 0; i < stream.size(); ++i) {
    parser.Feed(std::string_view(stream).substr(i, 1), At(static_cast<double>(i)));
  }
  parser.Finish(At(1e6));
  ASSERT_TRUE(parser.done());
  EXPECT_EQ(parser.error(), "");
  EXPECT_EQ(parser.Tokens(), 3);
  EXPECT_TRUE(parser.has_usage());
  const size_t first_end = stream.find('\n');
  const size_t third_start = stream.find("\"text\":\"c\"");
  ASSERT_TRUE(parser.first_token() && parser.last_token());
  EXPECT_DOUBLE_EQ(Seconds(*parser.first_token()), static_cast<double>(first_end));
  EXPECT_DOUBLE_EQ(Seconds(*parser.last_token()),
                   static_cast<double>(stream.find('\n', third_start)));
}

TEST(LiveReplayStreamTest, PrefersUsageOverCountedChunks) {
  std::string stream = RouterStream(true);
  // Usage says 5 (text held back by the router is not a chunk of its own).
  stream.replace(stream.find("\"completion_tokens\":3"), 21, "\"completion_tokens\":5");
  CompletionStream parser;
  parser.Feed(stream, At(1));
  EXPECT_EQ(parser.token_events(), 3);
  EXPECT_EQ(parser.Tokens(), 5);
}

TEST(LiveReplayStreamTest, WithoutUsageCountsTokenChunks) {
  CompletionStream parser;
  parser.Feed(RouterStream(false), At(1));
  EXPECT_TRUE(parser.done());
  EXPECT_FALSE(parser.has_usage());
  EXPECT_EQ(parser.Tokens(), 3);
}

TEST(LiveReplayStreamTest, FirstTokenWithHeldBackTextCountsButFinishChunkDoesNot) {
  CompletionStream parser;
  parser.Feed(RouterStream(false, ""), At(2));
  EXPECT_EQ(parser.token_events(), 3);  // "", "b", "c"; not the empty finish chunk
  ASSERT_TRUE(parser.first_token());
  EXPECT_DOUBLE_EQ(Seconds(*parser.first_token()), 2);
}

TEST(LiveReplayStreamTest, CrLfLinesAndALastLineWithoutNewline) {
  CompletionStream parser;
  parser.Feed("data: {\"choices\":[{\"text\":\"x\",\"finish_reason\":null}]}\r\n\r\n", At(1));
  parser.Feed("data: [DONE]", At(2));
  EXPECT_FALSE(parser.done());
  parser.Finish(At(3));
  EXPECT_TRUE(parser.done());
  EXPECT_EQ(parser.Tokens(), 1);
}

TEST(LiveReplayStreamTest, ErrorEventAndMalformedChunkAreErrors) {
  CompletionStream error;
  error.Feed(
      "data: {\"choices\":[{\"text\":\"x\",\"finish_reason\":null}]}\n\n"
      "data: {\"error\":{\"message\":\"decode worker lost\",\"type\":\"server_error\"}}\n\n"
      "data: [DONE]\n\n",
      At(1));
  EXPECT_EQ(error.error(), "decode worker lost");
  EXPECT_FALSE(error.done());
  EXPECT_EQ(error.Tokens(), 1);

  CompletionStream malformed;
  malformed.Feed("data: {not json\n\n", At(1));
  EXPECT_NE(malformed.error().find("malformed"), std::string::npos);
}

TEST(LiveReplayRecordTest, LatencyCountsFromTheScheduledSendTime) {
  ScheduledRequest request;
  request.send_s = 4;
  request.prompt_tokens = 100;
  request.output_tokens = 5;
  CompletionResult result;
  result.ok = true;
  result.tokens = 5;
  result.first_token = At(10.5);
  result.last_token = At(10.9);
  result.end = At(11);
  // Scheduled at 10 s (the run's clock), sent late: the lateness is latency.
  const RequestRecord r = MeasureRequest(request, At(10), result);
  EXPECT_TRUE(r.outcome.completed);
  EXPECT_EQ(r.status, "ok");
  EXPECT_DOUBLE_EQ(r.outcome.arrival_s, 4);
  EXPECT_NEAR(r.outcome.ttft_s, 0.5, 1e-9);
  EXPECT_NEAR(r.outcome.tpot_s, 0.1, 1e-9);  // (10.9 − 10.5) / (5 − 1)
  EXPECT_NEAR(r.e2e_s, 1.0, 1e-9);
  EXPECT_EQ(r.outcome.output_tokens, 5);

  result.tokens = 1;
  result.last_token = result.first_token;
  EXPECT_DOUBLE_EQ(MeasureRequest(request, At(10), result).outcome.tpot_s, 0);
}

TEST(LiveReplayRecordTest, AFailedRequestIsNotCompletedAndKeepsItsReason) {
  ScheduledRequest request;
  request.send_s = 1;
  CompletionResult result;
  result.error = "HTTP 503: no decode worker";
  result.tokens = 2;
  result.first_token = At(1.2);
  result.last_token = At(1.3);
  result.end = At(1.5);
  const RequestRecord r = MeasureRequest(request, At(1), result);
  EXPECT_FALSE(r.outcome.completed);
  EXPECT_EQ(r.status, "HTTP 503: no decode worker");
  EXPECT_NEAR(r.outcome.ttft_s, 0.2, 1e-9);
  EXPECT_LT(r.outcome.tpot_s, 0);
  EXPECT_FALSE(replay::MeetsSlo(r.outcome, {10, 10}));

  const RequestRecord refused = FailedRequest(request, "client overloaded");
  EXPECT_FALSE(refused.outcome.completed);
  EXPECT_LT(refused.outcome.ttft_s, 0);
  EXPECT_LT(refused.e2e_s, 0);
}

TEST(LiveReplayRouterUrlTest, SplitsOriginAndPathPrefix) {
  auto plain = ParseRouterUrl("http://127.41.3.2:8080");
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(plain->origin, "http://127.41.3.2:8080");
  EXPECT_EQ(plain->base_path, "");
  auto prefixed = ParseRouterUrl("https://gw.example/pools/a/");
  ASSERT_TRUE(prefixed.ok());
  EXPECT_EQ(prefixed->origin, "https://gw.example");
  EXPECT_EQ(prefixed->base_path, "/pools/a");
  for (const char* bad : {"127.0.0.1:8080", "ftp://x", "http://", "http://:80"}) {
    auto r = ParseRouterUrl(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_NE(r.status().message().find("--router"), std::string::npos);
  }
}

}  // namespace
}  // namespace pdpool::bench::live_replay
