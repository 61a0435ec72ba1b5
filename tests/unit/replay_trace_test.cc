// Trace parsing, windows and the rate multiplier of the replay harness (bench/replay/trace.h):
// what a user of pdpool-replay relies on when they say "40x the Azure trace".
#include <gtest/gtest.h>

#include <algorithm>
#include <map>

#include "bench/replay/trace.h"

namespace pdpool::bench::replay {
namespace {

const char* kCsv =
    "TIMESTAMP,ContextTokens,GeneratedTokens\n"
    "2023-11-16 18:15:46.5000000,374,44\n"
    "2023-11-16 18:15:50.0000000,396,109\n"
    "2023-11-16 18:16:46.2500000,879,55\n"
    "2023-11-16 18:17:10,91,16\n";

TEST(ReplayTraceTest, ParsesArrivalsRelativeToTheFirstRequest) {
  auto trace = ParseTraceCsv(kCsv, "t.csv");
  ASSERT_TRUE(trace.ok()) << trace.status().ToString();
  ASSERT_EQ(trace->size(), 4u);
  EXPECT_DOUBLE_EQ((*trace)[0].arrival_s, 0.0);
  EXPECT_NEAR((*trace)[1].arrival_s, 3.5, 1e-9);
  EXPECT_NEAR((*trace)[2].arrival_s, 59.75, 1e-9);
  EXPECT_NEAR((*trace)[3].arrival_s, 83.5, 1e-9);
  EXPECT_EQ((*trace)[2].prompt_tokens, 879);
  EXPECT_EQ((*trace)[2].output_tokens, 55);
}

TEST(ReplayTraceTest, ParsesAcrossMidnightAndSortsByArrival) {
  auto trace = ParseTraceCsv(
      "TIMESTAMP,ContextTokens,GeneratedTokens\r\n"
      "2023-12-31 23:59:59.5,10,2\r\n"
      "2023-12-31 23:59:58.0,20,3\r\n"
      "2024-01-01 00:00:01.0,30,4\r\n",
      "t.csv");
  ASSERT_TRUE(trace.ok()) << trace.status().ToString();
  ASSERT_EQ(trace->size(), 3u);
  EXPECT_EQ((*trace)[0].prompt_tokens, 20);
  EXPECT_NEAR((*trace)[1].arrival_s, 1.5, 1e-9);
  EXPECT_NEAR((*trace)[2].arrival_s, 3.0, 1e-9);
}

TEST(ReplayTraceTest, ErrorsNameTheFileLineAndField) {
  auto bad_header = ParseTraceCsv("time,a,b\n1,2,3\n", "x.csv");
  ASSERT_FALSE(bad_header.ok());
  EXPECT_NE(bad_header.status().message().find("x.csv:1"), std::string::npos);

  auto bad_tokens = ParseTraceCsv(
      "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,12,3\n"
      "2023-11-16 18:15:47,abc,3\n",
      "x.csv");
  ASSERT_FALSE(bad_tokens.ok());
  EXPECT_NE(bad_tokens.status().message().find("x.csv:3"), std::string::npos);
  EXPECT_NE(bad_tokens.status().message().find("ContextTokens"), std::string::npos);

  auto bad_time =
      ParseTraceCsv("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16T18:15,12,3\n", "x.csv");
  ASSERT_FALSE(bad_time.ok());
  EXPECT_NE(bad_time.status().message().find("TIMESTAMP"), std::string::npos);

  auto zero_output =
      ParseTraceCsv("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,12,0\n", "x.csv");
  ASSERT_FALSE(zero_output.ok());
  EXPECT_NE(zero_output.status().message().find("GeneratedTokens"), std::string::npos);
}

TEST(ReplayTraceTest, WindowSelectsAndRebases) {
  auto trace = ParseTraceCsv(kCsv, "t.csv");
  ASSERT_TRUE(trace.ok());
  std::vector<TraceRequest> w = SelectWindow(*trace, 3.0, 60.0);
  ASSERT_EQ(w.size(), 2u);
  EXPECT_NEAR(w[0].arrival_s, 0.5, 1e-9);
  EXPECT_NEAR(w[1].arrival_s, 56.75, 1e-9);
  EXPECT_EQ(SelectWindow(*trace, 60.0, 0).size(), 1u);  // END 0: to the end
}

std::vector<TraceRequest> Uniform(int n, double spacing) {
  std::vector<TraceRequest> t;
  for (int i = 0; i < n; ++i) t.push_back({i * spacing, 100 + i, 10 + i});
  return t;
}

TEST(ReplayTraceTest, IntegerMultiplierMergesThatManyShiftedCopies) {
  const std::vector<TraceRequest> base = Uniform(500, 1.0);
  MultiplierOptions o;
  o.multiplier = 3;
  o.seed = 7;
  o.span_s = 500;
  auto merged = ApplyRateMultiplier(base, o);
  ASSERT_TRUE(merged.ok());
  ASSERT_EQ(merged->size(), 1500u);
  EXPECT_TRUE(std::is_sorted(
      merged->begin(), merged->end(),
      [](const TraceRequest& a, const TraceRequest& b) { return a.arrival_s < b.arrival_s; }));
  // Every request of the original appears exactly three times, lengths intact, within the span.
  std::map<int, int> copies;
  for (const TraceRequest& r : *merged) {
    ASSERT_GE(r.arrival_s, 0.0);
    ASSERT_LT(r.arrival_s, 500.0);
    EXPECT_EQ(r.output_tokens, r.prompt_tokens - 90);
    ++copies[r.prompt_tokens];
  }
  ASSERT_EQ(copies.size(), 500u);
  for (const auto& [prompt, n] : copies) EXPECT_EQ(n, 3) << prompt;
  // Copy 0 is the original itself: request 0 still arrives at 0.
  EXPECT_DOUBLE_EQ(merged->front().arrival_s, 0.0);
  // The shifted copies are not stacked on the original (offsets are random in [0, 60)).
  int at_original_times = 0;
  for (const TraceRequest& r : *merged) {
    if (r.arrival_s == static_cast<double>(r.prompt_tokens - 100)) ++at_original_times;
  }
  EXPECT_LT(at_original_times, 1000);
}

TEST(ReplayTraceTest, MultiplierKeepsTheRateShape) {
  // A trace whose second half is three times as busy as its first: x4 keeps the ratio.
  std::vector<TraceRequest> base;
  for (int i = 0; i < 600; ++i) base.push_back({i * 1.0, 100, 10});
  for (int i = 0; i < 1800; ++i) base.push_back({600 + i / 3.0, 100, 10});
  MultiplierOptions o;
  o.multiplier = 4;
  o.span_s = 1200;
  auto merged = ApplyRateMultiplier(base, o);
  ASSERT_TRUE(merged.ok());
  int first = 0, second = 0;
  for (const TraceRequest& r : *merged) {
    // Away from the edges the shifts (< 60 s) blur.
    if (r.arrival_s >= 100 && r.arrival_s < 500) ++first;
    if (r.arrival_s >= 700 && r.arrival_s < 1100) ++second;
  }
  EXPECT_NEAR(first, 4 * 400, 4);
  EXPECT_NEAR(second, 4 * 1200, 12);
}

TEST(ReplayTraceTest, FractionalMultiplierThinsOneCopyDeterministically) {
  const std::vector<TraceRequest> base = Uniform(2000, 0.5);
  MultiplierOptions o;
  o.multiplier = 1.25;
  o.seed = 3;
  auto a = ApplyRateMultiplier(base, o);
  auto b = ApplyRateMultiplier(base, o);
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE(b.ok());
  ASSERT_EQ(a->size(), b->size());  // same seed, same trace
  EXPECT_GT(a->size(), 2000u + 400u);
  EXPECT_LT(a->size(), 2000u + 600u);
  o.multiplier = 0.5;
  auto half = ApplyRateMultiplier(base, o);
  ASSERT_TRUE(half.ok());
  EXPECT_GT(half->size(), 800u);
  EXPECT_LT(half->size(), 1200u);
}

TEST(ReplayTraceTest, RejectsNonPositiveMultiplier) {
  MultiplierOptions o;
  o.multiplier = 0;
  auto r = ApplyRateMultiplier(Uniform(10, 1), o);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("--rate-multiplier"), std::string::npos);
}

TEST(ReplayTraceTest, StatsFindTheBusiestMinute) {
  std::vector<TraceRequest> t;
  for (int i = 0; i < 300; ++i) t.push_back({i * 1.0, 1000, 100});      // 1 req/s
  for (int i = 0; i < 300; ++i) t.push_back({120 + i * 0.2, 50, 400});  // +5 req/s in 120-180
  std::sort(t.begin(), t.end(),
            [](const TraceRequest& a, const TraceRequest& b) { return a.arrival_s < b.arrival_s; });
  const TraceStats s = ComputeTraceStats(t);
  EXPECT_EQ(s.requests, 600);
  EXPECT_NEAR(s.busiest_by_requests.start_s, 120, 1.0);
  EXPECT_NEAR(s.busiest_by_requests.requests_per_s, 6.0, 0.05);
  EXPECT_NEAR(s.busiest_by_output_tokens.output_tokens_per_s, (60 * 100 + 300 * 400) / 60.0, 100);
  EXPECT_NEAR(s.busiest_by_prompt_tokens.prompt_tokens_per_s, (60 * 1000 + 300 * 50) / 60.0, 100);
}

}  // namespace
}  // namespace pdpool::bench::replay
