// Checks a step or a KV block access against a backend's model and KV layout before anything
// runs, with errors that name the sequence and the offending field: every backend that computes
// (cpu, cuda) validates the same way, so an invalid batch changes no KV anywhere. Pure
// functions; thread-safe.
#pragma once

#include <cstdint>

#include "agent/engine/backend.h"
#include "common/status.h"

namespace pdpool::agent {

// `backend` prefixes the errors ("cpu backend", "cuda backend").
Status ValidateStepBatch(const char* backend, const ModelConfig& config, const KvLayout& layout,
                         const StepBatch& batch);
Status ValidateKvBlockArgs(const char* backend, const KvLayout& layout, int32_t block,
                           int32_t tokens);

}  // namespace pdpool::agent
