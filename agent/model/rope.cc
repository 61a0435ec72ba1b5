// RoPE frequencies: see rope.h.
#include "agent/model/rope.h"

#include <cmath>
#include <numbers>

namespace pdpool::agent {

std::vector<double> RopeInverseFrequencies(const ModelConfig& config) {
  const int half = config.head_dim / 2;
  std::vector<double> inv_freq(static_cast<size_t>(half));
  const RopeScaling& rs = config.rope_scaling;
  for (int i = 0; i < half; ++i) {
    double f = 1.0 / std::pow(config.rope_theta, (2.0 * i) / config.head_dim);
    if (rs.llama3) {
      const double orig = rs.original_max_position_embeddings;
      const double wavelen = 2.0 * std::numbers::pi / f;
      if (wavelen < orig / rs.high_freq_factor) {
        // high frequency: unchanged
      } else if (wavelen > orig / rs.low_freq_factor) {
        f = f / rs.factor;
      } else {
        const double smooth =
            (orig / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
        f = (1.0 - smooth) * f / rs.factor + smooth * f;
      }
    }
    inv_freq[static_cast<size_t>(i)] = f;
  }
  return inv_freq;
}

}  // namespace pdpool::agent
