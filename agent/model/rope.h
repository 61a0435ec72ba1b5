// Rotary position embedding frequencies of a Llama model (Hugging Face's rotate-half RoPE, with
// Llama 3.1's "llama3" long-context scaling), shared by every backend so all rotate alike.
// Pure function; thread-safe.
#pragma once

#include <vector>

#include "agent/model/model_config.h"

namespace pdpool::agent {

// theta^(-2i/head_dim) for i in [0, head_dim/2), llama3-scaled when the config says so. Pair
// (i, i + head_dim/2) of a head vector at position p rotates by p · result[i].
std::vector<double> RopeInverseFrequencies(const ModelConfig& config);

}  // namespace pdpool::agent
