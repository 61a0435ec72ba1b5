// CudaBackend: the bf16 Llama forward of the `cuda` backend (see cuda_backend.h). A step is
// planned on the host (token rows, cache slots, per-sequence metadata, attention work lists),
// copied to fixed device buffers, and run on one stream: embedding, then per layer RMSNorm →
// QKV GEMM → RoPE + KV write → decode and/or prefill attention → O GEMM → residual + RMSNorm →
// gate/up GEMM → SwiGLU → down GEMM, then the sampled rows' final norm, LM head and sampler.
// Prefill attention runs on the wgmma kernel on compute capability 9.0, the mma.sync one elsewhere.
// Steps of at most 8 rows may run their GEMMs on the skinny GEMM instead of cuBLAS (SwiGLU then
// fused into the gate/up one): per projection and row count, whichever measured faster at load
// (ChooseDecodeGemms), unless the options force one.
// Decode-only steps replay a CUDA graph captured for their batch-size bucket (padded with
// sequences on a scratch block), so a step costs one graph launch instead of hundreds of
// kernel launches.
#include "agent/engine/cuda/cuda_backend.h"

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <map>
#include <numeric>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "agent/engine/cuda/cuda_check.h"
#include "agent/engine/cuda/cuda_libraries.h"
#include "agent/engine/cuda/device_memory.h"
#include "agent/engine/cuda/gpu_uuid.h"
#include "agent/engine/cuda/kernels.h"
#include "agent/engine/cuda/kv_cache_layout.h"
#include "agent/engine/step_validation.h"
#include "agent/model/rope.h"
#include "agent/model/safetensors.h"
#include "agent/model/weights.h"
#include "common/log.h"

