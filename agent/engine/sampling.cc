// Token sampling: greedy, temperature and nucleus (top-p), with a counter-based random draw.
#include "agent/engine/sampling.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace pdpool::agent {

uint64_t SplitMix64(uint64_t x) {
  uint64_t z = x + 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

double SampleUniform(uint64_t seed, int32_t sample_index) {
  const uint64_t index = static_cast<uint64_t>(static_cast<uint32_t>(sample_index));
  const uint64_t h = SplitMix64(seed ^ (index * 0x9E3779B97F4A7C15ull));
  return static_cast<double>(h >> 11) * (1.0 / 9007199254740992.0);  // 2^-53
}

int32_t SampleToken(std::span<const float> logits, const SamplingParams& p, int32_t sample_index) {
  if (logits.empty()) return -1;
  int32_t best = -1;
  for (size_t i = 0; i < logits.size(); ++i) {
    if (std::isnan(logits[i])) continue;
    if (best < 0 || logits[i] > logits[static_cast<size_t>(best)]) best = static_cast<int32_t>(i);
  }
  if (best < 0) return 0;  // all NaN: nothing to prefer
  const double max = logits[static_cast<size_t>(best)];
  // Greedy, and the degenerate cases where a softmax is undefined or one-hot anyway.
  if (!(p.temperature >= 1e-6) || std::isinf(max)) return best;

  std::vector<double> prob(logits.size());
  double total = 0.0;
  for (size_t i = 0; i < logits.size(); ++i) {
    const double l = logits[i];
    prob[i] = std::isnan(l) ? 0.0 : std::exp((l - max) / p.temperature);
    total += prob[i];
  }
  const double u = SampleUniform(p.seed, sample_index);

  if (p.top_p >= 1.0) {
    const double target = u * total;
    double cum = 0.0;
    int32_t last = best;
    for (size_t i = 0; i < prob.size(); ++i) {
      if (prob[i] <= 0.0) continue;
      cum += prob[i];
      last = static_cast<int32_t>(i);
      if (cum > target) return last;
    }
    return last;  // rounding left target at the very top
  }

  std::vector<int32_t> order;
  order.reserve(prob.size());
  for (size_t i = 0; i < prob.size(); ++i) {
    if (prob[i] > 0.0) order.push_back(static_cast<int32_t>(i));
  }
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    const double pa = prob[static_cast<size_t>(a)], pb = prob[static_cast<size_t>(b)];
    return pa != pb ? pa > pb : a < b;
  });
  const double need = p.top_p * total;
  double kept = 0.0;
  size_t n = 0;
  while (n < order.size()) {
    kept += prob[static_cast<size_t>(order[n])];
    ++n;
    if (kept >= need) break;
  }
  const double target = u * kept;
  double cum = 0.0;
  for (size_t k = 0; k < n; ++k) {
    cum += prob[static_cast<size_t>(order[k])];
    if (cum > target) return order[k];
  }
  return order[n - 1];
}

}  // namespace pdpool::agent
