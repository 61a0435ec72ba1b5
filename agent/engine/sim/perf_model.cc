// PerfModel: FLOP and byte counts of a Llama-family step and their conversion to time.
//
// Counting (per step, before dividing by tensor_parallel):
//   GEMM FLOPs   = 2 · decoder-layer params · new tokens + 2 · vocab · hidden per sampled
//                  sequence (the LM head runs on sampled positions only; the input embedding is
//                  a gather, no FLOPs);
//   attention    = 4 · layers · heads · head_dim per (query, key) pair; a sequence with n new
//                  tokens after c cached ones has n·c + n(n+1)/2 pairs (causal);
//   HBM bytes    = every weight once + KV read of the cached context + KV written for the new
//                  tokens (activations stay in cache / are small next to these);
//   all-reduce   = 2 per layer with tp > 1, ring: 2(tp−1)/tp · tokens · hidden · bytes per
//                  element over one direction of NVLink, plus a fixed latency each.
// Step time = max(compute, memory) + all-reduce + overheads.
#include "agent/engine/sim/perf_model.h"

#include <algorithm>
#include <cmath>
#include <utility>

namespace pdpool::agent {

struct PerfModel::Work {
  double tokens = 0;  // new tokens in the step
  double sequences = 0;
  double sampled = 0;  // sequences running the LM head
  double attention_pairs = 0;
  double kv_read_tokens = 0;
  double kv_write_tokens = 0;
};

namespace {

Duration Seconds(double s) {
  return Duration(static_cast<Duration::rep>(std::llround(std::max(s, 0.0) * 1e9)));
}

std::string ShapeError(const ModelConfig& m, const std::string& what) {
  return "model " + (m.name.empty() ? std::string("(unnamed)") : m.name) + ": " + what;
}

}  // namespace

PerfModel::PerfModel(ModelConfig model, GpuSpec gpu, GpuCalibration calibration,
                     int tensor_parallel, int bytes_per_element)
    : model_(std::move(model)),
      gpu_(std::move(gpu)),
      calibration_(std::move(calibration)),
      tensor_parallel_(std::max(tensor_parallel, 1)),
      bytes_per_element_(std::max(bytes_per_element, 1)) {
  const double hidden = model_.hidden_size;
  const double q_dim = double{1} * model_.num_heads * model_.head_dim;
  const double kv_dim = double{1} * model_.num_kv_heads * model_.head_dim;
  const double per_layer = hidden * q_dim                           // q
                           + 2 * hidden * kv_dim                    // k, v
                           + q_dim * hidden                         // o
                           + 3 * hidden * model_.intermediate_size  // gate, up, down
                           + 2 * hidden;                            // two RMSNorms
  layer_params_ = per_layer * model_.num_layers;
  lm_head_params_ = double{1} * model_.vocab_size * hidden;
  weight_params_ = layer_params_ + hidden /* final norm */ + lm_head_params_ +
                   (model_.tie_word_embeddings ? 0 : lm_head_params_);
}

StatusOr<PerfModel> PerfModel::Create(ModelConfig model, GpuSpec gpu, GpuCalibration calibration,
                                      int tensor_parallel, int bytes_per_element) {
  const std::pair<const char*, int> fields[] = {{"vocab_size", model.vocab_size},
                                                {"hidden_size", model.hidden_size},
                                                {"intermediate_size", model.intermediate_size},
                                                {"num_layers", model.num_layers},
                                                {"num_heads", model.num_heads},
                                                {"num_kv_heads", model.num_kv_heads},
                                                {"head_dim", model.head_dim}};
  for (const auto& [name, value] : fields) {
    if (value <= 0) {
      return Status::InvalidArgument(
          ShapeError(model, std::string(name) + " must be > 0, got " + std::to_string(value)));
    }
  }
  if (tensor_parallel < 1) {
    return Status::InvalidArgument("tensor_parallel must be >= 1, got " +
                                   std::to_string(tensor_parallel));
  }
  if (bytes_per_element < 1) {
    return Status::InvalidArgument("bytes_per_element must be >= 1, got " +
                                   std::to_string(bytes_per_element));
  }
  if (model.num_heads % tensor_parallel != 0) {
    return Status::InvalidArgument(
        ShapeError(model, "tensor_parallel " + std::to_string(tensor_parallel) +
                              " does not divide num_heads " + std::to_string(model.num_heads)));
  }
  if (model.num_kv_heads % tensor_parallel != 0 && tensor_parallel % model.num_kv_heads != 0) {
    return Status::InvalidArgument(ShapeError(
        model, "tensor_parallel " + std::to_string(tensor_parallel) + " and num_kv_heads " +
                   std::to_string(model.num_kv_heads) + ": neither divides the other"));
  }
  return PerfModel(std::move(model), std::move(gpu), std::move(calibration), tensor_parallel,
                   bytes_per_element);
}

double PerfModel::WeightBytes() const { return weight_params_ * bytes_per_element_; }

int64_t PerfModel::KvBytesPerToken() const {
  return int64_t{2} * model_.num_layers * model_.num_kv_heads * model_.head_dim *
         bytes_per_element_;
}

int64_t PerfModel::KvBytesPerTokenPerGpu() const {
  const int64_t heads = std::max<int64_t>(
      1, (int64_t{model_.num_kv_heads} + tensor_parallel_ - 1) / tensor_parallel_);
  return int64_t{2} * model_.num_layers * heads * model_.head_dim * bytes_per_element_;
}

double PerfModel::ActivationReserveBytes() const {
  // CUDA context, cuBLAS workspace and CUDA graphs, plus the activations of the largest step:
  // residual, normed input, attention output and q/k/v (≈4·hidden) and the MLP's gate and up
  // projections (2·intermediate/tp).
  constexpr double kFixedBytes = 1024.0 * 1024 * 1024;
  const double per_token =
      4.0 * model_.hidden_size + 2.0 * model_.intermediate_size / tensor_parallel_;
  return kFixedBytes + kReserveBatchedTokens * per_token * bytes_per_element_;
}

int64_t PerfModel::KvCapacityTokens(double gpu_memory_utilization) const {
  const double free_bytes =
      gpu_.hbm_bytes * gpu_memory_utilization - WeightBytesPerGpu() - ActivationReserveBytes();
  const int64_t per_token = KvBytesPerTokenPerGpu();
  if (free_bytes <= 0 || per_token <= 0) return 0;
  return static_cast<int64_t>(std::floor(free_bytes / static_cast<double>(per_token)));
}

PerfModel::Work PerfModel::Reduce(const std::vector<SeqWork>& batch) const {
  Work w;
  for (const SeqWork& s : batch) {
    const double n = std::max(s.new_tokens, 0);
    const double c = static_cast<double>(std::max<int64_t>(s.context_before, 0));
    w.tokens += n;
    w.sequences += 1;
    w.sampled += s.sample ? 1 : 0;
    w.attention_pairs += n * c + n * (n + 1) / 2;
    w.kv_read_tokens += c;
    w.kv_write_tokens += n;
  }
  return w;
}

StepCost PerfModel::CostOf(const Work& w) const {
  const double tp = tensor_parallel_;
  const GpuCalibration& cal = calibration_;
  const double gemm_flops = (2 * layer_params_ * w.tokens + 2 * lm_head_params_ * w.sampled) / tp;
  const double attention_flops =
      4.0 * model_.num_layers * model_.num_heads * model_.head_dim * w.attention_pairs / tp;
  StepCost cost;
  cost.flops = gemm_flops + attention_flops;
  cost.bytes = WeightBytesPerGpu() + (w.kv_read_tokens + w.kv_write_tokens) *
                                         static_cast<double>(KvBytesPerTokenPerGpu());
  cost.compute_s = gemm_flops / (gpu_.bf16_flops * cal.matmul_efficiency) +
                   attention_flops / (gpu_.bf16_flops * cal.attention_efficiency);
  cost.memory_s = cost.bytes / (gpu_.hbm_bandwidth * cal.hbm_efficiency);
  if (tensor_parallel_ > 1) {
    const double link = gpu_.nvlink_bandwidth / 2 * cal.nvlink_efficiency;
    const double allreduce_bytes =
        2 * (tp - 1) / tp * w.tokens * model_.hidden_size * bytes_per_element_;
    cost.comm_s =
        2.0 * model_.num_layers * (cal.tp_allreduce_latency_us * 1e-6 + allreduce_bytes / link);
  }
  cost.overhead_s = (cal.step_overhead_us + cal.per_sequence_overhead_us * w.sequences) * 1e-6;
  return cost;
}

Duration PerfModel::FloorOf(const Work& w) const {
  const double tp = tensor_parallel_;
  const double flops =
      (2 * layer_params_ * w.tokens + 2 * lm_head_params_ * w.sampled +
       4.0 * model_.num_layers * model_.num_heads * model_.head_dim * w.attention_pairs) /
      tp;
  const double bytes = WeightBytesPerGpu() + (w.kv_read_tokens + w.kv_write_tokens) *
                                                 static_cast<double>(KvBytesPerTokenPerGpu());
  return Seconds(std::max(flops / gpu_.bf16_flops, bytes / gpu_.hbm_bandwidth));
}

StepCost PerfModel::Cost(const std::vector<SeqWork>& batch) const { return CostOf(Reduce(batch)); }

Duration PerfModel::StepTime(const std::vector<SeqWork>& batch) const {
  return Seconds(Cost(batch).TotalSeconds());
}

Duration PerfModel::PrefillTime(int new_tokens, int64_t context_before) const {
  return StepTime({SeqWork{new_tokens, context_before, true}});
}

namespace {
// Decode of `batch` sequences: the sums only depend on the total context.
template <typename W>
W DecodeWork(int batch, int64_t total_context_tokens) {
  W w;
  const double b = std::max(batch, 0);
  const double c = static_cast<double>(std::max<int64_t>(total_context_tokens, 0));
  w.tokens = b;
  w.sequences = b;
  w.sampled = b;
  w.attention_pairs = c + b;
  w.kv_read_tokens = c;
  w.kv_write_tokens = b;
  return w;
}
}  // namespace

Duration PerfModel::DecodeStepTime(int batch, int64_t total_context_tokens) const {
  return Seconds(CostOf(DecodeWork<Work>(batch, total_context_tokens)).TotalSeconds());
}

Duration PerfModel::StepFloorTime(const std::vector<SeqWork>& batch) const {
  return FloorOf(Reduce(batch));
}

Duration PerfModel::PrefillFloorTime(int new_tokens, int64_t context_before) const {
  return StepFloorTime({SeqWork{new_tokens, context_before, true}});
}

Duration PerfModel::DecodeFloorTime(int batch, int64_t total_context_tokens) const {
  return FloorOf(DecodeWork<Work>(batch, total_context_tokens));
}

Duration PerfModel::KvTransferTime(int64_t bytes) const {
  if (bytes <= 0) return Duration{0};
  const double link = gpu_.nvlink_bandwidth / 2 * calibration_.nvlink_efficiency;
  return Seconds(static_cast<double>(bytes) / tensor_parallel_ / link);
}

}  // namespace pdpool::agent
