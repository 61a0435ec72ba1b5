// The body of the token sampling kernel (sampling_kernel.cu). One block per row of logits:
// greedy argmax (NaN skipped, ties to the lowest id, as agent/engine/sampling.cc), or
// temperature + nucleus (top-p) sampling with the same counter-based draw u =
// SampleUniform(seed, sample_index). The nucleus is found without sorting: a binary search over
// the weight's float bits finds the threshold τ whose set {w ≥ τ} first reaches top_p of the
// mass (ties at τ taken in id order, as the CPU's stable sort does); the token is then drawn by
// walking the kept ids in id order. The distribution is the CPU's; the walk order (ids, not
// descending probability) differs, so the same u may pick another token than the CPU backend
// would. Every reduction has a fixed order: the same logits, seed and index give the same token
// on every run. A header so that tests can also run it on the host under tests/cuda_emulation;
// device code only.
#pragma once

#include <cmath>
#include <cstdint>

#include "agent/engine/cuda/kernels.h"
#include "agent/engine/cuda/splitmix.cuh"

namespace pdpool::agent::cuda {

constexpr int kSampleThreads = 1024;
namespace sampling_detail {

constexpr int kThreads = kSampleThreads;

// agent/engine/sampling.cc's SampleUniform.
__device__ __forceinline__ double Uniform(uint64_t seed, int32_t sample_index) {
  const uint64_t index = static_cast<uint64_t>(static_cast<uint32_t>(sample_index));
  const uint64_t h = SplitMix64(seed ^ (index * 0x9E3779B97F4A7C15ull));
  return static_cast<double>(h >> 11) * (1.0 / 9007199254740992.0);
}

// Sum of one value per thread in thread order (fixed: the same bits every run).
template <typename T>
__device__ T BlockSum(T v, T* scratch) {
  scratch[threadIdx.x] = v;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride >>= 1) {
    if (static_cast<int>(threadIdx.x) < stride)
      scratch[threadIdx.x] += scratch[threadIdx.x + stride];
    __syncthreads();
  }
  const T total = scratch[0];
  __syncthreads();
  return total;
}

// Exclusive prefix (in thread order) of one value per thread, and the total the prefixes add up
// to: thread i's range [prefix, prefix + v) ends exactly where thread i + 1's begins, and the
// last ends at the total. scratch holds kThreads + 1 values.
template <typename T>
struct Scan {
  T prefix;
  T total;
};
template <typename T>
__device__ Scan<T> BlockExclusiveScan(T v, T* scratch) {
  scratch[threadIdx.x] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    T running = 0;
    for (int i = 0; i < kThreads; ++i) {
      const T x = scratch[i];
      scratch[i] = running;
      running += x;
    }
    scratch[kThreads] = running;
  }
  __syncthreads();
  const Scan<T> scan{scratch[threadIdx.x], scratch[kThreads]};
  __syncthreads();
  return scan;
}

// The block's shared memory.
struct SampleShared {
  float fscratch[kThreads + 1];
  int iscratch[kThreads + 1];
  float best_value[kThreads];
  int best_index[kThreads];
  int chosen;
};

