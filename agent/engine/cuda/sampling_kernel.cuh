// The body of the token sampling kernel (sampling_kernel.cu). One block of 1024 threads per row
// of logits: greedy argmax (NaN skipped, ties to the lowest id, as agent/engine/sampling.cc), or
// temperature + nucleus (top-p) sampling with the same counter-based draw u =
// SampleUniform(seed, sample_index).
//
// How it works:
// - Every pass over the row is coalesced: warp w owns ids [w·seg, (w+1)·seg) and its lanes read
//   them 32 at a time.
// - Weights w = exp((logit − max) / temperature) ≤ 1 are summed as fixed-point integers,
//   ⌊w · 2⁴⁴⌋. Integer sums are exact in any order, so every reduction is deterministic and the
//   draw's walk can never stall on rounding. A token whose weight is below 2⁻⁴⁴ of the largest
//   is never drawn (the CPU would draw it with a probability below 2⁻⁴⁴).
// - The nucleus is found without sorting: a bisection over the weights' float bits finds the
//   threshold τ whose set {w ≥ τ} first reaches top_p of the mass (ties at τ taken in id order,
//   as the CPU's stable sort does). Each step narrows the range to the bits actually present on
//   the chosen side, and once at most kCandidateCapacity weights remain in range they are copied
//   to shared memory, so the remaining steps no longer read the row.
// - The draw walks the kept ids in id order: the warp, then the lane, then the id whose
//   cumulative weight passes u · (kept mass). The distribution is the CPU's; the walk order (ids,
//   not descending probability) differs, so the same u may pick another token than the CPU
//   backend would.
// A header so that tests can also run it on the host under tests/cuda_emulation; device code
// only.
#pragma once

#include <cmath>
#include <cstdint>

#include "agent/engine/cuda/kernels.h"
#include "agent/engine/cuda/splitmix.cuh"