namespace pdpool::agent {
namespace {

using cuda::bf16;
using cuda::DeviceBuffer;
using cuda::PinnedBuffer;

Status CublasStatus(const cuda::CublasApi& blas, cublasStatus_t status, const char* call,
                    int line) {
  return Status::Internal(std::string(call) + " failed at cuda_backend.cc:" + std::to_string(line) +
                          ": " + blas.GetStatusName(status) + " (" + blas.GetStatusString(status) +
                          ")");
}

// In CudaBackend members only (uses blas_).
#define PDPOOL_CUBLAS_RETURN_IF_ERROR(call)                                \
  do {                                                                     \
    if (cublasStatus_t pdpool_cublas_status_ = (call);                     \
        pdpool_cublas_status_ != CUBLAS_STATUS_SUCCESS) {                  \
      return CublasStatus(*blas_, pdpool_cublas_status_, #call, __LINE__); \
    }                                                                      \
  } while (0)

#define PDPOOL_RETURN_IF_NOT_OK(expr)                                           \
  do {                                                                          \
    if (::pdpool::Status pdpool_s_ = (expr); !pdpool_s_.ok()) return pdpool_s_; \
  } while (0)

// Decode graphs are captured for these batch sizes (the smallest bucket ≥ the batch is used).
constexpr int kGraphBuckets[] = {1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256};
constexpr size_t kCublasWorkspaceBytes = size_t{32} << 20;

size_t AlignUp(size_t n) { return (n + 255) / 256 * 256; }

// Two CUDA events that time work on a stream, destroyed with the object.
struct TimingEvents {
  cudaEvent_t start = nullptr;
  cudaEvent_t stop = nullptr;
  Status Create() {
    PDPOOL_CUDA_RETURN_IF_ERROR(cudaEventCreate(&start));
    PDPOOL_CUDA_RETURN_IF_ERROR(cudaEventCreate(&stop));
    return Status::Ok();
  }
  ~TimingEvents() {
    if (start != nullptr) cudaEventDestroy(start);
    if (stop != nullptr) cudaEventDestroy(stop);
  }
};

// --prefill-attention auto times both prefill kernels on a causal prompt of at most this many
// tokens, and refuses a wgmma output whose relative L2 difference from mma.sync's exceeds the
// bound (bf16 rounding of the outputs gives about 3e-3).
constexpr int kPrefillChoiceTokens = 4096;
constexpr double kPrefillKernelsAgree = 1e-2;

// Device addresses of one layer's weights (views into the one weight allocation).
struct LayerWeightsDevice {
  bf16* attn_norm = nullptr;
  bf16* wqkv = nullptr;  // [q heads + 2·kv heads)·head_dim, hidden]: q_proj, k_proj, v_proj rows
  bf16* wo = nullptr;
  bf16* mlp_norm = nullptr;
  bf16* w_gate_up = nullptr;  // [2·intermediate, hidden]: gate_proj rows, then up_proj rows
  bf16* w_down = nullptr;
};

// The projections of a forward, for choosing cuBLAS or the skinny GEMM per projection.
enum Projection { kQkvProjection, kOProjection, kGateUpProjection, kDownProjection, kLmHead };
constexpr int kNumProjections = 5;
constexpr const char* kProjectionNames[kNumProjections] = {"qkv", "o", "gate_up", "down",
                                                           "lm_head"};
// Row counts at which ChooseDecodeGemms times both; other counts take the next one up.
constexpr int kTimedRows[] = {1, 2, 4, 8};

// Per-step arrays at fixed offsets, mirrored in pinned host memory and on the device (fixed
// device addresses are what lets a captured graph be replayed with new contents).
struct StepArrays {
  size_t tokens = 0, positions = 0, slots = 0, meta = 0, block_tables = 0, decode_index = 0,
         tiles = 0, sample_rows = 0, sample_params = 0, next_tokens = 0, bytes = 0;
};

// The host-side plan of one step.
struct StepPlan {
  int num_tokens = 0;
  int num_seqs = 0;
  int num_decode = 0;
  int num_tiles = 0;
  int num_samples = 0;
  int num_splits = 1;
  int block_table_entries = 0;
  std::vector<int> sample_sequence;  // batch index of each sampled row; -1: padding, dropped
};

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(CudaBackendOptions options) : options_(std::move(options)) {}

  ~CudaBackend() override {
    cudaSetDevice(options_.device);
    if (stream_ != nullptr) cudaStreamSynchronize(stream_);
    for (auto& [bucket, exec] : graphs_) cudaGraphExecDestroy(exec);
    if (cublas_ != nullptr) blas_->Destroy(cublas_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  Status Init() {
    const ModelConfig& c = options_.model;
    PDPOOL_RETURN_IF_NOT_OK(c.Validate());
    PDPOOL_RETURN_IF_NOT_OK(cuda::CheckAttentionShape(c.head_dim, c.num_heads, c.num_kv_heads));
    if (c.hidden_size % 8 != 0 || c.intermediate_size % 8 != 0) {
      return Status::InvalidArgument(
          "cuda backend: hidden_size " + std::to_string(c.hidden_size) + " and intermediate_size " +
          std::to_string(c.intermediate_size) +
          " must be multiples of 8 (the kernels move rows in 16-byte pieces)");
    }
    if (options_.block_size < 1 || options_.block_size > 1024) {
      return Status::InvalidArgument("cuda backend: block_size " +
                                     std::to_string(options_.block_size) + " must be 1..1024");
    }
    if (options_.max_batched_tokens < 1 || options_.max_sequences < 1) {
      return Status::InvalidArgument(
          "cuda backend: max_batched_tokens and max_sequences must be positive");
    }
    int devices = 0;
    if (const cudaError_t e = cudaGetDeviceCount(&devices); e != cudaSuccess) {
      return Status::Unavailable(std::string("cuda backend: no usable NVIDIA GPU here (") +
                                 cudaGetErrorName(e) + ": " + cudaGetErrorString(e) + ")");
    }
    if (options_.device < 0 || options_.device >= devices) {
      return Status::InvalidArgument("cuda backend: device " + std::to_string(options_.device) +
                                     " does not exist (" + std::to_string(devices) + " visible)");
    }
    PDPOOL_CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
    cudaDeviceProp prop{};
    PDPOOL_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, options_.device));
    if (prop.major < 8) {
      return Status::InvalidArgument(std::string("cuda backend: ") + prop.name +
                                     " has compute capability " + std::to_string(prop.major) + "." +
                                     std::to_string(prop.minor) +
                                     "; bf16 tensor cores need 8.0 or newer (built for 9.0)");
    }
    num_sms_ = prop.multiProcessorCount;
    const bool wgmma_runs = cuda::WgmmaPrefillAttentionSupported(prop.major, prop.minor);
    if (options_.prefill_attention == PrefillAttention::kWgmma && !wgmma_runs) {
      return Status::InvalidArgument(std::string("cuda backend: prefill attention wgmma needs "
                                                 "compute capability 9.0; ") +
                                     prop.name + " has " + std::to_string(prop.major) + "." +
                                     std::to_string(prop.minor) + " (use mma or auto)");
    }
    wgmma_prefill_ = options_.prefill_attention != PrefillAttention::kMma && wgmma_runs;
    prefill_tile_rows_ = wgmma_prefill_ ? cuda::kWgmmaPrefillTileRows : cuda::kPrefillTileRows;
    device_name_ = prop.name;
    region_.device = options_.device;
    region_.device_uuid = cuda::GpuUuidString(prop.uuid);
    max_model_len_ = options_.max_model_len > 0 ? options_.max_model_len
                                                : std::min(c.max_position_embeddings, 32768);
    auto occupancy = cuda::DecodeAttentionBlocksPerSm(c.head_dim);
    if (!occupancy.ok()) return occupancy.status();
    decode_blocks_per_sm_ = *occupancy;
    PDPOOL_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    auto blas = cuda::LoadCublas();
    if (!blas.ok()) return Status(blas.status().code(), "cuda backend: " + blas.status().message());
    blas_ = *blas;
    PDPOOL_CUBLAS_RETURN_IF_ERROR(blas_->Create(&cublas_));
    PDPOOL_CUBLAS_RETURN_IF_ERROR(blas_->SetStream(cublas_, stream_));
    PDPOOL_RETURN_IF_NOT_OK(cublas_workspace_.Allocate(kCublasWorkspaceBytes, "cuBLAS workspace"));
    PDPOOL_CUBLAS_RETURN_IF_ERROR(
        blas_->SetWorkspace(cublas_, cublas_workspace_.get(), kCublasWorkspaceBytes));
    PDPOOL_RETURN_IF_NOT_OK(LoadWeights());
    PDPOOL_RETURN_IF_NOT_OK(BuildRopeTable());
    PDPOOL_RETURN_IF_NOT_OK(AllocateActivations());
    PDPOOL_RETURN_IF_NOT_OK(ChooseDecodeGemms());
    PDPOOL_RETURN_IF_NOT_OK(AllocateKvCache());
    PDPOOL_RETURN_IF_NOT_OK(ChoosePrefillAttention());
    PDPOOL_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
    return Status::Ok();
  }

  std::string_view name() const override { return "cuda"; }
  const ModelConfig& model() const override { return options_.model; }
  const KvLayout& kv_layout() const override { return layout_; }
  const DeviceKvRegion* device_kv() const override { return &region_; }

  StatusOr<StepResult> Step(const StepBatch& batch) override {
    PDPOOL_RETURN_IF_NOT_OK(ValidateStepBatch("cuda backend", options_.model, layout_, batch));
    PDPOOL_CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
    StepResult result;
    result.next_tokens.assign(batch.sequences.size(), -1);
    if (batch.sequences.empty()) return result;
    auto plan = PlanStep(batch);
    if (!plan.ok()) return plan.status();
    if (Status s = RunStep(&*plan); !s.ok()) return s;
    const auto* tokens = Host<int32_t>(arrays_.next_tokens);
    for (size_t j = 0; j < plan->sample_sequence.size(); ++j) {
      if (plan->sample_sequence[j] >= 0) {
        result.next_tokens[static_cast<size_t>(plan->sample_sequence[j])] = tokens[j];
      }
    }
    if (batch.want_logits) {
      const ModelConfig& c = options_.model;
      result.logits.resize(batch.sequences.size());
      std::vector<float> host(static_cast<size_t>(plan->sample_sequence.size()) * c.vocab_size);
      PDPOOL_CUDA_RETURN_IF_ERROR(cudaMemcpy(host.data(), logits_.get(),
                                             host.size() * sizeof(float), cudaMemcpyDeviceToHost));
      for (size_t j = 0; j < plan->sample_sequence.size(); ++j) {
        if (plan->sample_sequence[j] < 0) continue;
        result.logits[static_cast<size_t>(plan->sample_sequence[j])].assign(
            host.begin() + static_cast<int64_t>(j) * c.vocab_size,
            host.begin() + static_cast<int64_t>(j + 1) * c.vocab_size);
      }
    }
    return result;
  }

  // Wire form of a block: its filled slots of every (layer, K/V, head) tile, in block order:
  // [layer][K, V][kv_head][tokens][head_dim] bf16.
  Status ExportKvBlock(int32_t block, int32_t tokens, std::string* out) override {
    PDPOOL_RETURN_IF_NOT_OK(ValidateKvBlockArgs("cuda backend", layout_, block, tokens));
    PDPOOL_CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
    const size_t row = static_cast<size_t>(tokens) * geometry_.head_dim * sizeof(bf16);
    const size_t rows = static_cast<size_t>(geometry_.num_layers) * 2 * geometry_.num_kv_heads;
    out->resize(row * rows);
    const char* src = kv_cache_.get<char>() + static_cast<size_t>(region_.block_bytes) * block;
    PDPOOL_CUDA_RETURN_IF_ERROR(cudaMemcpy2DAsync(out->data(), row, src,
                                                  geometry_.head_stride * sizeof(bf16), row, rows,
                                                  cudaMemcpyDeviceToHost, stream_));
    PDPOOL_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
    return Status::Ok();
  }

  Status ImportKvBlock(int32_t block, int32_t tokens, std::string_view data) override {
    PDPOOL_RETURN_IF_NOT_OK(ValidateKvBlockArgs("cuda backend", layout_, block, tokens));
    const size_t row = static_cast<size_t>(tokens) * geometry_.head_dim * sizeof(bf16);
    const size_t rows = static_cast<size_t>(geometry_.num_layers) * 2 * geometry_.num_kv_heads;
    if (data.size() != row * rows) {
      return Status::InvalidArgument(
          "cuda backend: KV block payload for " + std::to_string(tokens) + " tokens must be " +
          std::to_string(row * rows) + " bytes, got " + std::to_string(data.size()));
    }
    PDPOOL_CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
    char* dst = kv_cache_.get<char>() + static_cast<size_t>(region_.block_bytes) * block;
    PDPOOL_CUDA_RETURN_IF_ERROR(cudaMemcpy2DAsync(dst, geometry_.head_stride * sizeof(bf16),
                                                  data.data(), row, row, rows,
                                                  cudaMemcpyHostToDevice, stream_));
    PDPOOL_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
    return Status::Ok();
  }

 private:
  // ---- setup ----

  // Fused layouts: one [q; k; v] and one [gate; up] matrix per layer, so each is one GEMM.
  struct WeightSlot {
    bf16* dst = nullptr;
    int64_t elements = 0;
  };

  // One allocation for every tensor, in checkpoint order, so that q/k/v form one fused QKV
  // matrix and gate/up one gate/up matrix.
  StatusOr<std::map<std::string, WeightSlot>> PlanWeights() {
    const ModelConfig& c = options_.model;
    int64_t total = 0;
    std::vector<std::pair<std::string, int64_t>> sizes;
    for (const WeightTensorShape& t : WeightTensorShapes(c)) {
      sizes.emplace_back(t.name, t.NumElements());
      total += t.NumElements();
    }
    PDPOOL_RETURN_IF_NOT_OK(
        weights_.Allocate(static_cast<size_t>(total) * sizeof(bf16), "model weights"));
    std::map<std::string, WeightSlot> slots;
    bf16* next = weights_.get<bf16>();
    for (const auto& [name, n] : sizes) {
      slots[name] = WeightSlot{next, n};
      next += n;
    }
    auto at = [&](const std::string& name) { return slots[name].dst; };
    layers_.resize(static_cast<size_t>(c.num_layers));
    for (int i = 0; i < c.num_layers; ++i) {
      const std::string p = "model.layers." + std::to_string(i) + ".";
      LayerWeightsDevice& l = layers_[static_cast<size_t>(i)];
      l.attn_norm = at(p + "input_layernorm.weight");
      l.wqkv = at(p + "self_attn.q_proj.weight");
      l.wo = at(p + "self_attn.o_proj.weight");
      l.mlp_norm = at(p + "post_attention_layernorm.weight");
      l.w_gate_up = at(p + "mlp.gate_proj.weight");
      l.w_down = at(p + "mlp.down_proj.weight");
    }
    embed_ = at("model.embed_tokens.weight");
    final_norm_ = at("model.norm.weight");
    lm_head_ = c.tie_word_embeddings ? embed_ : at("lm_head.weight");
    return slots;
  }

  Status LoadWeights() {
    auto slots = PlanWeights();
    if (!slots.ok()) return slots.status();
    const std::string& spec = options_.weights;
    if (spec == "dummy" || spec.rfind("dummy:", 0) == 0) {
      uint64_t seed = 0;
      if (spec.size() > 6) {
        char* end = nullptr;
        seed = std::strtoull(spec.c_str() + 6, &end, 10);
        if (end == nullptr || *end != '\0') {
          return Status::InvalidArgument("cuda backend: weights \"" + spec +
                                         "\": want dummy:<seed>");
        }
      }
      for (const DummyTensorSpec& t : DummyWeightSpecs(options_.model, seed)) {
        const WeightSlot& slot = (*slots)[t.name];
        PDPOOL_RETURN_IF_NOT_OK(
            cuda::LaunchDummyInit(slot.dst, slot.elements, t.stream, t.bound, t.center, stream_));
      }
      return Status::Ok();
    }
    // A checkpoint: one tensor at a time, as bf16, through one host buffer (the largest
    // tensor, about 1 GB for Llama-3's embedding), never the whole model in host memory.
    auto checkpoint = SafetensorsCheckpoint::Open(spec);
    if (!checkpoint.ok()) return checkpoint.status();
    std::vector<uint16_t> host;
    for (const WeightTensorShape& t : WeightTensorShapes(options_.model)) {
      PDPOOL_RETURN_IF_NOT_OK(checkpoint->ReadBf16(t.name, t.shape, &host));
      const WeightSlot& slot = (*slots)[t.name];
      PDPOOL_CUDA_RETURN_IF_ERROR(cudaMemcpy(slot.dst, host.data(), host.size() * sizeof(uint16_t),
                                             cudaMemcpyHostToDevice));
    }
    return Status::Ok();
  }

  // cos/sin for every position the model allows, from the same double-precision frequencies
  // as the cpu backend.
  Status BuildRopeTable() {
    const ModelConfig& c = options_.model;
    const std::vector<double> inv_freq = RopeInverseFrequencies(c);
    const int half = c.head_dim / 2;
    const int64_t positions = c.max_position_embeddings;
    std::vector<float2> table(static_cast<size_t>(positions * half));
    for (int64_t p = 0; p < positions; ++p) {
      for (int i = 0; i < half; ++i) {
        const double angle = static_cast<double>(p) * inv_freq[static_cast<size_t>(i)];
        table[static_cast<size_t>(p * half + i)] =
            make_float2(static_cast<float>(std::cos(angle)), static_cast<float>(std::sin(angle)));
      }
    }
    PDPOOL_RETURN_IF_NOT_OK(rope_.Allocate(table.size() * sizeof(float2), "RoPE table"));
    PDPOOL_CUDA_RETURN_IF_ERROR(cudaMemcpy(rope_.get(), table.data(), table.size() * sizeof(float2),
                                           cudaMemcpyHostToDevice));
    return Status::Ok();
  }

  // Splits of the decode attention for a batch of `seqs` sequences: enough blocks for about two
  // full waves of the GPU (every SM holding decode_blocks_per_sm_ of them), at most 64.
  int DecodeSplits(int seqs) const {
    const int blocks = seqs * options_.model.num_kv_heads;
    const int wanted = 2 * decode_blocks_per_sm_ * num_sms_;
    return std::clamp((wanted + blocks - 1) / blocks, 1, 64);
  }

  Status AllocateActivations() {
    const ModelConfig& c = options_.model;
    const int64_t n = options_.max_batched_tokens, s = options_.max_sequences;
    const int64_t h = c.hidden_size, q = int64_t{c.num_heads} * c.head_dim,
                  kv = int64_t{c.num_kv_heads} * c.head_dim, inter = c.intermediate_size;
    const int64_t rows = std::max(n, s);
    PDPOOL_RETURN_IF_NOT_OK(x_.Allocate(sizeof(float) * rows * h, "residual stream"));
    PDPOOL_RETURN_IF_NOT_OK(xn_.Allocate(sizeof(bf16) * rows * h, "normalized activations"));
    PDPOOL_RETURN_IF_NOT_OK(qkv_.Allocate(sizeof(bf16) * rows * (q + 2 * kv), "QKV"));
    PDPOOL_RETURN_IF_NOT_OK(q_.Allocate(sizeof(bf16) * rows * q, "rotated queries"));
    PDPOOL_RETURN_IF_NOT_OK(attn_.Allocate(sizeof(bf16) * rows * q, "attention output"));
    PDPOOL_RETURN_IF_NOT_OK(delta_.Allocate(sizeof(bf16) * rows * h, "residual deltas"));
    PDPOOL_RETURN_IF_NOT_OK(gate_up_.Allocate(sizeof(bf16) * rows * 2 * inter, "gate/up"));
    PDPOOL_RETURN_IF_NOT_OK(act_.Allocate(sizeof(bf16) * rows * inter, "SwiGLU output"));
    PDPOOL_RETURN_IF_NOT_OK(xs_.Allocate(sizeof(float) * s * h, "sampled rows"));
    PDPOOL_RETURN_IF_NOT_OK(xsn_.Allocate(sizeof(bf16) * s * h, "sampled rows, normalized"));
    PDPOOL_RETURN_IF_NOT_OK(logits_.Allocate(sizeof(float) * s * c.vocab_size, "logits"));
    PDPOOL_RETURN_IF_NOT_OK(
        sample_weights_.Allocate(sizeof(float) * s * c.vocab_size, "sampling weights"));
    int64_t partial = 0;
    for (int seqs = 1; seqs <= options_.max_sequences; ++seqs) {
      partial = std::max(
          partial, cuda::DecodePartialFloats(seqs, c.num_heads, DecodeSplits(seqs), c.head_dim));
    }
    PDPOOL_RETURN_IF_NOT_OK(partial_.Allocate(sizeof(float) * partial, "decode partials"));

    // Step arrays: capacities, then one pinned mirror and one device copy.
    const int64_t max_blocks_per_seq =
        (max_model_len_ + options_.block_size - 1) / options_.block_size;
    block_table_capacity_ = s * max_blocks_per_seq + 1;
    // Room for the smaller tiles: ChoosePrefillAttention may still move to mma.sync's.
    tile_capacity_ = n / std::min(cuda::kPrefillTileRows, cuda::kWgmmaPrefillTileRows) + s;
    size_t at = 0;
    auto reserve = [&](size_t bytes) {
      const size_t offset = at;
      at += AlignUp(bytes);
      return offset;
    };
    arrays_.tokens = reserve(sizeof(int32_t) * rows);
    arrays_.positions = reserve(sizeof(int32_t) * rows);
    arrays_.slots = reserve(sizeof(int64_t) * rows);
    arrays_.meta = reserve(sizeof(cuda::SeqMeta) * s);
    arrays_.block_tables = reserve(sizeof(int32_t) * block_table_capacity_);
    arrays_.decode_index = reserve(sizeof(int32_t) * s);
    arrays_.tiles = reserve(sizeof(int2) * tile_capacity_);
    arrays_.sample_rows = reserve(sizeof(int32_t) * s);
    arrays_.sample_params = reserve(sizeof(cuda::SampleRowParams) * s);
    arrays_.next_tokens = reserve(sizeof(int32_t) * s);
    arrays_.bytes = at;
    PDPOOL_RETURN_IF_NOT_OK(staging_.Allocate(arrays_.bytes, "step arrays (host)"));
    PDPOOL_RETURN_IF_NOT_OK(step_arrays_.Allocate(arrays_.bytes, "step arrays"));
    return Status::Ok();
  }

  Status AllocateKvCache() {
    const ModelConfig& c = options_.model;
    geometry_ =
        cuda::MakeKvCacheGeometry(c.num_layers, c.num_kv_heads, c.head_dim, options_.block_size);
    const int64_t block_bytes = geometry_.block_stride * static_cast<int64_t>(sizeof(bf16));
    int64_t blocks = options_.num_blocks;
    if (blocks <= 0) {
      size_t free_bytes = 0, total_bytes = 0;
      PDPOOL_CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_bytes, &total_bytes));
      const double keep =
          (1.0 - options_.gpu_memory_utilization) * static_cast<double>(total_bytes);
      const double budget = static_cast<double>(free_bytes) - keep;
      blocks = budget > 0 ? static_cast<int64_t>(budget / static_cast<double>(block_bytes)) - 1 : 0;
      if (blocks < 1) {
        return Status::Unavailable(
            "cuda backend: no GPU memory left for the KV cache after the weights and "
            "activations (" +
            std::to_string(free_bytes >> 20) + " MiB free of " + std::to_string(total_bytes >> 20) +
            " MiB, gpu_memory_utilization " + std::to_string(options_.gpu_memory_utilization) +
            ")");
      }
    }
    blocks = std::min<int64_t>(blocks, (int64_t{1} << 31) - 2);
    // One more block than the scheduler sees: padded graph rows write their KV there.
    PDPOOL_RETURN_IF_NOT_OK(
        kv_cache_.Allocate(static_cast<size_t>(block_bytes * (blocks + 1)), "KV cache"));
    scratch_block_ = static_cast<int32_t>(blocks);
    layout_.block_size = options_.block_size;
    layout_.num_blocks = static_cast<int>(blocks);
    layout_.num_layers = c.num_layers;
    layout_.num_kv_heads = c.num_kv_heads;
    layout_.head_dim = c.head_dim;
    layout_.bytes_per_element = 2;
    region_.base = reinterpret_cast<uintptr_t>(kv_cache_.get());
    region_.block_bytes = block_bytes;
    region_.num_blocks = static_cast<int32_t>(blocks);
    region_.block_size = options_.block_size;
    return Status::Ok();
  }

