// The live replay's schedule (bench/live_replay/schedule.h): when each trace request is sent
// under time compression, which ones the rate multiplier keeps, and the token caps — what a
// user of `make demo` relies on when they say "20 s of the trace at 10x, a third of its rate".
#include <gtest/gtest.h>

#include <map>
#include <set>
#include <utility>

#include "bench/live_replay/schedule.h"

namespace pdpool::bench::live_replay {
namespace {

using replay::TraceRequest;

std::vector<TraceRequest> EverySecond(int n) {
  std::vector<TraceRequest> trace;
  for (int i = 0; i < n; ++i) trace.push_back({static_cast<double>(i), 100 + i, 10 + i});
  return trace;
}

TEST(LiveReplayScheduleTest, CompressionDividesArrivalsIntoSendTimes) {
  ScheduleOptions o;
  o.time_compression = 10;
  auto s = BuildSchedule({{0, 5, 1}, {10, 6, 2}, {25, 7, 3}}, o);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  ASSERT_EQ(s->requests.size(), 3u);
  EXPECT_DOUBLE_EQ(s->requests[1].trace_s, 10);
  EXPECT_DOUBLE_EQ(s->requests[1].send_s, 1.0);
  EXPECT_DOUBLE_EQ(s->requests[2].send_s, 2.5);
  EXPECT_EQ(s->requests[2].index, 2);
  EXPECT_EQ(s->requests[2].prompt_tokens, 7);
  EXPECT_DOUBLE_EQ(s->window_s, 25);
  EXPECT_DOUBLE_EQ(s->wall_s, 2.5);
}

TEST(LiveReplayScheduleTest, WindowIsRebasedToItsStart) {
  ScheduleOptions o;
  o.window_start_s = 10;
  o.window_end_s = 20;
  o.time_compression = 2;
  auto s = BuildSchedule(EverySecond(60), o);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  ASSERT_EQ(s->requests.size(), 10u);  // arrivals 10..19
  EXPECT_EQ(s->window_requests, 10);
  EXPECT_DOUBLE_EQ(s->requests.front().trace_s, 0);
  EXPECT_EQ(s->requests.front().prompt_tokens, 110);
  EXPECT_DOUBLE_EQ(s->requests.back().send_s, 4.5);
  EXPECT_DOUBLE_EQ(s->window_s, 10);
  EXPECT_DOUBLE_EQ(s->wall_s, 5);
}

TEST(LiveReplayScheduleTest, MultiplierBelowOneKeepsASeededSubset) {
  ScheduleOptions o;
  o.rate_multiplier = 0.3;
  o.seed = 7;
  const std::vector<TraceRequest> trace = EverySecond(2000);
  auto a = BuildSchedule(trace, o);
  auto b = BuildSchedule(trace, o);
  o.seed = 8;
  auto c = BuildSchedule(trace, o);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  // Kept requests are the trace's own, unshifted, and the same ones for the same seed.
  ASSERT_EQ(a->requests.size(), b->requests.size());
  std::set<double> kept_a, kept_c;
  for (size_t i = 0; i < a->requests.size(); ++i) {
    const ScheduledRequest& r = a->requests[i];
    EXPECT_DOUBLE_EQ(r.trace_s, b->requests[i].trace_s);
    const int second = static_cast<int>(r.trace_s);
    EXPECT_DOUBLE_EQ(r.trace_s, second);
    EXPECT_EQ(r.prompt_tokens, 100 + second);
    kept_a.insert(r.trace_s);
  }
  for (const ScheduledRequest& r : c->requests) kept_c.insert(r.trace_s);
  EXPECT_NE(kept_a, kept_c);
  // About 30 % of 2000 (binomial: sd ≈ 20).
  EXPECT_GT(a->requests.size(), 500u);
  EXPECT_LT(a->requests.size(), 700u);
}

TEST(LiveReplayScheduleTest, MultiplierAboveOneMergesCopies) {
  ScheduleOptions o;
  o.rate_multiplier = 3;
  auto s = BuildSchedule(EverySecond(100), o);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->requests.size(), 300u);
  EXPECT_EQ(s->window_requests, 100);
  for (size_t i = 1; i < s->requests.size(); ++i) {
    EXPECT_LE(s->requests[i - 1].send_s, s->requests[i].send_s);
    EXPECT_EQ(s->requests[i].index, static_cast<int64_t>(i));
  }
}

TEST(LiveReplayScheduleTest, CapsCutTokensAndCountTheRequestsCut) {
  ScheduleOptions o;
  o.max_prompt_tokens = 102;
  o.max_output_tokens = 11;
  auto s = BuildSchedule(EverySecond(5), o);  // prompts 100..104, outputs 10..14
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->prompt_capped, 2);
  EXPECT_EQ(s->output_capped, 3);
  EXPECT_EQ(s->requests[0].prompt_tokens, 100);
  EXPECT_EQ(s->requests[4].prompt_tokens, 102);
  EXPECT_EQ(s->requests[0].output_tokens, 10);
  EXPECT_EQ(s->requests[4].output_tokens, 11);
}

TEST(LiveReplayScheduleTest, BadOptionsNameTheFlag) {
  const std::vector<TraceRequest> trace = EverySecond(10);
  auto error_of = [&](ScheduleOptions o) {
    auto s = BuildSchedule(trace, o);
    return s.ok() ? std::string("ok") : s.status().message();
  };
  ScheduleOptions o;
  o.time_compression = 0.5;
  EXPECT_NE(error_of(o).find("--time-compression"), std::string::npos);
  o = {};
  o.window_start_s = 5;
  o.window_end_s = 5;
  EXPECT_NE(error_of(o).find("--window-end"), std::string::npos);
  o = {};
  o.window_start_s = 100;  // past the trace
  EXPECT_NE(error_of(o).find("no trace request in the window"), std::string::npos);
  o = {};
  o.max_output_tokens = -1;
  EXPECT_NE(error_of(o).find("--max-output-tokens"), std::string::npos);
  o = {};
  o.rate_multiplier = 0;
  EXPECT_NE(error_of(o).find("--rate-multiplier"), std::string::npos);
}

}  // namespace
}  // namespace pdpool::bench::live_replay
