// Tests for HistogramQuantile against PromQL histogram_quantile() semantics: interpolation in
// the bucket holding the rank, the +Inf bucket, the lowest bucket, and the NaN/Inf cases.
#include "controller/planner/histogram_quantile.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

namespace pdpool::controller::planner {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

TEST(HistogramQuantileTest, InterpolatesInsideTheBucketHoldingTheRank) {
  // 2 observations <= 0.1, 8 in (0.1, 0.2]: rank 9 is the 7th of 8 in (0.1, 0.2].
  const std::vector<HistogramBucket> b = {{0.05, 0}, {0.1, 2}, {0.2, 10}, {kInf, 10}};
  EXPECT_DOUBLE_EQ(HistogramQuantile(0.9, b), 0.1 + 0.1 * 7.0 / 8.0);
  EXPECT_DOUBLE_EQ(HistogramQuantile(0.5, b), 0.1 + 0.1 * 3.0 / 8.0);
  // Rank 1 is the first of the 2 observations in (0.05, 0.1] (the empty lowest bucket skipped).
  EXPECT_DOUBLE_EQ(HistogramQuantile(0.1, b), 0.05 + 0.05 * 1.0 / 2.0);
  EXPECT_DOUBLE_EQ(HistogramQuantile(1, b), 0.2);
  // Rank 0 lands in the lowest bucket; empty, it interpolates 0/0 as Prometheus does.
  EXPECT_TRUE(std::isnan(HistogramQuantile(0, b)));
  EXPECT_DOUBLE_EQ(HistogramQuantile(0, {{0.05, 1}, {kInf, 1}}), 0);
}

TEST(HistogramQuantileTest, FirstBucketStartsAtZero) {
  EXPECT_DOUBLE_EQ(HistogramQuantile(0.5, {{1, 4}, {kInf, 4}}), 0.5);
}

TEST(HistogramQuantileTest, RankInTheInfBucketGivesTheHighestFiniteBound) {
  const std::vector<HistogramBucket> b = {{0.1, 1}, {0.2, 2}, {kInf, 10}};
  EXPECT_EQ(HistogramQuantile(0.9, b), 0.2);
  EXPECT_EQ(HistogramQuantile(0.5, b), 0.2);
}

TEST(HistogramQuantileTest, NonPositiveLowestBoundIsReturnedAsIs) {
  EXPECT_EQ(HistogramQuantile(0.5, {{-1, 5}, {0, 6}, {kInf, 6}}), -1);
  EXPECT_EQ(HistogramQuantile(0.5, {{0, 5}, {1, 6}, {kInf, 6}}), 0);
}

TEST(HistogramQuantileTest, NaNAndInfCases) {
  const std::vector<HistogramBucket> b = {{0.1, 1}, {kInf, 2}};
  EXPECT_TRUE(std::isnan(HistogramQuantile(0.9, {})));                     // no buckets
  EXPECT_TRUE(std::isnan(HistogramQuantile(0.9, {{0.1, 1}, {0.2, 2}})));   // no +Inf bucket
  EXPECT_TRUE(std::isnan(HistogramQuantile(0.9, {{kInf, 3}})));            // only +Inf
  EXPECT_TRUE(std::isnan(HistogramQuantile(0.9, {{0.1, 0}, {kInf, 0}})));  // no observations
  EXPECT_TRUE(std::isnan(HistogramQuantile(std::nan(""), b)));
  EXPECT_EQ(HistogramQuantile(-0.1, b), -kInf);
  EXPECT_EQ(HistogramQuantile(1.1, b), kInf);
}

TEST(HistogramQuantileTest, SortsMergesEqualBoundsAndForcesMonotonicCounts) {
  // Unsorted, the bound 0.1 twice (two exporters writing it differently), +Inf first.
  const std::vector<HistogramBucket> b = {{kInf, 10}, {0.2, 10}, {0.1, 1}, {0.1, 1}};
  EXPECT_DOUBLE_EQ(HistogramQuantile(0.9, b), 0.1 + 0.1 * 7.0 / 8.0);
  // A bucket lower than the one below it is raised to it (rates with float noise, or a scrape
  // racing observations).
  const std::vector<HistogramBucket> dip = {{0.1, 5}, {0.2, 4}, {0.3, 10}, {kInf, 10}};
  EXPECT_DOUBLE_EQ(HistogramQuantile(0.6, dip), 0.2 + 0.1 * 1.0 / 5.0);
}

TEST(HistogramQuantileTest, RatesGiveTheSameQuantileAsCounts) {
  const std::vector<HistogramBucket> counts = {{0.5, 30}, {1, 80}, {2, 95}, {kInf, 100}};
  std::vector<HistogramBucket> rates = counts;
  for (auto& r : rates) r.count /= 15.0;
  for (double q : {0.5, 0.9, 0.95, 0.99}) {
    EXPECT_NEAR(HistogramQuantile(q, counts), HistogramQuantile(q, rates), 1e-12) << q;
  }
}

}  // namespace
}  // namespace pdpool::controller::planner