  // ---- a step ----

  template <typename T>
  T* Host(size_t offset) {
    return reinterpret_cast<T*>(staging_.get<char>() + offset);
  }
  template <typename T>
  T* Dev(size_t offset) const {
    return reinterpret_cast<T*>(step_arrays_.get<char>() + offset);
  }

  // Fills the pinned step arrays; for a decode-only batch that a graph will run, pads it to
  // `pad_to` sequences on the scratch block.
  StatusOr<StepPlan> PlanStep(const StepBatch& batch) {
    const int bs = options_.block_size;
    StepPlan plan;
    plan.num_seqs = static_cast<int>(batch.sequences.size());
    bool decode_only = true;
    for (const SequenceStep& seq : batch.sequences) {
      plan.num_tokens += static_cast<int>(seq.tokens.size());
      decode_only = decode_only && seq.tokens.size() == 1;
    }
    if (plan.num_tokens > options_.max_batched_tokens || plan.num_seqs > options_.max_sequences) {
      return Status::InvalidArgument("cuda backend: a step of " + std::to_string(plan.num_tokens) +
                                     " tokens in " + std::to_string(plan.num_seqs) +
                                     " sequences is beyond max_batched_tokens " +
                                     std::to_string(options_.max_batched_tokens) +
                                     " / max_sequences " + std::to_string(options_.max_sequences));
    }
    int padded = plan.num_seqs;
    use_graph_ = false;
    if (decode_only && options_.cuda_graphs) {
      for (int bucket : kGraphBuckets) {
        if (bucket >= plan.num_seqs && bucket <= options_.max_sequences &&
            bucket <= options_.max_batched_tokens) {
          padded = bucket;
          use_graph_ = true;
          break;
        }
      }
    }
    auto* tokens = Host<int32_t>(arrays_.tokens);
    auto* positions = Host<int32_t>(arrays_.positions);
    auto* slots = Host<int64_t>(arrays_.slots);
    auto* meta = Host<cuda::SeqMeta>(arrays_.meta);
    auto* tables = Host<int32_t>(arrays_.block_tables);
    auto* decode = Host<int32_t>(arrays_.decode_index);
    auto* tiles = Host<int2>(arrays_.tiles);
    auto* sample_rows = Host<int32_t>(arrays_.sample_rows);
    auto* params = Host<cuda::SampleRowParams>(arrays_.sample_params);
    int row = 0, table_at = 0;
    for (int i = 0; i < plan.num_seqs; ++i) {
      const SequenceStep& seq = batch.sequences[static_cast<size_t>(i)];
      const int n = static_cast<int>(seq.tokens.size());
      const int context = seq.start_position + n;
      const int needed = (context + bs - 1) / bs;
      if (table_at + needed > block_table_capacity_ - 1) {
        return Status::InvalidArgument(
            "cuda backend: the step's block tables exceed max_sequences × max_model_len (" +
            std::to_string(max_model_len_) + ")");
      }
      std::copy_n(seq.block_table.begin(), needed, tables + table_at);
      meta[i] = cuda::SeqMeta{row, n, context, table_at};
      for (int t = 0; t < n; ++t) {
        const int pos = seq.start_position + t;
        tokens[row + t] = seq.tokens[static_cast<size_t>(t)];
        positions[row + t] = pos;
        slots[row + t] = int64_t{seq.block_table[static_cast<size_t>(pos / bs)]} * bs + pos % bs;
      }
      if (n == 1) {
        decode[plan.num_decode++] = i;
      } else {
        for (int t0 = 0; t0 < n; t0 += prefill_tile_rows_) tiles[plan.num_tiles++] = {i, t0};
      }
      // A graph samples every row (its shape is fixed at capture); a row the batch did not ask
      // for is sampled greedily and dropped (sample_sequence -1).
      if (seq.sample || use_graph_) {
        sample_rows[plan.num_samples] = row + n - 1;
        params[plan.num_samples] =
            seq.sample ? cuda::SampleRowParams{static_cast<float>(seq.sampling.temperature),
                                               static_cast<float>(seq.sampling.top_p),
                                               seq.sampling.seed, seq.sample_index, 0}
                       : cuda::SampleRowParams{};
        plan.sample_sequence.push_back(seq.sample ? i : -1);
        ++plan.num_samples;
      }
      row += n;
      table_at += needed;
    }
    if (use_graph_) {
      // Padding rows: token 0 at position 0 of the scratch block, sampled greedily, ignored.
      tables[table_at] = scratch_block_;
      for (int i = plan.num_seqs; i < padded; ++i) {
        meta[i] = cuda::SeqMeta{row, 1, 1, table_at};
        tokens[row] = 0;
        positions[row] = 0;
        slots[row] = int64_t{scratch_block_} * bs;
        decode[plan.num_decode++] = i;
        sample_rows[plan.num_samples] = row;
        params[plan.num_samples] = cuda::SampleRowParams{};
        plan.sample_sequence.push_back(-1);
        ++plan.num_samples;
        ++row;
      }
      table_at += 1;
      plan.num_seqs = padded;
      plan.num_tokens = padded;
    }
    plan.block_table_entries = table_at;
    plan.num_splits = DecodeSplits(std::max(plan.num_decode, 1));
    return plan;
  }

