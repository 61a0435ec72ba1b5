// SimBackend: the `sim` engine backend — no arithmetic and no KV storage. It validates each
// step like a real backend, samples deterministic pseudo-random tokens, and reports the time
// the step would take on the modeled GPUs (PerfModel), so whole pools and traces run on CPUs in
// real or virtual time. Not thread-safe (one engine thread, as every Backend).
#pragma once

#include <memory>
#include <string>

#include "agent/engine/backend.h"
#include "agent/engine/sim/perf_model.h"
#include "agent/model/model_config.h"
#include "common/status.h"

namespace pdpool::agent {

struct SimBackendOptions {
  ModelConfig model;
  std::string gpu = "H200";      // catalog name or nvidia.com/gpu.product label
  int tensor_parallel = 1;       // GPUs of one replica
  std::string calibration_file;  // empty: built-in calibration
  int block_size = 16;
  int num_blocks = 0;  // 0: as many as the modeled KV capacity holds
  double gpu_memory_utilization = 0.9;
  int max_blocks = 1 << 20;  // cap on num_blocks: the scheduler's block table is real memory
};

class SimBackend final : public Backend {
 public:
  SimBackend(PerfModel perf_model, KvLayout layout);

  std::string_view name() const override { return "sim"; }
  const ModelConfig& model() const override { return perf_model_.model(); }
  const KvLayout& kv_layout() const override { return layout_; }

  // Validates like a real backend: at least one sequence, unique seq ids, non-empty token
  // lists with ids < vocab_size, positions within max_position_embeddings, block tables that
  // cover every position with block ids < num_blocks, sane sampling parameters. Then
  // next_tokens[i] = a printable ASCII byte (32..126) that is a hash of (sampling.seed,
  // sample_index, last input token) — the same on every worker, whatever the batch — and
  // modeled_time = PerfModel::StepTime of the batch. want_logits: kSampledLogit at the sampled
  // token, 0 elsewhere (so argmax and softmax samplers agree with next_tokens); an empty vector
  // for sequences that do not sample.
  StatusOr<StepResult> Step(const StepBatch& batch) override;

  // No data moves: the payload is empty, and only an empty payload imports.
  Status ExportKvBlock(int32_t block, int32_t tokens, std::string* out) override;
  Status ImportKvBlock(int32_t block, int32_t tokens, std::string_view data) override;
  // What the prefill replica would send over NVLink, all TP ranks together: tokens · KV bytes
  // per token per GPU · tp (= tokens · KV bytes per token unless KV heads are replicated).
  int64_t ModeledKvBytes(int32_t tokens) const override;
  Duration ModeledKvTransferTime(int64_t bytes) const override;

  const PerfModel& perf_model() const { return perf_model_; }

  static constexpr float kSampledLogit = 30.0f;

 private:
  Status CheckBlock(int32_t block, int32_t tokens) const;

  PerfModel perf_model_;
  KvLayout layout_;
};

// Builds the perf model (catalog + calibration) and sizes the KV cache from the modeled memory.
// Errors name the model, GPU and memory numbers when the weights leave no room for KV.
StatusOr<std::unique_ptr<Backend>> NewSimBackend(const SimBackendOptions& options);

// The perf model behind `backend` when it is a SimBackend, else nullptr (for the planner).
const PerfModel* SimPerfModel(const Backend& backend);

}  // namespace pdpool::agent