// One block of kSampleThreads threads per row. weights_all: scratch of one row (vocab floats)
// per row for exp((logit − max) / temperature).
__device__ __forceinline__ void SampleBlock(const float* __restrict__ logits,
                                            float* __restrict__ weights_all, int vocab,
                                            const SampleRowParams* __restrict__ params,
                                            int32_t* __restrict__ tokens, SampleShared& shared) {
  float* fscratch = shared.fscratch;
  int* iscratch = shared.iscratch;
  float* best_value_s = shared.best_value;
  int* best_index_s = shared.best_index;
  int& chosen = shared.chosen;
  const int row = blockIdx.x, tid = threadIdx.x;
  const float* l = logits + int64_t{row} * vocab;
  float* w = weights_all + int64_t{row} * vocab;
  const SampleRowParams p = params[row];
  const int chunk = (vocab + kThreads - 1) / kThreads;
  const int lo = min(vocab, tid * chunk), hi = min(vocab, lo + chunk);

  // Argmax, NaN skipped, ties to the lowest id.
  float best_value = -INFINITY;
  int best_index = -1;
  for (int i = lo; i < hi; ++i) {
    const float v = l[i];
    if (isnan(v)) continue;
    if (best_index < 0 || v > best_value) {
      best_value = v;
      best_index = i;
    }
  }
  best_value_s[tid] = best_value;
  best_index_s[tid] = best_index;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride >>= 1) {
    if (tid < stride) {
      const int other = best_index_s[tid + stride];
      const float other_value = best_value_s[tid + stride];
      const int mine = best_index_s[tid];
      const float mine_value = best_value_s[tid];
      // Equal values: the lower id wins. (Not "the lower thread": after a few rounds a lower
      // thread can hold a higher id than the thread it is compared with.)
      if (other >= 0 &&
          (mine < 0 || other_value > mine_value || (other_value == mine_value && other < mine))) {
        best_value_s[tid] = other_value;
        best_index_s[tid] = other;
      }
    }
    __syncthreads();
  }
  const float max_logit = best_value_s[0];
  const int argmax = best_index_s[0];
  if (argmax < 0) {  // all NaN
    if (tid == 0) tokens[row] = 0;
    return;
  }
  if (!(static_cast<double>(p.temperature) >= 1e-6) || isinf(max_logit)) {  // as the cpu
    if (tid == 0) tokens[row] = argmax;
    return;
  }

  // Weights and their total.
  const float inv_t = 1.0f / p.temperature;
  float local = 0.0f;
  for (int i = lo; i < hi; ++i) {
    const float v = l[i];
    const float weight = isnan(v) ? 0.0f : expf((v - max_logit) * inv_t);
    w[i] = weight;
    local += weight;
  }
  const float total = BlockSum(local, fscratch);

  // The nucleus: threshold τ and how many ties at τ it keeps.
  float tau = 0.0f;
  int ties_kept = 0;
  if (p.top_p < 1.0f) {
    const float need = p.top_p * total;
    uint32_t lo_bits = 0, hi_bits = 0x3f800001u;  // τ in [0, 1]; max weight is exp(0) = 1
    while (hi_bits - lo_bits > 1) {
      const uint32_t mid = lo_bits + (hi_bits - lo_bits) / 2;
      const float t = __uint_as_float(mid);
      float mass = 0.0f;
      for (int i = lo; i < hi; ++i) mass += w[i] >= t ? w[i] : 0.0f;
      if (BlockSum(mass, fscratch) >= need) {
        lo_bits = mid;
      } else {
        hi_bits = mid;
      }
    }
    tau = __uint_as_float(lo_bits);
    if (tau > 0.0f) {
      float above = 0.0f;
      int ties = 0;
      for (int i = lo; i < hi; ++i) {
        above += w[i] > tau ? w[i] : 0.0f;
        ties += w[i] == tau ? 1 : 0;
      }
      const float mass_above = BlockSum(above, fscratch);
      const int all_ties = BlockSum(ties, iscratch);
      ties_kept = static_cast<int>(ceilf((need - mass_above) / tau));
      ties_kept = max(1, min(all_ties, ties_kept));
    }
  }
  // Kept: w > τ, plus the first ties_kept ids with w == τ (with τ = 0: every w > 0).
  int my_ties = 0;
  if (tau > 0.0f) {
    for (int i = lo; i < hi; ++i) my_ties += w[i] == tau ? 1 : 0;
  }
  const int tie_prefix = BlockExclusiveScan(my_ties, iscratch).prefix;
  float kept_local = 0.0f;
  int last_kept = -1;
  {
    int tie_rank = tie_prefix;
    for (int i = lo; i < hi; ++i) {
      const float weight = w[i];
      bool kept = weight > tau;
      if (tau > 0.0f && weight == tau) kept = tie_rank++ < ties_kept;
      if (kept && weight > 0.0f) {
        kept_local += weight;
        last_kept = i;
      }
    }
  }
  // The ranges [kept_prefix, kept_prefix + kept_local) tile [0, kept_total) exactly, so exactly
  // one thread claims a target below kept_total.
  const Scan<float> kept_scan = BlockExclusiveScan(kept_local, fscratch);
  const float kept_prefix = kept_scan.prefix, kept_total = kept_scan.total;
  const float target = static_cast<float>(Uniform(p.seed, p.sample_index)) * kept_total;
  if (tid == 0) chosen = -1;
  __syncthreads();
  if (target >= kept_prefix && target < kept_prefix + kept_local) {
    float cum = kept_prefix;
    int tie_rank = tie_prefix;
    int pick = -1;
    for (int i = lo; i < hi; ++i) {
      const float weight = w[i];
      bool kept = weight > tau;
      if (tau > 0.0f && weight == tau) kept = tie_rank++ < ties_kept;
      if (!kept || weight <= 0.0f) continue;
      pick = i;
      cum += weight;
      if (cum > target) break;
    }
    // A walk that rounding stalled short of the target (small weights absorbed by a large cum)
    // ends on this range's last kept id, never outside the range.
    atomicMax(&chosen, pick);
  }
  // Rounding left the target at the very top: the last kept id, as the CPU does.
  best_index_s[tid] = last_kept;
  __syncthreads();
  if (tid == 0) {
    int token = chosen;
    if (token < 0) {
      for (int i = kThreads - 1; i >= 0; --i) {
        if (best_index_s[i] >= 0) {
          token = best_index_s[i];
          break;
        }
      }
    }
    tokens[row] = token >= 0 ? token : argmax;
  }
}

}  // namespace sampling_detail

using sampling_detail::SampleBlock;
using sampling_detail::SampleShared;

}  // namespace pdpool::agent::cuda
