// The files and the view of a live replay (bench/live_replay/report.h, live_view.h, format.h):
// the CSV columns `make demo` plots, the summary's numbers and lines, and what the live view
// flags against the SLO.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "bench/live_replay/format.h"
#include "bench/live_replay/live_view.h"
#include "bench/live_replay/report.h"

namespace pdpool::bench::live_replay {
namespace {

RequestRecord Ok(double arrival, double ttft, double tpot, int tokens) {
  RequestRecord r;
  r.outcome.arrival_s = arrival;
  r.outcome.prompt_tokens = 100;
  r.outcome.output_tokens = tokens;
  r.outcome.completed = true;
  r.outcome.ttft_s = ttft;
  r.outcome.tpot_s = tpot;
  r.e2e_s = ttft + tpot * (tokens - 1);
  return r;
}

RequestRecord Failed(double arrival, const std::string& why) {
  RequestRecord r;
  r.outcome.arrival_s = arrival;
  r.outcome.prompt_tokens = 7;
  r.status = why;
  return r;
}

RunDescription Description() {
  RunDescription d;
  d.router = "http://127.0.0.1:8080";
  d.model = "test-tiny";
  d.trace_path = "conv.csv";
  d.schedule_options.window_end_s = 200;
  d.schedule_options.rate_multiplier = 0.3;
  d.schedule_options.time_compression = 10;
  d.schedule_options.max_output_tokens = 64;
  d.scheduled = 4;
  d.window_requests = 12;
  d.output_capped = 2;
  d.window_s = 200;
  d.slo = {2.0, 0.2};
  d.percentile = 75;
  return d;
}

TEST(LiveReplayReportTest, TimeseriesLineHasEveryColumnAndEmptyCellsForUnknowns) {
  const std::string header = TimeseriesHeader();
  EXPECT_EQ(header,
            "wall_s,trace_s,offered_rps,completed_rps,errors,inflight,ttft_p90_s,tpot_p90_s,"
            "prefill_ready,prefill_desired,decode_ready,decode_desired,gpus\n");
  TimeseriesRow row;
  row.stats.second = 3;
  row.stats.offered = 5;
  row.stats.completed = 4;
  row.stats.errors = 1;
  row.stats.inflight = 2;
  row.trace_s = 30;
  EXPECT_EQ(TimeseriesLine(row), "3,30.0,5,4,1,2,,,,,,,\n");
  row.stats.ttft_p90_s = 0.25;
  row.stats.tpot_p90_s = 0.0125;
  row.pool = PoolSample{1, 2, 3, 4, 5};
  EXPECT_EQ(TimeseriesLine(row), "3,30.0,5,4,1,2,0.250000,0.012500,1,2,3,4,5\n");
}

TEST(LiveReplayReportTest, RequestsCsvQuotesReasonsAndMarksSlo) {
  const std::string csv = RequestsCsv(
      {Ok(0.5, 0.1, 0.01, 10), Ok(1, 3.0, 0.01, 10), Failed(2, "HTTP 400: bad \"x\", y")},
      {2.0, 0.2});
  EXPECT_EQ(csv,
            "arrival_s,prompt_tokens,output_tokens,status,ttft_s,tpot_s,e2e_s,met_slo\n"
            "0.500,100,10,ok,0.100000,0.010000,0.190000,1\n"
            "1.000,100,10,ok,3.000000,0.010000,3.090000,0\n"
            "2.000,7,0,\"HTTP 400: bad \"\"x\"\", y\",,,,0\n");
}

TEST(LiveReplayReportTest, NumbersFromSummarizeAndTheGpuSamples) {
  const RunDescription d = Description();
  RunFacts f;
  f.wall_s = 10;
  f.gpus_sampled = true;
  f.gpu_seconds = 20;  // 2 GPUs for 10 s
  f.peak_gpus = 3;
  const std::vector<RequestRecord> records = {Ok(0, 0.1, 0.01, 10), Ok(1, 0.2, 0.02, 30),
                                              Ok(2, 5.0, 0.01, 50), Failed(3, "HTTP 503")};
  const RunNumbers n = ComputeNumbers(records, d, f);
  EXPECT_EQ(n.summary.requests, 4);
  EXPECT_EQ(n.summary.completed, 3);
  EXPECT_EQ(n.summary.failed, 1);
  EXPECT_DOUBLE_EQ(n.summary.attainment, 0.5);
  EXPECT_DOUBLE_EQ(n.summary.goodput_per_gpu, 40.0 / 20);  // good tokens 10 + 30
  EXPECT_DOUBLE_EQ(n.summary.mean_gpus, 2);
  EXPECT_DOUBLE_EQ(n.output_tokens_per_s, 9);     // 90 tokens in 10 s
  EXPECT_FALSE(n.slo_met);                        // 50 % < 75 %
  EXPECT_DOUBLE_EQ(n.ttft_at_percentile_s, 5.0);  // p75 of 0.1, 0.2, 5, inf (never a token)
  EXPECT_DOUBLE_EQ(n.tpot_at_percentile_s, 0.02);

  const RunNumbers all_good =
      ComputeNumbers({records[0], records[1], records[2], records[0]}, d, f);
  EXPECT_TRUE(all_good.slo_met);  // 3 of 4 = 75 %
}

TEST(LiveReplayReportTest, SummarySaysWhatRanAndHowItEnded) {
  const RunDescription d = Description();
  RunFacts f;
  f.wall_s = 20;
  f.stop_reason = StopReason::kSignal;
  f.cut_off = 1;
  f.overloaded = 1;
  const std::vector<RequestRecord> records = {Ok(0, 0.1, 0.01, 10), Failed(1, "client overloaded"),
                                              Failed(2, "interrupted")};
  const RunNumbers n = ComputeNumbers(records, d, f);
  const std::string md = SummaryMarkdown(d, f, n);
  EXPECT_NE(md.find("**interrupted** (signal)"), std::string::npos) << md;
  EXPECT_NE(md.find("1 scheduled requests never sent"), std::string::npos) << md;
  EXPECT_NE(md.find("1 cut off in flight"), std::string::npos) << md;
  EXPECT_NE(md.find("rate multiplier 0.3"), std::string::npos) << md;
  EXPECT_NE(md.find("time compression 10×"), std::string::npos) << md;
  EXPECT_NE(md.find("output ≤ 64 tokens (2 requests capped)"), std::string::npos) << md;
  EXPECT_NE(md.find("| requests | 3 (1 refused: client overloaded) |"), std::string::npos) << md;
  EXPECT_NE(md.find("| failed | 2 |"), std::string::npos) << md;
  EXPECT_NE(md.find("| GPU-hours | n/a |"), std::string::npos) << md;
  EXPECT_NE(md.find("**missed**"), std::string::npos) << md;

  const Json j = SummaryJson(d, f, n);
  EXPECT_EQ(j["run"]["interrupted"], true);
  EXPECT_EQ(j["run"]["stop_reason"], "signal");
  EXPECT_EQ(j["run"]["not_sent"], 1);
  EXPECT_TRUE(j["results"]["ttft_p99_s"].is_null());  // infinite: never a first token
  EXPECT_TRUE(j["gpus"].is_null());
  EXPECT_EQ(j["trace"]["output_capped"], 2);
}

TEST(LiveReplayViewTest, FlagsP90OverTheSloAndShowsProgress) {
  LiveViewState s;
  s.elapsed_s = 65;
  s.total_wall_s = 125;
  s.trace_s = 650;
  s.last_second.offered = 12;
  s.last_second.completed = 11;
  s.last_second.ttft_p90_s = 0.6;   // over 450 ms
  s.last_second.tpot_p90_s = 0.02;  // within 40 ms
  s.totals.offered = 50;
  s.totals.inflight = 4;
  s.totals.errors = 2;
  s.total_requests = 200;
  s.pool_sampled = true;
  s.pool = PoolSample{1, 2, 3, 3, 4};
  s.phase = "replaying";
  const std::vector<std::string> lines = RenderLiveView(s, {0.45, 0.04});
  std::string all;
  for (const std::string& l : lines) all += l + "\n";
  EXPECT_NE(all.find("wall 01:05 / 02:05"), std::string::npos) << all;
  EXPECT_NE(all.find("offered 12  completed 11"), std::string::npos) << all;
  EXPECT_NE(all.find("in flight 4"), std::string::npos) << all;
  EXPECT_NE(all.find("errors 2"), std::string::npos) << all;
  EXPECT_NE(all.find("P 1/2  D 3/3  GPUs 4"), std::string::npos) << all;
  EXPECT_NE(all.find("TTFT p90 600 ms (SLO 450 ms, OVER)"), std::string::npos) << all;
  EXPECT_NE(all.find("TPOT p90 20.0 ms (SLO 40.0 ms, ok)"), std::string::npos) << all;
  EXPECT_NE(all.find("[##########..............................] 50/200 sent (25 %)"),
            std::string::npos)
      << all;

  const std::string line = RenderStatusLine(s, {0.45, 0.04});
  EXPECT_EQ(line.find('\n'), std::string::npos);
  EXPECT_NE(line.find("sent 50/200"), std::string::npos) << line;
  EXPECT_NE(line.find("OVER"), std::string::npos) << line;
}

TEST(LiveReplayViewTest, FormatsDurationsForPeople) {
  EXPECT_EQ(FormatSeconds(0.00025), "250 us");
  EXPECT_EQ(FormatSeconds(0.0125), "12.5 ms");
  EXPECT_EQ(FormatSeconds(0.45), "450 ms");
  EXPECT_EQ(FormatSeconds(2), "2.00 s");
  EXPECT_EQ(FormatSeconds(std::numeric_limits<double>::infinity()), "inf");
  EXPECT_EQ(FormatSeconds(-1), "-");
  EXPECT_EQ(FormatClock(3725), "1:02:05");
  EXPECT_EQ(FormatClock(59.9), "00:59");
}

}  // namespace
}  // namespace pdpool::bench::live_replay
