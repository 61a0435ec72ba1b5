// Test cases for the sampling kernel, shared by the GPU tests (tests/gpu) and the emulated
// kernel tests (tests/cuda_emulation): greedy rows with ties and NaN, the exact nucleus
// (top-p) distribution that draws must follow, and a row whose draw can land among weights too
// small to move a float sum past 1.0. Host code only; plain functions.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <numeric>
#include <random>
#include <vector>

#include "agent/engine/cuda/kernels.h"
#include "agent/engine/sampling.h"

namespace pdpool::testing {

// `rows` rows of `vocab` normal logits; row 1 has a tie (the lowest id must win), row 2 a NaN
// next to the maximum, row 3 is all NaN (token 0).
inline std::vector<float> GreedyRows(std::mt19937_64& rng, int vocab, int rows) {
  std::normal_distribution<float> n(0.0f, 3.0f);
  std::vector<float> logits(static_cast<size_t>(vocab) * rows);
  for (auto& x : logits) x = n(rng);
  float* r1 = logits.data() + vocab;
  r1[500 % vocab] = r1[(vocab * 2) / 3] = 1e4f;
  float* r2 = logits.data() + 2 * vocab;
  r2[7] = NAN;
  r2[8] = 1e4f;
  float* r3 = logits.data() + 3 * vocab;
  std::fill(r3, r3 + vocab, NAN);
  return logits;
}

// The CPU's greedy token of each row.
inline std::vector<int32_t> CpuGreedy(const std::vector<float>& logits, int vocab) {
  std::vector<int32_t> tokens;
  for (size_t at = 0; at < logits.size(); at += static_cast<size_t>(vocab)) {
    const std::vector<float> row(logits.begin() + static_cast<int64_t>(at),
                                 logits.begin() + static_cast<int64_t>(at) + vocab);
    tokens.push_back(agent::SampleToken(row, agent::SamplingParams{0.0, 1.0, 0}, 0));
  }
  return tokens;
}

// The exact distribution of nucleus sampling: descending probability, ties by id, until top_p
// of the mass; 0 outside the nucleus.
inline std::vector<double> NucleusDistribution(const std::vector<float>& row, double temperature,
                                               double top_p) {
  const size_t vocab = row.size();
  std::vector<double> p(vocab);
  const double max = *std::max_element(row.begin(), row.end());
  double total = 0;
  for (size_t i = 0; i < vocab; ++i) total += p[i] = std::exp((row[i] - max) / temperature);
  std::vector<size_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return p[a] > p[b]; });
  std::vector<double> nucleus(vocab, 0.0);
  double kept_mass = 0;
  for (size_t id : order) {
    nucleus[id] = p[id];
    kept_mass += p[id];
    if (kept_mass >= top_p * total) break;
  }
  for (double& x : nucleus) x /= kept_mass;
  return nucleus;
}

// Every draw inside the nucleus; and the draws' frequencies follow the distribution: ids are
// taken in order in groups expecting at least 50 draws each (a single token when it expects
// that many), and each group's count must lie within 5 standard deviations of its expectation.
// Grouping keeps the bound sound where tokens expect less than one draw each.
inline void ExpectDrawsFollow(const std::vector<int32_t>& draws,
                              const std::vector<double>& distribution) {
  const int vocab = static_cast<int>(distribution.size());
  std::vector<int> counts(distribution.size(), 0);
  for (int32_t t : draws) {
    ASSERT_GE(t, 0);
    ASSERT_LT(t, vocab);
    ++counts[static_cast<size_t>(t)];
  }
  const double n = static_cast<double>(draws.size());
  double group_p = 0;
  int group_count = 0, group_first = 0;
  auto check_group = [&](int last) {
    const double sd = std::sqrt(n * group_p * std::max(0.0, 1 - group_p));
    EXPECT_NEAR(group_count, n * group_p, 5 * sd + 1)
        << "tokens " << group_first << " to " << last;
    group_p = 0;
    group_count = 0;
    group_first = last + 1;
  };
  for (int i = 0; i < vocab; ++i) {
    const double p = distribution[static_cast<size_t>(i)];
    const int count = counts[static_cast<size_t>(i)];
    if (p == 0.0) {
      EXPECT_EQ(count, 0) << "token " << i << " is outside the nucleus";
      continue;
    }
    group_p += p;
    group_count += count;
    if (n * group_p >= 50) check_group(i);
  }
  if (group_p > 0) check_group(vocab - 1);
}

// A row of 128256 logits: token 0 has weight 1; ids 126..251 hold 126 weights of 0.45 · 2⁻²³,
// which vanish when added to 1.0 in float; the last id has the same tiny weight. A draw that
// lands in that range must return an id of that range (a walk that sums in float stalls there). AbsorbedRangeDraws finds, with the host's SampleUniform, up to `wanted` sample
// indexes whose draw lands well inside it.
struct AbsorbedRangeCase {
  static constexpr int kVocab = 128256;
  static constexpr int kFirst = 126, kEnd = 252;  // the range [kFirst, kEnd)
  std::vector<float> row;
  std::vector<int32_t> sample_indexes;
};

