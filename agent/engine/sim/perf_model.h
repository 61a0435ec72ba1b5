// PerfModel: how long one engine step of a Llama-family model takes on a tensor-parallel group
// of one kind of GPU — a roofline (max of compute time and HBM time) with calibrated
// efficiencies, plus tensor-parallel all-reduces and fixed overheads. The sim backend sleeps
// (or advances a virtual clock) for it; the planner asks it what a replica can serve. The
// *Floor* functions give the bare roofline at datasheet rates (no efficiency, no overhead), for
// benchmarks that print floor vs modeled vs measured. Immutable after construction; thread-safe.
#pragma once

#include <cstdint>
#include <vector>

#include "agent/engine/sim/calibration.h"
#include "agent/engine/sim/gpu_catalog.h"
#include "agent/model/model_config.h"
#include "common/clock.h"
#include "common/status.h"

namespace pdpool::agent {

// One sequence's part of a step: `new_tokens` run at positions after `context_before` tokens
// whose KV is already cached (decode: new_tokens 1; a prompt chunk: its length).
struct SeqWork {
  int new_tokens = 0;
  int64_t context_before = 0;
  bool sample = true;  // runs the LM head for its last token
};

// Where a step's time goes, per GPU of the group.
struct StepCost {
  double flops = 0;       // per GPU
  double bytes = 0;       // HBM bytes per GPU (weights once, KV read and written)
  double compute_s = 0;   // GEMMs at matmul efficiency + attention at attention efficiency
  double memory_s = 0;    // bytes at hbm efficiency
  double comm_s = 0;      // tensor-parallel all-reduces
  double overhead_s = 0;  // per step + per sequence
  double TotalSeconds() const {
    return (compute_s > memory_s ? compute_s : memory_s) + comm_s + overhead_s;
  }
};

class PerfModel {
 public:
  // tensor_parallel < 1 is treated as 1; use Create to get an error for bad input instead.
  PerfModel(ModelConfig model, GpuSpec gpu, GpuCalibration calibration, int tensor_parallel,
            int bytes_per_element = 2);
  // Checks the shape fields the model uses (positive sizes) and that tensor_parallel divides
  // the attention heads and fits the KV heads (kv_heads % tp == 0, or tp % kv_heads == 0 with
  // KV heads replicated).
  static StatusOr<PerfModel> Create(ModelConfig model, GpuSpec gpu, GpuCalibration calibration,
                                    int tensor_parallel, int bytes_per_element = 2);

  // A mixed batch (what the sim backend runs).
  Duration StepTime(const std::vector<SeqWork>& batch) const;
  StepCost Cost(const std::vector<SeqWork>& batch) const;
  // One prompt (or chunk) of `new_tokens` after `context_before` cached tokens.
  Duration PrefillTime(int new_tokens, int64_t context_before = 0) const;
  // `batch` sequences of one new token each, whose cached contexts add up to
  // `total_context_tokens`.
  Duration DecodeStepTime(int batch, int64_t total_context_tokens) const;

  // Bare roofline at datasheet rates: max(FLOPs / peak, bytes / HBM bandwidth) per GPU.
  Duration StepFloorTime(const std::vector<SeqWork>& batch) const;
  Duration PrefillFloorTime(int new_tokens, int64_t context_before = 0) const;
  Duration DecodeFloorTime(int batch, int64_t total_context_tokens) const;

  // A KV handoff of `bytes` (the whole replica's, all TP ranks together): each rank sends its
  // share over its own NVLink, one direction (half the datasheet both-ways figure), at
  // nvlink_efficiency.
  Duration KvTransferTime(int64_t bytes) const;

  // All weights (embeddings and LM head included), bytes.
  double WeightBytes() const;
  double WeightBytesPerGpu() const { return WeightBytes() / tensor_parallel_; }
  // TARGETS.md's KV bytes per token: 2 · layers · kv_heads · head_dim · bytes_per_element.
  int64_t KvBytesPerToken() const;
  // The share one GPU holds: kv_heads / tp heads (at least one head: replicated when tp >
  // kv_heads).
  int64_t KvBytesPerTokenPerGpu() const;
  // Activations, workspaces and CUDA context kept out of the KV cache, per GPU.
  double ActivationReserveBytes() const;
  // Tokens of KV the group can hold: (hbm · utilization − weights/tp − activation reserve) /
  // (KV bytes per token per GPU), clamped at 0 (the weights do not fit).
  int64_t KvCapacityTokens(double gpu_memory_utilization) const;

  const ModelConfig& model() const { return model_; }
  const GpuSpec& gpu() const { return gpu_; }
  const GpuCalibration& calibration() const { return calibration_; }
  int tensor_parallel() const { return tensor_parallel_; }
  int bytes_per_element() const { return bytes_per_element_; }

  // Tokens per step the activation reserve is sized for (vLLM's max_num_batched_tokens default
  // for chunked prefill is of this order).
  static constexpr int kReserveBatchedTokens = 8192;

 private:
  struct Work;  // a batch reduced to sums (all costs are linear in them)
  Work Reduce(const std::vector<SeqWork>& batch) const;
  StepCost CostOf(const Work& work) const;
  Duration FloorOf(const Work& work) const;

  ModelConfig model_;
  GpuSpec gpu_;
  GpuCalibration calibration_;
  int tensor_parallel_;
  int bytes_per_element_;
  double layer_params_ = 0;  // all decoder layers together
  double lm_head_params_ = 0;
  double weight_params_ = 0;
};

}  // namespace pdpool::agent