namespace pdpool::agent::cuda {

constexpr int kSampleThreads = 1024;
namespace sampling_detail {

constexpr int kThreads = kSampleThreads;
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFullMask = 0xffffffffu;
// Weights in range of the threshold search moved to shared memory once this few remain.
constexpr int kCandidateCapacity = 8192;
constexpr float kFixedOne = 17592186044416.0f;  // 2^44: the fixed-point weight of w = 1

// agent/engine/sampling.cc's SampleUniform.
__device__ __forceinline__ double Uniform(uint64_t seed, int32_t sample_index) {
  const uint64_t index = static_cast<uint64_t>(static_cast<uint32_t>(sample_index));
  const uint64_t h = SplitMix64(seed ^ (index * 0x9E3779B97F4A7C15ull));
  return static_cast<double>(h >> 11) * (1.0 / 9007199254740992.0);
}

// The fixed-point weight of a weight's float bits (w in [0, 1]): at most 2^44.
__device__ __forceinline__ uint64_t FixedWeight(uint32_t bits) {
  return static_cast<uint64_t>(__uint_as_float(bits) * kFixedOne);
}

// The ids of a row this thread reads in a coalesced pass: first, first + 32, … below end.
struct LaneIds {
  int first;
  int end;
};
// Ids per warp: a multiple of 32 covering the row in kWarps segments.
__device__ __forceinline__ int WarpSegment(int vocab) {
  return 32 * ((vocab + kThreads - 1) / kThreads);
}
__device__ __forceinline__ LaneIds MyLaneIds(int vocab) {
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int segment = WarpSegment(vocab);
  return LaneIds{warp * segment + lane, min(vocab, (warp + 1) * segment)};
}

// Values reduced over the block. Each has Combine (associative and commutative, so the result
// does not depend on the order) and ShuffleXor (the value of lane ^ mask).
struct ArgMax {
  float value;
  int index;  // -1: none yet
  static __device__ __forceinline__ ArgMax Combine(ArgMax a, ArgMax b) {
    if (b.index < 0) return a;
    if (a.index < 0) return b;
    // Equal values: the lower id wins.
    return b.value > a.value || (b.value == a.value && b.index < a.index) ? b : a;
  }
  __device__ __forceinline__ ArgMax ShuffleXor(int mask) const {
    return ArgMax{__shfl_xor_sync(kFullMask, value, mask), __shfl_xor_sync(kFullMask, index, mask)};
  }
};

// Fixed-point mass, count and bit range of weights.
struct WeightRange {
  uint64_t mass;
  uint32_t count;
  uint32_t min_bits;  // 0xffffffff when count is 0
  uint32_t max_bits;
  static __device__ __forceinline__ WeightRange Empty() { return WeightRange{0, 0, 0xffffffffu, 0}; }
  __device__ __forceinline__ void Add(uint32_t bits, uint64_t fixed) {
    mass += fixed;
    ++count;
    min_bits = min(min_bits, bits);
    max_bits = max(max_bits, bits);
  }
  static __device__ __forceinline__ WeightRange Combine(WeightRange a, WeightRange b) {
    return WeightRange{a.mass + b.mass, a.count + b.count, min(a.min_bits, b.min_bits),
                       max(a.max_bits, b.max_bits)};
  }
  __device__ __forceinline__ WeightRange ShuffleXor(int mask) const {
    return WeightRange{__shfl_xor_sync(kFullMask, mass, mask),
                       __shfl_xor_sync(kFullMask, count, mask),
                       __shfl_xor_sync(kFullMask, min_bits, mask),
                       __shfl_xor_sync(kFullMask, max_bits, mask)};
  }
};

// One bisection step's split of the weights in range: at or above the pivot, and below it.
struct Split {
  WeightRange high;
  WeightRange low;
  static __device__ __forceinline__ Split Combine(Split a, Split b) {
    return Split{WeightRange::Combine(a.high, b.high), WeightRange::Combine(a.low, b.low)};
  }
  __device__ __forceinline__ Split ShuffleXor(int mask) const {
    return Split{high.ShuffleXor(mask), low.ShuffleXor(mask)};
  }
};

// Where the draw's walk continues: the warp whose kept range holds the target, with the kept
// mass and the ties at τ of the warps before it.
struct WalkStart {
  int warp;
  uint32_t tie_prefix;
  uint64_t mass_prefix;
  uint64_t target;
};

// The block's shared memory.
struct SampleShared {
  union {
    ArgMax argmax[kWarps];
    WeightRange range[kWarps];
    Split split[kWarps];
  } warp_values;
  union {
    ArgMax argmax;
    WeightRange range;
    Split split;
  } block_value;
  int scan_offsets[kWarps];
  uint64_t warp_mass_above[kWarps];  // per warp: mass of the weights above τ
  uint32_t warp_ties[kWarps];        // per warp: weights equal to τ
  WalkStart walk;
  uint32_t candidates[kCandidateCapacity];  // float bits of the weights in range
};

template <typename T>
__device__ __forceinline__ T WarpReduce(T v) {
  for (int mask = 16; mask > 0; mask >>= 1) v = T::Combine(v, v.ShuffleXor(mask));
  return v;
}

// The block's total of per-warp totals (every lane of a warp holds its warp's total). Every
// thread must call it; two barriers. warp_values/block_value are T's members of the unions.
template <typename T>
__device__ __forceinline__ T BlockCombine(T warp_total, T* warp_values, T* block_value) {
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  if (lane == 0) warp_values[warp] = warp_total;
  __syncthreads();
  if (warp == 0) {
    const T total = WarpReduce(warp_values[lane]);
    if (lane == 0) *block_value = total;
  }
  __syncthreads();
  return *block_value;
}

// Exclusive prefix of v over the warp's lanes, in lane order.
template <typename T>
__device__ __forceinline__ T WarpExclusiveScan(T v) {
  const int lane = static_cast<int>(threadIdx.x) % 32;
  T inclusive = v;
  for (int delta = 1; delta < 32; delta <<= 1) {
    const T before = __shfl_up_sync(kFullMask, inclusive, delta);
    if (lane >= delta) inclusive += before;
  }
  return inclusive - v;
}

// Exclusive prefix of v over the block's threads, in thread order. Every thread must call it.
__device__ __forceinline__ int BlockExclusiveScan(int v, int* scan_offsets) {
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int in_warp = WarpExclusiveScan(v);
  if (lane == 31) scan_offsets[warp] = in_warp + v;
  __syncthreads();
  if (warp == 0) scan_offsets[lane] = WarpExclusiveScan(scan_offsets[lane]);
  __syncthreads();
  return scan_offsets[warp] + in_warp;
}

// How many of `ties` weights equal to τ, whose first has tie rank `tie_prefix`, are among the
// first `ties_kept`.
__device__ __forceinline__ uint32_t KeptTies(uint32_t ties_kept, uint32_t tie_prefix,
                                             uint32_t ties) {
  return tie_prefix >= ties_kept ? 0u : min(ties, ties_kept - tie_prefix);
}

// The nucleus threshold: the largest weight τ (as float bits) with mass(w ≥ τ) ≥ need, found by
// bisection over the bits present. *mass_above: mass(w > τ); *ties: how many weights equal τ.
// all: the row's weights with a nonzero fixed-point weight; my_count: this thread's share.
__device__ __forceinline__ uint32_t NucleusThreshold(const float* __restrict__ w, int vocab,
                                                     const WeightRange& all, uint32_t my_count,
                                                     uint64_t need, SampleShared& shared,
                                                     uint64_t* mass_above, uint32_t* ties) {
  const LaneIds mine = MyLaneIds(vocab);
  // Invariants: mass(w ≥ lo) ≥ need > mass(w ≥ hi) = above; `count` weights lie in [lo, hi),
  // my_count of them this thread's; the range's ends are bits present in the row.
  uint32_t lo = all.min_bits, hi = all.max_bits + 1, count = all.count;
  uint64_t above = 0;
  int candidates = -1;  // how many weights shared.candidates holds; -1: still in the row
  while (hi - lo > 1) {
    if (candidates < 0 && count <= static_cast<uint32_t>(kCandidateCapacity)) {
      int at = BlockExclusiveScan(static_cast<int>(my_count), shared.scan_offsets);
      for (int i = mine.first; i < mine.end; i += 32) {
        const uint32_t bits = __float_as_uint(w[i]);
        if (bits >= lo && bits < hi) shared.candidates[at++] = bits;
      }
      __syncthreads();
      candidates = static_cast<int>(count);
    }
    const uint32_t pivot = lo + (hi - lo) / 2;
    Split split{WeightRange::Empty(), WeightRange::Empty()};
    auto visit = [&](uint32_t bits) {
      if (bits < lo || bits >= hi) return;
      if (bits >= pivot) {
        split.high.Add(bits, FixedWeight(bits));
      } else {
        split.low.Add(bits, 0);  // the low side's mass is never needed
      }
    };
    if (candidates < 0) {
      for (int i = mine.first; i < mine.end; i += 32) visit(__float_as_uint(w[i]));
    } else {
      for (int k = static_cast<int>(threadIdx.x); k < candidates; k += kThreads) {
        visit(shared.candidates[k]);
      }
    }
    const uint32_t my_high = split.high.count, my_low = split.low.count;
    split = BlockCombine(WarpReduce(split), shared.warp_values.split, &shared.block_value.split);
    // Each side, when chosen, is nonempty: the high side's mass reaches need − above > 0, and
    // the low side holds the mass(w ≥ lo) − mass(w ≥ pivot) > 0 left over.
    const bool take_high = above + split.high.mass >= need;
    if (!take_high) above += split.high.mass;
    const WeightRange& side = take_high ? split.high : split.low;
    lo = side.min_bits;
    hi = side.max_bits + 1;
    count = side.count;
    my_count = take_high ? my_high : my_low;
  }
  *mass_above = above;
  *ties = count;
  return lo;
}

// Samples row blockIdx.x. weights_all: scratch of one row (vocab floats) per row.
__device__ __forceinline__ void SampleBlock(const float* __restrict__ logits,
                                            float* __restrict__ weights_all, int vocab,
                                            const SampleRowParams* __restrict__ params,
                                            int32_t* __restrict__ tokens, SampleShared& shared) {
  const int row = blockIdx.x;
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const float* l = logits + int64_t{row} * vocab;
  float* w = weights_all + int64_t{row} * vocab;
  const SampleRowParams p = params[row];
  const LaneIds mine = MyLaneIds(vocab);

  // Argmax, NaN skipped, ties to the lowest id (a thread's ids ascend, so `>` keeps the first).
  ArgMax best{-INFINITY, -1};
  for (int i = mine.first; i < mine.end; i += 32) {
    const float v = l[i];
    if (isnan(v)) continue;
    if (best.index < 0 || v > best.value) best = ArgMax{v, i};
  }
  best = BlockCombine(WarpReduce(best), shared.warp_values.argmax, &shared.block_value.argmax);
  if (best.index < 0) {  // all NaN
    if (threadIdx.x == 0) tokens[row] = 0;
    return;
  }
  if (!(static_cast<double>(p.temperature) >= 1e-6) || isinf(best.value)) {  // as the cpu
    if (threadIdx.x == 0) tokens[row] = best.index;
    return;
  }

  // Weights, their fixed-point total and bit range.
  const float inv_t = 1.0f / p.temperature;
  WeightRange range = WeightRange::Empty();
  for (int i = mine.first; i < mine.end; i += 32) {
    const float v = l[i];
    const float weight = isnan(v) ? 0.0f : expf((v - best.value) * inv_t);
    w[i] = weight;
    const uint32_t bits = __float_as_uint(weight);
    const uint64_t fixed = FixedWeight(bits);
    if (fixed > 0) range.Add(bits, fixed);
  }
  const uint32_t my_count = range.count;
  const WeightRange warp_range = WarpReduce(range);
  const WeightRange all =
      BlockCombine(warp_range, shared.warp_values.range, &shared.block_value.range);

  // Kept: w > τ, plus the first ties_kept ids with w = τ. Without a nucleus, τ = 0 and
  // ties_kept = 0: every weight with a nonzero fixed-point weight.
  uint32_t tau = 0, ties_kept = 0;
  uint64_t w_tau = 0;  // the fixed-point weight of τ
  if (p.top_p < 1.0f) {
    // need = ⌈top_p · total⌉, at least 1 (top_p ≤ 0 keeps the largest weight, as the CPU).
    const double wanted = ceil(static_cast<double>(p.top_p) * static_cast<double>(all.mass));
    const uint64_t need =
        wanted <= 1.0 ? 1 : min(all.mass, static_cast<uint64_t>(wanted));
    uint64_t mass_above = 0;
    uint32_t ties = 0;
    tau = NucleusThreshold(w, vocab, all, my_count, need, shared, &mass_above, &ties);
    w_tau = FixedWeight(tau);
    ties_kept = static_cast<uint32_t>(
        min(static_cast<uint64_t>(ties), max(uint64_t{1}, (need - mass_above + w_tau - 1) / w_tau)));
    // Per warp: the mass above τ and the ties at τ.
    uint64_t my_above = 0;
    uint32_t my_ties = 0;
    for (int i = mine.first; i < mine.end; i += 32) {
      const uint32_t bits = __float_as_uint(w[i]);
      if (bits > tau) my_above += FixedWeight(bits);
      my_ties += bits == tau ? 1u : 0u;
    }
    for (int mask = 16; mask > 0; mask >>= 1) {
      my_above += __shfl_xor_sync(kFullMask, my_above, mask);
      my_ties += __shfl_xor_sync(kFullMask, my_ties, mask);
    }
    if (lane == 0) {
      shared.warp_mass_above[warp] = my_above;
      shared.warp_ties[warp] = my_ties;
    }
  } else if (lane == 0) {
    shared.warp_mass_above[warp] = warp_range.mass;
    shared.warp_ties[warp] = 0;
  }
  __syncthreads();

  // The warp whose kept range [prefix, prefix + kept) holds target = ⌊u · kept total⌋. The
  // ranges tile [0, total) exactly, so exactly one warp, then one lane, then one id claims it.
  if (warp == 0) {
    const uint32_t ties = shared.warp_ties[lane];
    const uint32_t tie_prefix = WarpExclusiveScan(ties);
    const uint64_t kept =
        shared.warp_mass_above[lane] + w_tau * KeptTies(ties_kept, tie_prefix, ties);
    const uint64_t prefix = WarpExclusiveScan(kept);
    const uint64_t total = __shfl_sync(kFullMask, prefix + kept, 31);
    const double u = Uniform(p.seed, p.sample_index);
    const uint64_t target =
        min(total - 1, static_cast<uint64_t>(u * static_cast<double>(total)));
    if (target >= prefix && target < prefix + kept) {
      shared.walk = WalkStart{lane, tie_prefix, prefix, target};
    }
  }
  __syncthreads();
  const WalkStart start = shared.walk;
  if (warp != start.warp) return;

  // In that warp, each lane takes a contiguous share of the warp's ids, in id order.
  const int segment = WarpSegment(vocab);
  const int seg_first = warp * segment, seg_end = min(vocab, seg_first + segment);
  const int share = (seg_end - seg_first + 31) / 32;
  const int first = min(seg_end, seg_first + lane * share), end = min(seg_end, first + share);
  uint64_t above = 0;
  uint32_t ties = 0;
  for (int i = first; i < end; ++i) {
    const uint32_t bits = __float_as_uint(w[i]);
    if (bits > tau) above += FixedWeight(bits);
    ties += bits == tau ? 1u : 0u;
  }
  const uint32_t tie_prefix = start.tie_prefix + WarpExclusiveScan(ties);
  const uint64_t kept = above + w_tau * KeptTies(ties_kept, tie_prefix, ties);
  const uint64_t prefix = start.mass_prefix + WarpExclusiveScan(kept);
  if (start.target < prefix || start.target >= prefix + kept) return;
  uint64_t cumulative = prefix;
  uint32_t tie_rank = tie_prefix;
  for (int i = first; i < end; ++i) {
    const uint32_t bits = __float_as_uint(w[i]);
    const bool is_kept = bits > tau || (bits == tau && tie_rank++ < ties_kept);
    if (!is_kept) continue;
    cumulative += FixedWeight(bits);
    if (cumulative > start.target) {
      tokens[row] = i;
      return;
    }
  }
}

}  // namespace sampling_detail

using sampling_detail::SampleBlock;
using sampling_detail::SampleShared;

}  // namespace pdpool::agent::cuda
