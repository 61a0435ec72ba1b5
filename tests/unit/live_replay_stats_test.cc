// The live replay's per-second numbers (bench/live_replay/live_stats.h): the rows of
// timeseries.csv and the live view — rates per wall second, requests in flight, and TTFT/TPOT
// p90 over the requests completed in the last 10 s.
#include <gtest/gtest.h>

#include "bench/live_replay/live_stats.h"

namespace pdpool::bench::live_replay {
namespace {

TEST(LiveReplayStatsTest, CountsLandInTheSecondTheyHappenedIn) {
  LiveStats stats;
  stats.RecordOffered(0.2);
  stats.RecordOffered(0.9);
  stats.RecordOffered(1.1);
  stats.RecordCompleted(1.5, 0.1, 0.01);
  stats.RecordFailed(2.0);  // the start of second 2 belongs to second 2

  const SecondStats s0 = stats.TakeSecond(0);
  EXPECT_EQ(s0.second, 0);
  EXPECT_EQ(s0.offered, 2);
  EXPECT_EQ(s0.completed, 0);
  const SecondStats s1 = stats.TakeSecond(1);
  EXPECT_EQ(s1.offered, 1);
  EXPECT_EQ(s1.completed, 1);
  EXPECT_EQ(s1.errors, 0);
  const SecondStats s2 = stats.TakeSecond(2);
  EXPECT_EQ(s2.errors, 1);
  EXPECT_EQ(s2.offered, 0);
  EXPECT_EQ(s2.inflight, 1);  // 3 offered, 1 completed, 1 failed

  const LiveTotals t = stats.Totals();
  EXPECT_EQ(t.offered, 3);
  EXPECT_EQ(t.completed, 1);
  EXPECT_EQ(t.errors, 1);
  EXPECT_EQ(t.inflight, 1);
}

TEST(LiveReplayStatsTest, P90IsOverTheCompletionsOfTheLastTenSeconds) {
  LiveStats stats(10);
  // Second 0: one slow request, out of the window of second 10's row ([1, 11)).
  stats.RecordCompleted(0.5, 9.0, 9.0);
  // Seconds 1..10: TTFT 0.1 .. 1.0 s, TPOT 10 .. 100 ms.
  for (int i = 1; i <= 10; ++i) stats.RecordCompleted(i + 0.5, 0.1 * i, 0.01 * i);
  // Failed requests do not count in the percentiles.
  stats.RecordFailed(10.2);

  const SecondStats row = stats.TakeSecond(10);
  ASSERT_TRUE(row.ttft_p90_s && row.tpot_p90_s);
  EXPECT_DOUBLE_EQ(*row.ttft_p90_s, 0.9);  // nearest rank: the 9th of 10
  EXPECT_DOUBLE_EQ(*row.tpot_p90_s, 0.09);
  EXPECT_EQ(row.completed, 1);
  EXPECT_EQ(row.errors, 1);
}

TEST(LiveReplayStatsTest, EarlierRowSeesEarlierCompletionsOnly) {
  LiveStats stats(10);
  stats.RecordCompleted(0.5, 2.0, 0.2);
  stats.RecordCompleted(3.5, 0.5, 0.05);
  const SecondStats row0 = stats.TakeSecond(0);
  ASSERT_TRUE(row0.ttft_p90_s);
  EXPECT_DOUBLE_EQ(*row0.ttft_p90_s, 2.0);  // the 3.5 s completion is in the future of row 0
  const SecondStats row3 = stats.TakeSecond(3);
  EXPECT_DOUBLE_EQ(*row3.ttft_p90_s, 2.0);  // both, nearest rank p90 of 2 is the larger
}

TEST(LiveReplayStatsTest, NoCompletionInTheWindowLeavesP90Empty) {
  LiveStats stats(10);
  stats.RecordCompleted(0.5, 0.1, 0.01);
  stats.RecordOffered(12.0);
  const SecondStats row = stats.TakeSecond(12);  // window [3, 13)
  EXPECT_FALSE(row.ttft_p90_s);
  EXPECT_FALSE(row.tpot_p90_s);
  EXPECT_EQ(row.offered, 1);
}

}  // namespace
}  // namespace pdpool::bench::live_replay
