// Backend: the engine interface every execution backend implements (cpu: float32 reference;
// sim: calibrated performance model, no arithmetic; cuda: bf16 on a GPU). The scheduler decides
// what runs in a step (agent/engine/scheduler.h); a backend only executes it against its paged
// KV cache. A backend is used by one engine thread at a time: not thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "agent/engine/device_kv.h"
#include "agent/model/model_config.h"
#include "common/clock.h"
#include "common/status.h"

namespace pdpool::agent {

// temperature 0 → greedy. Sampling is a pure function of (logits, params, sample_index), so a
// token sampled by a prefill worker equals the one the same request gets on a `both` worker.
struct SamplingParams {
  double temperature = 1.0;
  double top_p = 1.0;
  uint64_t seed = 0;
};

// One sequence's part of a step: the new tokens to run (a prompt, a prompt chunk, or the one
// token sampled last step) at positions [start_position, start_position + tokens.size()).
struct SequenceStep {
  uint64_t seq_id = 0;
  std::vector<int32_t> tokens;
  int32_t start_position = 0;
  // KV blocks of this sequence in order; they cover positions [0, start_position + tokens.size()).
  std::vector<int32_t> block_table;
  bool sample = true;  // sample after the last new token (false: a non-final prompt chunk)
  SamplingParams sampling;
  int32_t sample_index = 0;  // tokens this sequence generated before this step (RNG position)
};

struct StepBatch {
  std::vector<SequenceStep> sequences;
  bool want_logits = false;  // tests: return the logits of each sampled position
};

struct StepResult {
  std::vector<int32_t> next_tokens;        // per sequence; -1 where sample == false
  std::vector<std::vector<float>> logits;  // per sequence when want_logits (vocab_size each)
  // Time the step takes on the modeled hardware (sim); zero for backends that compute for real.
  // The engine loop sleeps for it on a real clock, or advances a virtual one.
  Duration modeled_time{0};
};

// Geometry of the paged KV cache: num_blocks blocks of block_size token slots, each slot holding
// K and V for every layer.
struct KvLayout {
  int block_size = 16;
  int num_blocks = 0;
  int num_layers = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int bytes_per_element = 4;
  // Bytes of K+V for one token over all layers (TARGETS.md's "KV bytes per token").
  int64_t BytesPerToken() const {
    return int64_t{2} * num_layers * num_kv_heads * head_dim * bytes_per_element;
  }
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string_view name() const = 0;  // "cpu", "sim", "cuda"
  virtual const ModelConfig& model() const = 0;
  virtual const KvLayout& kv_layout() const = 0;

  virtual StatusOr<StepResult> Step(const StepBatch& batch) = 0;

  // KV handoff, one block at a time (transports stream blocks as they are read). The wire form
  // of a block holding `tokens` (1..block_size) filled slots is the backend's own; importing it
  // into a block of another instance of the same backend and model restores the KV exactly.
  // The sim backend moves no real data: its payload is empty and ModeledKvBytes says what a
  // real transfer would carry.
  virtual Status ExportKvBlock(int32_t block, int32_t tokens, std::string* out) = 0;
  virtual Status ImportKvBlock(int32_t block, int32_t tokens, std::string_view data) = 0;
  virtual int64_t ModeledKvBytes(int32_t tokens) const {
    return kv_layout().BytesPerToken() * tokens;
  }
  // Time a real transfer of `bytes` would take on the modeled link (sim); zero otherwise.
  virtual Duration ModeledKvTransferTime(int64_t /*bytes*/) const { return Duration{0}; }
  // The KV cache in GPU memory (cuda); nullptr for host-memory backends. Every block a Step
  // wrote is complete in device memory when Step returns, and a block that a transport writes
  // between Steps is read by the next Step (transports finish their copies before commit).
  virtual const DeviceKvRegion* device_kv() const { return nullptr; }
};

}  // namespace pdpool::agent