  Status Upload(const StepPlan& plan) {
    auto copy = [&](size_t offset, size_t bytes) -> Status {
      if (bytes == 0) return Status::Ok();
      PDPOOL_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(step_arrays_.get<char>() + offset,
                                                  staging_.get<char>() + offset, bytes,
                                                  cudaMemcpyHostToDevice, stream_));
      return Status::Ok();
    };
    const size_t n = static_cast<size_t>(plan.num_tokens), s = static_cast<size_t>(plan.num_seqs);
    PDPOOL_RETURN_IF_NOT_OK(copy(arrays_.tokens, n * sizeof(int32_t)));
    PDPOOL_RETURN_IF_NOT_OK(copy(arrays_.positions, n * sizeof(int32_t)));
    PDPOOL_RETURN_IF_NOT_OK(copy(arrays_.slots, n * sizeof(int64_t)));
    PDPOOL_RETURN_IF_NOT_OK(copy(arrays_.meta, s * sizeof(cuda::SeqMeta)));
    PDPOOL_RETURN_IF_NOT_OK(copy(arrays_.block_tables,
                                 static_cast<size_t>(plan.block_table_entries) * sizeof(int32_t)));
    PDPOOL_RETURN_IF_NOT_OK(
        copy(arrays_.decode_index, static_cast<size_t>(plan.num_decode) * sizeof(int32_t)));
    PDPOOL_RETURN_IF_NOT_OK(
        copy(arrays_.tiles, static_cast<size_t>(plan.num_tiles) * sizeof(int2)));
    PDPOOL_RETURN_IF_NOT_OK(
        copy(arrays_.sample_rows, static_cast<size_t>(plan.num_samples) * sizeof(int32_t)));
    PDPOOL_RETURN_IF_NOT_OK(copy(arrays_.sample_params, static_cast<size_t>(plan.num_samples) *
                                                            sizeof(cuda::SampleRowParams)));
    return Status::Ok();
  }

  // y[rows, out] = x[rows, in] · Wᵀ with W [out, in] row-major (Hugging Face layout), bf16
  // inputs, fp32 accumulation; y bf16, or fp32 when y_fp32.
  Status Gemm(const bf16* x, const bf16* w, void* y, int rows, int out, int in, bool y_fp32) {
    const float alpha = 1.0f, beta = 0.0f;
    PDPOOL_CUBLAS_RETURN_IF_ERROR(blas_->GemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, out, rows, in,
                                                &alpha, w, CUDA_R_16BF, in, x, CUDA_R_16BF, in,
                                                &beta, y, y_fp32 ? CUDA_R_32F : CUDA_R_16BF, out,
                                                CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return Status::Ok();
  }

  // One projection of layer `layer` (the LM head ignores it) over `rows` rows, from its fixed
  // input buffer to its fixed output buffer: the gate/up projection writes the SwiGLU output.
  // On the skinny GEMM when `skinny`, on cuBLAS otherwise.
  Status Project(Projection p, int layer, int rows, bool skinny) {
    const ModelConfig& c = options_.model;
    const int h = c.hidden_size, q = c.num_heads * c.head_dim,
              kv = c.num_kv_heads * c.head_dim, inter = c.intermediate_size;
    const LayerWeightsDevice& w = layers_[static_cast<size_t>(layer)];
    using cuda::SkinnyEpilogue;
    switch (p) {
      case kQkvProjection:
        return skinny ? cuda::LaunchSkinnyGemm(xn_.get<bf16>(), w.wqkv, qkv_.get(), rows,
                                               q + 2 * kv, h, SkinnyEpilogue::kBf16, stream_)
                      : Gemm(xn_.get<bf16>(), w.wqkv, qkv_.get(), rows, q + 2 * kv, h, false);
      case kOProjection:
        return skinny ? cuda::LaunchSkinnyGemm(attn_.get<bf16>(), w.wo, delta_.get(), rows, h, q,
                                               SkinnyEpilogue::kBf16, stream_)
                      : Gemm(attn_.get<bf16>(), w.wo, delta_.get(), rows, h, q, false);
      case kGateUpProjection:
        if (skinny) {
          return cuda::LaunchSkinnyGemm(xn_.get<bf16>(), w.w_gate_up, act_.get(), rows, inter, h,
                                        SkinnyEpilogue::kSwiGlu, stream_);
        }
        PDPOOL_RETURN_IF_NOT_OK(
            Gemm(xn_.get<bf16>(), w.w_gate_up, gate_up_.get(), rows, 2 * inter, h, false));
        return cuda::LaunchSwiGlu(gate_up_.get<bf16>(), act_.get<bf16>(), rows, inter, stream_);
      case kDownProjection:
        return skinny ? cuda::LaunchSkinnyGemm(act_.get<bf16>(), w.w_down, delta_.get(), rows, h,
                                               inter, SkinnyEpilogue::kBf16, stream_)
                      : Gemm(act_.get<bf16>(), w.w_down, delta_.get(), rows, h, inter, false);
      case kLmHead:
        return skinny ? cuda::LaunchSkinnyGemm(xsn_.get<bf16>(), lm_head_, logits_.get(), rows,
                                               c.vocab_size, h, SkinnyEpilogue::kFloat, stream_)
                      : Gemm(xsn_.get<bf16>(), lm_head_, logits_.get(), rows, c.vocab_size, h,
                             true);
    }
    return Status::Internal("cuda backend: unknown projection");
  }

  // Whether projection p of a step with `rows` rows runs on the skinny GEMM.
  bool Skinny(Projection p, int rows) const {
    return rows <= cuda::kSkinnyGemmMaxRows && skinny_[static_cast<size_t>(rows)][p];
  }

  // Fills skinny_: per projection and row count up to kSkinnyGemmMaxRows, cuBLAS or the skinny
  // GEMM, as options_.decode_gemm says. For kAuto both run over every layer's weights (what a
  // decode step reads) at each of kTimedRows, twice after a warm-up, and the faster is kept; the
  // times are logged. Inputs are zeroed first (the buffers are otherwise uninitialized).
  Status ChooseDecodeGemms() {
    const int most_rows = std::min({cuda::kSkinnyGemmMaxRows, options_.max_batched_tokens,
                                    std::max(options_.max_sequences, 1)});
    // Init checked the skinny GEMM's shape limits (widths multiples of 8; cudaMalloc aligns).
    for (auto& row : skinny_) row.fill(false);
    if (options_.decode_gemm == DecodeGemm::kCublas) return Status::Ok();
    if (options_.decode_gemm == DecodeGemm::kSkinny) {
      for (int r = 1; r <= most_rows; ++r) skinny_[static_cast<size_t>(r)].fill(true);
      return Status::Ok();
    }
    for (DeviceBuffer* in : {&xn_, &attn_, &act_, &xsn_}) {
      PDPOOL_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(in->get(), 0, in->bytes(), stream_));
    }
    TimingEvents events;
    PDPOOL_RETURN_IF_NOT_OK(events.Create());
    const cudaEvent_t start = events.start, stop = events.stop;
    const int layers = options_.model.num_layers;
    int previous = 0;
    for (const int rows : kTimedRows) {
      if (previous >= most_rows) break;
      const int timed_rows = std::min(rows, most_rows);
      std::string report;
      for (int p = 0; p < kNumProjections; ++p) {
        float ms[2] = {0, 0};  // cuBLAS, skinny
        for (int skinny = 0; skinny < 2; ++skinny) {
          auto pass = [&]() -> Status {
            for (int l = 0; l < (p == kLmHead ? 1 : layers); ++l) {
              PDPOOL_RETURN_IF_NOT_OK(
                  Project(static_cast<Projection>(p), l, timed_rows, skinny == 1));
            }
            return Status::Ok();
          };
          PDPOOL_RETURN_IF_NOT_OK(pass());
          PDPOOL_CUDA_RETURN_IF_ERROR(cudaEventRecord(start, stream_));
          PDPOOL_RETURN_IF_NOT_OK(pass());
          PDPOOL_RETURN_IF_NOT_OK(pass());
          PDPOOL_CUDA_RETURN_IF_ERROR(cudaEventRecord(stop, stream_));
          PDPOOL_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(stop));
          PDPOOL_CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(&ms[skinny], start, stop));
        }
        const bool use_skinny = ms[1] < ms[0];
        for (int r = previous + 1; r <= timed_rows; ++r) {
          skinny_[static_cast<size_t>(r)][static_cast<size_t>(p)] = use_skinny;
        }
        char line[160];
        std::snprintf(line, sizeof line, "%s%s %s (skinny %.1f us, cublas %.1f us)",
                      report.empty() ? "" : "; ", kProjectionNames[p],
                      use_skinny ? "skinny" : "cublas", 500.0 * ms[1], 500.0 * ms[0]);
        report += line;
      }
      LogInfo("cuda backend: decode GEMMs chosen by measurement",
              {{"rows", timed_rows}, {"choice", report}});
      previous = timed_rows;
    }
    return Status::Ok();
  }

  // --prefill-attention auto where wgmma runs: times the wgmma and mma.sync prefill attention on
  // one causal prompt (random queries and keys/values in layer 0 of the first cache blocks,
  // before any sequence owns one) and takes the faster. A wgmma output that differs from
  // mma.sync's beyond kPrefillKernelsAgree, or is not finite, is refused with an error in the
  // log, and mma.sync serves.
  Status ChoosePrefillAttention() {
    if (options_.prefill_attention != PrefillAttention::kAuto || !wgmma_prefill_) {
      return Status::Ok();
    }
    const ModelConfig& c = options_.model;
    const int bs = options_.block_size;
    const int tokens = std::min({kPrefillChoiceTokens, options_.max_batched_tokens,
                                 layout_.num_blocks * bs, max_model_len_});
    if (tokens < 2) return Status::Ok();  // no room for a prompt: keep wgmma
    const int blocks = (tokens + bs - 1) / bs;
    const int64_t q_elements = int64_t{tokens} * c.num_heads * c.head_dim;
    PDPOOL_RETURN_IF_NOT_OK(cuda::LaunchDummyInit(q_.get<bf16>(), q_elements, 1, 1.0, 0.0, stream_));
    PDPOOL_RETURN_IF_NOT_OK(cuda::LaunchDummyInit(
        kv_cache_.get<bf16>(), int64_t{blocks} * region_.block_bytes / int64_t{sizeof(bf16)}, 2,
        1.0, 0.0, stream_));
    StepBatch batch;
    SequenceStep& prompt = batch.sequences.emplace_back();
    prompt.tokens.assign(static_cast<size_t>(tokens), 0);
    prompt.block_table.resize(static_cast<size_t>(blocks));
    std::iota(prompt.block_table.begin(), prompt.block_table.end(), 0);
    prompt.sample = false;

    TimingEvents events;
    PDPOOL_RETURN_IF_NOT_OK(events.Create());
    float us[2] = {0, 0};  // mma.sync, wgmma
    std::vector<bf16> out[2];
    for (int wgmma = 0; wgmma < 2; ++wgmma) {
      prefill_tile_rows_ = wgmma ? cuda::kWgmmaPrefillTileRows : cuda::kPrefillTileRows;
      auto plan = PlanStep(batch);
      if (!plan.ok()) return plan.status();
      PDPOOL_RETURN_IF_NOT_OK(Upload(*plan));
      auto launch = [&]() {
        return (wgmma ? cuda::LaunchPrefillAttentionWgmma : cuda::LaunchPrefillAttention)(
            q_.get<bf16>(), Dev<cuda::SeqMeta>(arrays_.meta), Dev<int2>(arrays_.tiles),
            plan->num_tiles, Dev<int32_t>(arrays_.block_tables), kv_cache_.get<bf16>(),
            geometry_, c.num_heads, attn_.get<bf16>(), stream_);
      };
      PDPOOL_RETURN_IF_NOT_OK(launch());
      PDPOOL_CUDA_RETURN_IF_ERROR(cudaEventRecord(events.start, stream_));
      for (int i = 0; i < 3; ++i) PDPOOL_RETURN_IF_NOT_OK(launch());
      PDPOOL_CUDA_RETURN_IF_ERROR(cudaEventRecord(events.stop, stream_));
      PDPOOL_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(events.stop));
      float ms = 0;
      PDPOOL_CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(&ms, events.start, events.stop));
      us[wgmma] = 1e3f * ms / 3;
      out[wgmma].resize(static_cast<size_t>(q_elements));
      PDPOOL_CUDA_RETURN_IF_ERROR(cudaMemcpy(out[wgmma].data(), attn_.get(),
                                             out[wgmma].size() * sizeof(bf16),
                                             cudaMemcpyDeviceToHost));
    }
    double diff = 0, norm = 0;
    for (size_t i = 0; i < out[0].size(); ++i) {
      const double a = __bfloat162float(out[1][i]), b = __bfloat162float(out[0][i]);
      diff += (a - b) * (a - b);
      norm += b * b;
    }
    const double relative = std::sqrt(diff / norm);  // NaN when either output has one
    const bool agree = relative <= kPrefillKernelsAgree;
    wgmma_prefill_ = agree && us[1] <= us[0];
    prefill_tile_rows_ = wgmma_prefill_ ? cuda::kWgmmaPrefillTileRows : cuda::kPrefillTileRows;
    const std::initializer_list<LogField> fields = {
        {"tokens", tokens},          {"wgmma_us", us[1]},
        {"mma_us", us[0]},           {"relative_difference", relative},
        {"choice", wgmma_prefill_ ? "wgmma" : "mma"}};
    if (agree) {
      LogInfo("cuda backend: prefill attention chosen by measurement", fields);
    } else {
      LogError("cuda backend: the wgmma prefill attention disagrees with mma.sync's; "
               "serving with mma.sync",
               fields);
    }
    return Status::Ok();
  }

  // Enqueues the whole forward for an uploaded plan on stream_ (also what graphs capture).
  Status Forward(const StepPlan& plan) {
    const ModelConfig& c = options_.model;
    const int n = plan.num_tokens, h = c.hidden_size, nh = c.num_heads;
    const float eps = static_cast<float>(c.rms_norm_eps);
    bf16* xn = xn_.get<bf16>();
    bf16* delta = delta_.get<bf16>();
    float* x = x_.get<float>();
    PDPOOL_RETURN_IF_NOT_OK(
        cuda::LaunchEmbedding(Dev<int32_t>(arrays_.tokens), embed_, x, n, h, stream_));
    for (int l = 0; l < c.num_layers; ++l) {
      const LayerWeightsDevice& w = layers_[static_cast<size_t>(l)];
      bf16* layer_cache = kv_cache_.get<bf16>() + l * geometry_.layer_stride;
      PDPOOL_RETURN_IF_NOT_OK(
          cuda::LaunchAddRmsNorm(x, l == 0 ? nullptr : delta, w.attn_norm, xn, n, h, eps, stream_));
      PDPOOL_RETURN_IF_NOT_OK(Project(kQkvProjection, l, n, Skinny(kQkvProjection, n)));
      PDPOOL_RETURN_IF_NOT_OK(cuda::LaunchRopeAndCacheWrite(
          qkv_.get<bf16>(), Dev<int32_t>(arrays_.positions), Dev<int64_t>(arrays_.slots),
          rope_.get<float2>(), q_.get<bf16>(), layer_cache, geometry_, n, nh, stream_));
      PDPOOL_RETURN_IF_NOT_OK(cuda::LaunchDecodeAttention(
          q_.get<bf16>(), Dev<cuda::SeqMeta>(arrays_.meta), Dev<int32_t>(arrays_.decode_index),
          plan.num_decode, Dev<int32_t>(arrays_.block_tables), layer_cache, geometry_, nh,
          plan.num_splits, partial_.get<float>(), attn_.get<bf16>(), stream_));
      PDPOOL_RETURN_IF_NOT_OK((wgmma_prefill_ ? cuda::LaunchPrefillAttentionWgmma
                                              : cuda::LaunchPrefillAttention)(
          q_.get<bf16>(), Dev<cuda::SeqMeta>(arrays_.meta), Dev<int2>(arrays_.tiles),
          plan.num_tiles, Dev<int32_t>(arrays_.block_tables), layer_cache, geometry_, nh,
          attn_.get<bf16>(), stream_));
      PDPOOL_RETURN_IF_NOT_OK(Project(kOProjection, l, n, Skinny(kOProjection, n)));
      PDPOOL_RETURN_IF_NOT_OK(cuda::LaunchAddRmsNorm(x, delta, w.mlp_norm, xn, n, h, eps, stream_));
      PDPOOL_RETURN_IF_NOT_OK(Project(kGateUpProjection, l, n, Skinny(kGateUpProjection, n)));
      PDPOOL_RETURN_IF_NOT_OK(Project(kDownProjection, l, n, Skinny(kDownProjection, n)));
    }
    if (plan.num_samples == 0) return Status::Ok();
    const int m = plan.num_samples;
    PDPOOL_RETURN_IF_NOT_OK(cuda::LaunchGatherResidual(x, delta, Dev<int32_t>(arrays_.sample_rows),
                                                       xs_.get<float>(), m, h, stream_));
    PDPOOL_RETURN_IF_NOT_OK(cuda::LaunchAddRmsNorm(xs_.get<float>(), nullptr, final_norm_,
                                                   xsn_.get<bf16>(), m, h, eps, stream_));
    PDPOOL_RETURN_IF_NOT_OK(Project(kLmHead, 0, m, Skinny(kLmHead, m)));
    return cuda::LaunchSample(logits_.get<float>(), sample_weights_.get<float>(), m, c.vocab_size,
                              Dev<cuda::SampleRowParams>(arrays_.sample_params),
                              Dev<int32_t>(arrays_.next_tokens), stream_);
  }

  // Captures the forward of a padded decode plan of `plan.num_seqs` sequences.
  StatusOr<cudaGraphExec_t> CaptureDecodeGraph(const StepPlan& plan) {
    PDPOOL_CUDA_RETURN_IF_ERROR(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
    Status forward = Forward(plan);
    cudaGraph_t graph = nullptr;
    const cudaError_t end = cudaStreamEndCapture(stream_, &graph);
    if (!forward.ok()) {
      if (graph != nullptr) cudaGraphDestroy(graph);
      return forward;
    }
    PDPOOL_CUDA_RETURN_IF_ERROR(end);
    cudaGraphExec_t exec = nullptr;
    const cudaError_t instantiated = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    PDPOOL_CUDA_RETURN_IF_ERROR(instantiated);
    return exec;
  }

  Status RunStep(StepPlan* plan) {
    PDPOOL_RETURN_IF_NOT_OK(Upload(*plan));
    const auto graph = use_graph_ ? graphs_.find(plan->num_seqs) : graphs_.end();
    if (graph != graphs_.end()) {
      PDPOOL_CUDA_RETURN_IF_ERROR(cudaGraphLaunch(graph->second, stream_));
    } else {
      // A bucket's first step runs eagerly (which also loads its kernels and warms cuBLAS
      // outside any capture); its graph is captured afterwards for the next steps. A bucket
      // that cannot be captured stays eager, which is slower but correct.
      PDPOOL_RETURN_IF_NOT_OK(Forward(*plan));
      if (use_graph_ && !eager_buckets_.contains(plan->num_seqs)) {
        auto exec = CaptureDecodeGraph(*plan);
        if (exec.ok()) {
          graphs_.emplace(plan->num_seqs, *exec);
        } else {
          eager_buckets_.insert(plan->num_seqs);
          LogWarn("cuda backend: decode graph capture failed; this batch size runs without one",
                  {{"batch_bucket", plan->num_seqs}, {"error", exec.status().ToString()}});
        }
      }
    }
    if (plan->num_samples > 0) {
      PDPOOL_CUDA_RETURN_IF_ERROR(
          cudaMemcpyAsync(staging_.get<char>() + arrays_.next_tokens,
                          step_arrays_.get<char>() + arrays_.next_tokens,
                          sizeof(int32_t) * static_cast<size_t>(plan->num_samples),
                          cudaMemcpyDeviceToHost, stream_));
    }
    PDPOOL_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
    return Status::Ok();
  }

  CudaBackendOptions options_;
  std::string device_name_;
  int num_sms_ = 0;
  int decode_blocks_per_sm_ = 1;  // the decode attention kernel's occupancy
  bool wgmma_prefill_ = false;    // prefill attention on the sm_90a wgmma kernel
  int prefill_tile_rows_ = cuda::kPrefillTileRows;  // query rows per prefill attention tile
  int max_model_len_ = 0;
  cudaStream_t stream_ = nullptr;
  const cuda::CublasApi* blas_ = nullptr;  // loaded at run time (cuda_libraries.h)
  cublasHandle_t cublas_ = nullptr;
  DeviceBuffer cublas_workspace_;

  DeviceBuffer weights_;
  std::vector<LayerWeightsDevice> layers_;
  bf16* embed_ = nullptr;
  bf16* final_norm_ = nullptr;
  bf16* lm_head_ = nullptr;
  DeviceBuffer rope_;

  DeviceBuffer x_, xn_, qkv_, q_, attn_, delta_, gate_up_, act_, xs_, xsn_, logits_,
      sample_weights_, partial_;
  StepArrays arrays_;
  int64_t block_table_capacity_ = 0;
  int64_t tile_capacity_ = 0;
  PinnedBuffer staging_;
  DeviceBuffer step_arrays_;
  bool use_graph_ = false;
  std::map<int, cudaGraphExec_t> graphs_;  // by padded batch size
  std::set<int> eager_buckets_;            // padded batch sizes whose capture failed
  // By row count (0 … kSkinnyGemmMaxRows) and Projection: whether it runs on the skinny GEMM.
  std::array<std::array<bool, kNumProjections>, cuda::kSkinnyGemmMaxRows + 1> skinny_{};

  cuda::KvCacheGeometry geometry_;
  DeviceBuffer kv_cache_;
  int32_t scratch_block_ = 0;
  KvLayout layout_;
  DeviceKvRegion region_;
};

}  // namespace

StatusOr<DecodeGemm> ParseDecodeGemm(const std::string& name) {
  if (name == "auto") return DecodeGemm::kAuto;
  if (name == "cublas") return DecodeGemm::kCublas;
  if (name == "skinny") return DecodeGemm::kSkinny;
  return Status::InvalidArgument("decode GEMM \"" + name + "\": must be auto, cublas or skinny");
}

StatusOr<PrefillAttention> ParsePrefillAttention(const std::string& name) {
  if (name == "auto") return PrefillAttention::kAuto;
  if (name == "mma") return PrefillAttention::kMma;
  if (name == "wgmma") return PrefillAttention::kWgmma;
  return Status::InvalidArgument("prefill attention \"" + name +
                                 "\": must be auto, mma or wgmma");
}

StatusOr<std::unique_ptr<Backend>> NewCudaBackend(const CudaBackendOptions& options) {
  auto backend = std::make_unique<CudaBackend>(options);
  if (Status s = backend->Init(); !s.ok()) return s;
  return std::unique_ptr<Backend>(std::move(backend));
}

}  // namespace pdpool::agent
