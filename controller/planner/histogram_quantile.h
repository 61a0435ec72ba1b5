// HistogramQuantile: the φ-quantile of a classic Prometheus histogram from its cumulative bucket
// counts (or their rates), with the semantics of PromQL's histogram_quantile(): linear
// interpolation inside the bucket holding the rank, a lower bound of 0 for the first bucket
// when its upper bound is positive, the second-highest upper bound when the rank falls into the
// +Inf bucket, NaN without a +Inf bucket or without observations. ScrapeMetricsSource computes
// TTFT/TPOT percentiles with it from bucket deltas, as Prometheus would from rates.
// Pure function; thread-safe.
#pragma once

#include <vector>

namespace pdpool::controller::planner {

struct HistogramBucket {
  double upper_bound = 0;  // `le`; +Inf for the last bucket
  double count = 0;  // cumulative: observations <= upper_bound (a count, an increase or a rate)
};

// q in [0, 1]: q < 0 gives -Inf, q > 1 +Inf, NaN q NaN. Buckets in any order; buckets with the
// same bound are added together, counts are made monotonic (as Prometheus does).
double HistogramQuantile(double q, std::vector<HistogramBucket> buckets);

}  // namespace pdpool::controller::planner
