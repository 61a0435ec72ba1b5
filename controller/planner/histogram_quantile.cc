// HistogramQuantile: see histogram_quantile.h. Mirrors bucketQuantile() of Prometheus'
// promql/quantile.go step by step, so a percentile computed here from scraped buckets equals
// the one the Prometheus source would read for the same counts.
#include "controller/planner/histogram_quantile.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace pdpool::controller::planner {

double HistogramQuantile(double q, std::vector<HistogramBucket> buckets) {
  constexpr double kInf = std::numeric_limits<double>::infinity();
  constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
  if (std::isnan(q)) return kNaN;
  if (q < 0) return -kInf;
  if (q > 1) return kInf;
  if (buckets.empty()) return kNaN;
  std::stable_sort(buckets.begin(), buckets.end(),
                   [](const HistogramBucket& a, const HistogramBucket& b) {
                     return a.upper_bound < b.upper_bound;
                   });
  if (!std::isinf(buckets.back().upper_bound) || buckets.back().upper_bound < 0) return kNaN;

  // Buckets with the same bound (e.g. "1" and "1.0" from two exporters) count together.
  std::vector<HistogramBucket> merged;
  merged.reserve(buckets.size());
  for (const HistogramBucket& b : buckets) {
    if (!merged.empty() && merged.back().upper_bound == b.upper_bound) {
      merged.back().count += b.count;
    } else {
      merged.push_back(b);
    }
  }
  // Float noise from rates can make neighbours differ by an ulp in the wrong direction.
  double prev = merged.front().count;
  for (size_t i = 1; i < merged.size(); ++i) {
    const double cur = merged[i].count;
    const double delta = std::fabs(cur - prev);
    if (delta == 0) continue;
    if (delta / cur <= 1e-12) {
      merged[i].count = prev;
    } else {
      prev = cur;
    }
  }
  // The envelope: a bucket never holds fewer observations than a lower one.
  double max = merged.front().count;
  for (size_t i = 1; i < merged.size(); ++i) {
    if (merged[i].count > max) {
      max = merged[i].count;
    } else {
      merged[i].count = max;
    }
  }

  if (merged.size() < 2) return kNaN;
  const double observations = merged.back().count;
  if (observations == 0) return kNaN;
  double rank = q * observations;
  // The first bucket (the +Inf one excluded) holding at least `rank` observations.
  size_t b = 0;
  while (b < merged.size() - 1 && !(merged[b].count >= rank)) ++b;
  if (b == merged.size() - 1) return merged[merged.size() - 2].upper_bound;
  if (b == 0 && merged[0].upper_bound <= 0) return merged[0].upper_bound;
  double bucket_start = 0;
  const double bucket_end = merged[b].upper_bound;
  double count = merged[b].count;
  if (b > 0) {
    bucket_start = merged[b - 1].upper_bound;
    count -= merged[b - 1].count;
    rank -= merged[b - 1].count;
  }
  return bucket_start + (bucket_end - bucket_start) * (rank / count);
}

}  // namespace pdpool::controller::planner
