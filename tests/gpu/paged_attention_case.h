// Test data for the attention kernels, shared by the GPU tests (tests/gpu) and the emulated
// kernel tests (tests/cuda_emulation): a random paged KV cache of one layer with sequences over
// random, distinct blocks, and the float64 causal attention of every new row as the reference.
// Host code only; plain functions.
#pragma once

#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "agent/engine/cuda/kernels.h"
#include "agent/engine/cuda/kv_cache_layout.h"

namespace pdpool::testing {

inline std::vector<float> ToFloat(const std::vector<__nv_bfloat16>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = __bfloat162float(v[i]);
  return out;
}

inline std::vector<__nv_bfloat16> RandomBf16(size_t n, std::mt19937_64& rng, float scale) {
  std::uniform_real_distribution<float> u(-scale, scale);
  std::vector<__nv_bfloat16> v(n);
  for (auto& x : v) x = __float2bfloat16(u(rng));
  return v;
}

// A random paged cache of one layer and sequences over random, distinct blocks.
struct PagedCase {
  agent::cuda::KvCacheGeometry g;
  int num_heads = 0;
  std::vector<__nv_bfloat16> cache;  // one layer's view (block stride of a 1-layer cache)
  std::vector<agent::cuda::SeqMeta> meta;
  std::vector<int32_t> tables;
  std::vector<__nv_bfloat16> q;  // [rows, num_heads · head_dim]
  int rows = 0;
};

inline PagedCase MakeCase(
    std::mt19937_64& rng, int head_dim, int kv_heads, int group,
    const std::vector<std::pair<int, int>>& seqs /* (context before, new) */) {
  PagedCase c;
  c.num_heads = kv_heads * group;
  int total_blocks = 0;
  for (auto [before, fresh] : seqs) total_blocks += (before + fresh + 15) / 16;
  c.g = agent::cuda::MakeKvCacheGeometry(1, kv_heads, head_dim, 16);
  const int num_blocks = total_blocks + 3;
  c.cache = RandomBf16(static_cast<size_t>(c.g.block_stride * num_blocks), rng, 1.0f);
  std::vector<int32_t> free_blocks(static_cast<size_t>(num_blocks));
  std::iota(free_blocks.begin(), free_blocks.end(), 0);
  std::shuffle(free_blocks.begin(), free_blocks.end(), rng);
  size_t next = 0;
  for (auto [before, fresh] : seqs) {
    const int context = before + fresh;
    c.meta.push_back(
        agent::cuda::SeqMeta{c.rows, fresh, context, static_cast<int32_t>(c.tables.size())});
    for (int b = 0; b < (context + 15) / 16; ++b) c.tables.push_back(free_blocks[next++]);
    c.rows += fresh;
  }
  c.q = RandomBf16(static_cast<size_t>(c.rows) * c.num_heads * head_dim, rng, 1.0f);
  return c;
}

// float64 causal attention of every new row of every sequence.
inline std::vector<float> Reference(const PagedCase& c) {
  const int hd = c.g.head_dim, group = c.num_heads / c.g.num_kv_heads;
  std::vector<float> out(static_cast<size_t>(c.rows) * c.num_heads * hd, 0.0f);
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  for (const agent::cuda::SeqMeta& m : c.meta) {
    for (int r = 0; r < m.num_new; ++r) {
      const int pos = m.context_len - m.num_new + r;
      for (int h = 0; h < c.num_heads; ++h) {
        const int kvh = h / group;
        const __nv_bfloat16* q = c.q.data() + (int64_t{m.q_start + r} * c.num_heads + h) * hd;
        std::vector<double> scores(static_cast<size_t>(pos + 1));
        double max = -INFINITY;
        for (int t = 0; t <= pos; ++t) {
          const int64_t slot =
              int64_t{c.tables[static_cast<size_t>(m.block_table_offset + t / 16)]} * 16 + t % 16;
          const __nv_bfloat16* k = c.cache.data() + c.g.Offset(0, kvh, slot);
          double s = 0;
          for (int d = 0; d < hd; ++d) s += double{__bfloat162float(q[d])} * __bfloat162float(k[d]);
          scores[static_cast<size_t>(t)] = s * scale;
          max = std::max(max, s * scale);
        }
        double sum = 0;
        std::vector<double> acc(static_cast<size_t>(hd), 0.0);
        for (int t = 0; t <= pos; ++t) {
          const double p = std::exp(scores[static_cast<size_t>(t)] - max);
          sum += p;
          const int64_t slot =
              int64_t{c.tables[static_cast<size_t>(m.block_table_offset + t / 16)]} * 16 + t % 16;
          const __nv_bfloat16* v = c.cache.data() + c.g.Offset(1, kvh, slot);
          for (int d = 0; d < hd; ++d) acc[static_cast<size_t>(d)] += p * __bfloat162float(v[d]);
        }
        float* o = out.data() + (int64_t{m.q_start + r} * c.num_heads + h) * hd;
        for (int d = 0; d < hd; ++d) o[d] = static_cast<float>(acc[static_cast<size_t>(d)] / sum);
      }
    }
  }
  return out;
}

// Where an attention output differs from its reference, for a failure message: how many
// elements are off by more than 5% of the reference's RMS (NaN included), the first of them, and
// which rows (mod 128, in blocks of 16) and which dimensions (in blocks of 8) they fall in. A
// layout error in a kernel (a swizzle, a descriptor, a tile edge) shows as a pattern there.
inline std::string DescribeMismatch(const std::vector<float>& out, const std::vector<float>& ref,
                                    int num_heads, int head_dim) {
  double sum_sq = 0;
  for (float r : ref) sum_sq += static_cast<double>(r) * r;
  const double tolerance = 0.05 * std::sqrt(sum_sq / std::max<size_t>(ref.size(), 1));
  const size_t width = static_cast<size_t>(num_heads) * static_cast<size_t>(head_dim);
  std::vector<int> by_row(8, 0), by_dim(static_cast<size_t>((head_dim + 7) / 8), 0);
  size_t bad = 0, nans = 0, first = ref.size();
  for (size_t i = 0; i < ref.size() && i < out.size(); ++i) {
    const bool nan = std::isnan(out[i]);
    if (!nan && std::fabs(static_cast<double>(out[i]) - ref[i]) <= tolerance) continue;
    nans += nan ? 1 : 0;
    if (bad++ == 0) first = i;
    ++by_row[(i / width) % 128 / 16];
    ++by_dim[(i % width) % static_cast<size_t>(head_dim) / 8];
  }
  if (bad == 0) return "no element is off by more than 5% of the output's RMS";
  auto list = [](const std::vector<int>& v) {
    std::string s;
    for (int x : v) s += (s.empty() ? "" : " ") + std::to_string(x);
    return s;
  };
  return std::to_string(bad) + " of " + std::to_string(ref.size()) +
         " elements off by more than 5% of the output's RMS (" + std::to_string(nans) +
         " NaN); the first at row " + std::to_string(first / width) + ", head " +
         std::to_string(first % width / static_cast<size_t>(head_dim)) + ", dim " +
         std::to_string(first % static_cast<size_t>(head_dim)) + " (got " +
         std::to_string(out[first]) + ", want " + std::to_string(ref[first]) +
         "); by row mod 128 in blocks of 16: [" + list(by_row) + "]; by dim in blocks of 8: [" +
         list(by_dim) + "]";
}

}  // namespace pdpool::testing
