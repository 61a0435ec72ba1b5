// Token sampling: a pure, deterministic function of (logits, SamplingParams, sample_index), so
// the same request samples the same tokens on any worker and any machine (the random draw is
// a counter-based hash, not a stateful generator). Stateless; thread-safe.
#pragma once

#include <cstdint>
#include <span>

#include "agent/engine/backend.h"

namespace pdpool::agent {

// The splitmix64 output function of state x (Steele, Lea, Flood 2014): add the golden gamma,
// then mix. A good 64-bit hash of a counter.
uint64_t SplitMix64(uint64_t x);

// The uniform draw in [0, 1) (53 bits) a sequence uses for its sample_index-th token.
double SampleUniform(uint64_t seed, int32_t sample_index);

// temperature < 1e-6 → argmax (lowest index on ties). Otherwise softmax(logits / temperature),
// then nucleus filtering (sorted by probability, descending, ties by index: the smallest
// prefix whose mass reaches top_p; top_p ≥ 1 keeps all), then one draw. NaN logits count as
// -inf. Returns -1 only for empty logits.
int32_t SampleToken(std::span<const float> logits, const SamplingParams& p, int32_t sample_index);

}  // namespace pdpool::agent
