// SLO attainment, latency percentiles, GPU-seconds and goodput accounting of the replay harness
// (bench/replay/outcome.h): the numbers pdpool-replay compares policies by.
#include <gtest/gtest.h>

#include <cmath>

#include "bench/replay/outcome.h"

namespace pdpool::bench::replay {
namespace {

RequestOutcome Done(double ttft, double tpot, int output) {
  RequestOutcome r;
  r.prompt_tokens = 100;
  r.output_tokens = output;
  r.completed = true;
  r.ttft_s = ttft;
  r.tpot_s = tpot;
  return r;
}

TEST(ReplayOutcomeTest, MeetsSloNeedsBothLimits) {
  const SloLimits slo{2.0, 0.2};
  EXPECT_TRUE(MeetsSlo(Done(2.0, 0.2, 10), slo));  // at the limit is within it
  EXPECT_FALSE(MeetsSlo(Done(2.01, 0.05, 10), slo));
  EXPECT_FALSE(MeetsSlo(Done(0.5, 0.21, 10), slo));
  RequestOutcome failed = Done(0.5, 0.1, 10);
  failed.completed = false;
  EXPECT_FALSE(MeetsSlo(failed, slo));
  EXPECT_TRUE(MeetsSlo(Done(1.0, 0.0, 1), slo));  // one-token output: no TPOT to miss
}

TEST(ReplayOutcomeTest, NearestRankPercentile) {
  std::vector<double> v;
  for (int i = 100; i >= 1; --i) v.push_back(i);
  EXPECT_DOUBLE_EQ(Percentile(&v, 99), 99);
  EXPECT_DOUBLE_EQ(Percentile(&v, 90), 90);
  EXPECT_DOUBLE_EQ(Percentile(&v, 100), 100);
  std::vector<double> one = {3.5};
  EXPECT_DOUBLE_EQ(Percentile(&one, 50), 3.5);
  std::vector<double> none;
  EXPECT_DOUBLE_EQ(Percentile(&none, 99), 0);
}

TEST(ReplayOutcomeTest, GpuSecondsIntegrateHeldGpusOverTime) {
  GpuAccounting g;
  g.Set(0, 8);
  g.Set(10, 12);  // 8 GPUs for 10 s
  g.Set(10, 16);  // two changes at one instant: the last counts from here
  g.Set(15, 4);   // 16 GPUs for 5 s
  EXPECT_DOUBLE_EQ(g.GpuSeconds(25), 8 * 10 + 16 * 5 + 4 * 10);
  EXPECT_EQ(g.peak(), 16);
  EXPECT_EQ(g.held(), 4);
}

TEST(ReplayOutcomeTest, SummaryCountsGoodTokensOfRequestsThatMetTheSlo) {
  std::vector<RequestOutcome> outcomes;
  outcomes.push_back(Done(0.5, 0.05, 100));  // met
  outcomes.push_back(Done(1.5, 0.10, 300));  // met
  outcomes.push_back(Done(3.0, 0.05, 200));  // TTFT missed
  outcomes.push_back(Done(0.5, 0.30, 400));  // TPOT missed
  RequestOutcome failed;
  failed.output_tokens = 50;
  outcomes.push_back(failed);  // never got a token
  const Summary s = Summarize(outcomes, SloLimits{2.0, 0.2}, /*gpu_seconds=*/1000, 100);
  EXPECT_EQ(s.requests, 5);
  EXPECT_EQ(s.completed, 4);
  EXPECT_EQ(s.failed, 1);
  EXPECT_EQ(s.met_slo, 2);
  EXPECT_DOUBLE_EQ(s.attainment, 0.4);
  EXPECT_EQ(s.output_tokens, 1000);
  EXPECT_EQ(s.good_output_tokens, 400);
  EXPECT_DOUBLE_EQ(s.goodput_per_gpu, 0.4);
  EXPECT_DOUBLE_EQ(s.throughput_per_gpu, 1.0);
  EXPECT_DOUBLE_EQ(s.mean_gpus, 10);
  EXPECT_DOUBLE_EQ(s.gpu_hours, 1000 / 3600.0);
  // The failed request counts as infinitely late in the TTFT percentiles.
  EXPECT_TRUE(std::isinf(s.ttft_p99_s));
  EXPECT_DOUBLE_EQ(s.tpot_p99_s, 0.30);
}

}  // namespace
}  // namespace pdpool::bench::replay