inline AbsorbedRangeCase AbsorbedRangeDraws(uint64_t seed, size_t wanted) {
  AbsorbedRangeCase c;
  const float tiny = std::log(0.45f * std::ldexp(1.0f, -23));
  c.row.assign(AbsorbedRangeCase::kVocab, -INFINITY);
  c.row[0] = 0.0f;
  for (int i = AbsorbedRangeCase::kFirst; i < AbsorbedRangeCase::kEnd; ++i) {
    c.row[static_cast<size_t>(i)] = tiny;
  }
  c.row.back() = tiny;
  const double w = std::exp(static_cast<double>(tiny));
  const double begin = 1.0, end = 1.0 + 126 * w, total = end + w;
  for (int32_t index = 0; index < 20'000'000 && c.sample_indexes.size() < wanted; ++index) {
    const double target = agent::SampleUniform(seed, index) * total;
    if (target > begin + 8 * w && target < end - 8 * w) {  // away from float rounding at the ends
      c.sample_indexes.push_back(index);
    }
  }
  return c;
}

// Rows of logits and their sampler parameters, one row per draw.
struct SampleBatch {
  std::vector<float> logits;
  std::vector<agent::cuda::SampleRowParams> params;
};

// `draws` copies of `row`, sample indexes 0 … draws − 1.
inline SampleBatch RepeatRow(const std::vector<float>& row, uint64_t seed, int draws,
                             double temperature, double top_p) {
  SampleBatch b;
  for (int i = 0; i < draws; ++i) {
    b.logits.insert(b.logits.end(), row.begin(), row.end());
    b.params.push_back(agent::cuda::SampleRowParams{static_cast<float>(temperature),
                                                    static_cast<float>(top_p), seed, i, 0});
  }
  return b;
}

// A row of `vocab` normal logits (sd 1.5).
inline std::vector<float> NormalRow(std::mt19937_64& rng, int vocab) {
  std::normal_distribution<float> n(0.0f, 1.5f);
  std::vector<float> row(static_cast<size_t>(vocab));
  for (auto& x : row) x = n(rng);
  return row;
}

// A row of `vocab` equal logits: every weight ties at the threshold.
inline std::vector<float> FlatRow(int vocab) { return std::vector<float>(static_cast<size_t>(vocab), 0.5f); }

// A row whose nucleus ends inside a group of equal weights spread over the whole row: 5 ids at
// logit 3, 300 at logit 1 (every 13th id from 7), the rest at −5. With temperature 1 and
// top_p 0.5 the nucleus is the 5 and the lowest 137 ids of the 300, so a draw among the other
// 163 means ties were not taken in id order.
inline std::vector<float> TiedThresholdRow(int vocab) {
  std::vector<float> row(static_cast<size_t>(vocab), -5.0f);
  for (int k = 0; k < 300; ++k) row[static_cast<size_t>((7 + 13 * k) % vocab)] = 1.0f;
  for (int k = 0; k < 5; ++k) row[static_cast<size_t>((vocab / 5) * k + 3)] = 3.0f;
  return row;
}

// Samples every row of a batch: the GPU kernel, or its body under the warp emulator.
using RowSampler = std::function<std::vector<int32_t>(
    const std::vector<float>& logits, int vocab,
    const std::vector<agent::cuda::SampleRowParams>& params)>;

// Draws `draws` tokens from `row` (one row per sample index) and checks them against the exact
// nucleus distribution (ExpectDrawsFollow), for the float temperature and top_p the kernel
// sees. `nucleus_size`, when positive, is what the case promises the nucleus holds. With
// `twice`, the draws are repeated and must come out the same.
inline void ExpectNucleusDraws(const RowSampler& sample, const std::vector<float>& row,
                               uint64_t seed, int draws, double temperature, double top_p,
                               int nucleus_size, bool twice) {
  const std::vector<double> nucleus = NucleusDistribution(
      row, static_cast<float>(temperature), static_cast<float>(top_p));
  if (nucleus_size > 0) {
    ASSERT_EQ(std::count_if(nucleus.begin(), nucleus.end(), [](double p) { return p > 0; }),
              nucleus_size);
  }
  const int vocab = static_cast<int>(row.size());
  const SampleBatch b = RepeatRow(row, seed, draws, temperature, top_p);
  const std::vector<int32_t> first = sample(b.logits, vocab, b.params);
  if (twice) {
    EXPECT_EQ(first, sample(b.logits, vocab, b.params)) << "sampling is not deterministic";
  }
  ExpectDrawsFollow(first, nucleus);
}

// One row of the absorbed-range case per draw found (temperature 1, top_p 1).
inline SampleBatch AbsorbedRangeBatch(const AbsorbedRangeCase& c, uint64_t seed) {
  SampleBatch b;
  for (int32_t index : c.sample_indexes) {
    b.logits.insert(b.logits.end(), c.row.begin(), c.row.end());
    b.params.push_back(agent::cuda::SampleRowParams{1.0f, 1.0f, seed, index, 0});
  }
  return b;
}

inline void ExpectAllInAbsorbedRange(const std::vector<int32_t>& tokens) {
  for (int32_t token : tokens) {
    EXPECT_GE(token, AbsorbedRangeCase::kFirst);
    EXPECT_LT(token, AbsorbedRangeCase::kEnd);
  }
}

}  // namespace pdpool::testing
