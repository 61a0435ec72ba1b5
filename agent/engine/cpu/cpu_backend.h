// CpuBackend: the float32 reference implementation of Backend, the oracle other backends are
// tested against. Paged KV cache in host memory, one sequence at a time in a fixed loop order,
// so a sequence's results are bit-identical alone or batched, chunked or not, and with its KV
// computed here or imported from another CpuBackend. Not thread-safe (one engine thread).
#pragma once

#include <memory>

#include "agent/engine/backend.h"
#include "agent/model/model_config.h"
#include "agent/model/weights.h"
#include "common/status.h"

namespace pdpool::agent {

// Checks the config, the weights' shapes and the cache geometry (block_size in [1, 4096],
// num_blocks ≥ 1, the cache allocatable) and allocates the cache.
StatusOr<std::unique_ptr<Backend>> NewCpuBackend(ModelConfig config, ModelWeights weights,
                                                 int block_size, int num_blocks);

}  // namespace pdpool::agent
