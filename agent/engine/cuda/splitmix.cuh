// SplitMix64 on the device: the same mixer as the host's dummy weights (agent/model/weights.cc)
// and sampling draws (agent/engine/sampling.cc), so the GPU reproduces their streams bit for bit.
#pragma once

#include <cstdint>

namespace pdpool::agent::cuda {

__device__ __forceinline__ uint64_t SplitMix64(uint64_t x) {
  uint64_t z = x + 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

}  // namespace pdpool::agent::cuda
