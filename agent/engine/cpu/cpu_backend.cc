// CpuBackend: a Llama forward pass in float32 over a paged KV cache. Each sequence of a step is
// computed on its own, row by row, with fixed-order reductions: no result depends on what else
// is in the batch, on how its prompt was chunked, or on the block size.
#include "agent/engine/cpu/cpu_backend.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "agent/engine/sampling.h"
#include "agent/engine/step_validation.h"
#include "agent/model/rope.h"

namespace pdpool::agent {
namespace {

static_assert(std::endian::native == std::endian::little,
              "the KV wire form is float32 little-endian, copied as stored");

// Fixed-order inner product: eight interleaved partial sums (vectorizable without reassociation,
// so -O2 gives SIMD and every call with the same inputs gives the same bits).
inline float Dot(const float* a, const float* b, int n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int k = 0; k < 8; ++k) acc[k] += a[i + k] * b[i + k];
  }
  float tail = 0.0f;
  for (; i < n; ++i) tail += a[i] * b[i];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) + tail;
}

// out[r][j] = Σ_k w[j][k] · x[r][k] for `rows` rows; w is [out_dim, in_dim] (HF layout).
void MatMul(const float* w, const float* x, float* out, int rows, int out_dim, int in_dim) {
  for (int j = 0; j < out_dim; ++j) {
    const float* wj = w + static_cast<int64_t>(j) * in_dim;
    for (int r = 0; r < rows; ++r) {
      out[static_cast<int64_t>(r) * out_dim + j] =
          Dot(wj, x + static_cast<int64_t>(r) * in_dim, in_dim);
    }
  }
}

void RmsNorm(const float* x, const float* weight, float* out, int n, float eps) {
  const float mean_sq = Dot(x, x, n) / static_cast<float>(n);
  const float inv = 1.0f / std::sqrt(mean_sq + eps);
  for (int i = 0; i < n; ++i) out[i] = (x[i] * inv) * weight[i];
}

class CpuBackend final : public Backend {
 public:
  CpuBackend(ModelConfig config, ModelWeights weights, KvLayout layout)
      : config_(std::move(config)), weights_(std::move(weights)), layout_(layout) {
    slot_floats_ = int64_t{config_.num_kv_heads} * config_.head_dim;
    const int64_t layer_floats = int64_t{layout_.num_blocks} * layout_.block_size * slot_floats_;
    k_.assign(static_cast<size_t>(config_.num_layers),
              std::vector<float>(static_cast<size_t>(layer_floats), 0.0f));
    v_.assign(static_cast<size_t>(config_.num_layers),
              std::vector<float>(static_cast<size_t>(layer_floats), 0.0f));
    inv_freq_ = RopeInverseFrequencies(config_);
  }

  std::string_view name() const override { return "cpu"; }
  const ModelConfig& model() const override { return config_; }
  const KvLayout& kv_layout() const override { return layout_; }

  StatusOr<StepResult> Step(const StepBatch& batch) override {
    // Validate everything first: an invalid batch changes no KV.
    if (Status s = ValidateStepBatch("cpu backend", config_, layout_, batch); !s.ok()) return s;
    try {
      StepResult result;
      result.next_tokens.reserve(batch.sequences.size());
      if (batch.want_logits) result.logits.resize(batch.sequences.size());
      std::vector<float> logits;
      for (size_t i = 0; i < batch.sequences.size(); ++i) {
        const SequenceStep& seq = batch.sequences[i];
        RunSequence(seq, seq.sample ? &logits : nullptr);
        if (!seq.sample) {
          result.next_tokens.push_back(-1);
          continue;
        }
        result.next_tokens.push_back(SampleToken(logits, seq.sampling, seq.sample_index));
        if (batch.want_logits) result.logits[i] = logits;
      }
      return result;
    } catch (const std::bad_alloc&) {
      return Status::Internal("cpu backend: out of memory during a step");
    }
  }

  Status ExportKvBlock(int32_t block, int32_t tokens, std::string* out) override {
    if (Status s = ValidateKvBlockArgs("cpu backend", layout_, block, tokens); !s.ok()) {
      return s;
    }
    const size_t chunk = static_cast<size_t>(tokens * slot_floats_) * sizeof(float);
    const size_t offset = static_cast<size_t>(int64_t{block} * layout_.block_size * slot_floats_);
    out->resize(chunk * 2 * static_cast<size_t>(config_.num_layers));
    char* p = out->data();
    for (int l = 0; l < config_.num_layers; ++l) {
      std::memcpy(p, k_[static_cast<size_t>(l)].data() + offset, chunk);
      p += chunk;
      std::memcpy(p, v_[static_cast<size_t>(l)].data() + offset, chunk);
      p += chunk;
    }
    return Status::Ok();
  }

  Status ImportKvBlock(int32_t block, int32_t tokens, std::string_view data) override {
    if (Status s = ValidateKvBlockArgs("cpu backend", layout_, block, tokens); !s.ok()) {
      return s;
    }
    const size_t chunk = static_cast<size_t>(tokens * slot_floats_) * sizeof(float);
    const size_t want = chunk * 2 * static_cast<size_t>(config_.num_layers);
    if (data.size() != want) {
      return Status::InvalidArgument("cpu backend: KV block payload for " + std::to_string(tokens) +
                                     " tokens must be " + std::to_string(want) + " bytes, got " +
                                     std::to_string(data.size()));
    }
    const size_t offset = static_cast<size_t>(int64_t{block} * layout_.block_size * slot_floats_);
    const char* p = data.data();
    for (int l = 0; l < config_.num_layers; ++l) {
      std::memcpy(k_[static_cast<size_t>(l)].data() + offset, p, chunk);
      p += chunk;
      std::memcpy(v_[static_cast<size_t>(l)].data() + offset, p, chunk);
      p += chunk;
    }
    return Status::Ok();
  }

 private:
  // cos/sin tables for positions [0, positions); grown on demand (entries never change).
  void EnsureRope(int64_t positions) {
    if (positions <= rope_positions_) return;
    const int64_t target = std::min<int64_t>(std::max<int64_t>(positions, 2 * rope_positions_),
                                             config_.max_position_embeddings);
    const int half = config_.head_dim / 2;
    rope_cos_.resize(static_cast<size_t>(target * half));
    rope_sin_.resize(static_cast<size_t>(target * half));
    for (int64_t p = rope_positions_; p < target; ++p) {
      for (int i = 0; i < half; ++i) {
        const double angle = static_cast<double>(p) * inv_freq_[static_cast<size_t>(i)];
        rope_cos_[static_cast<size_t>(p * half + i)] = static_cast<float>(std::cos(angle));
        rope_sin_[static_cast<size_t>(p * half + i)] = static_cast<float>(std::sin(angle));
      }
    }
    rope_positions_ = target;
  }

  // Rotate-half RoPE on one head vector (pairs i, i + head_dim/2).
  void ApplyRope(float* v, int64_t pos) const {
    const int half = config_.head_dim / 2;
    const float* c = rope_cos_.data() + pos * half;
    const float* s = rope_sin_.data() + pos * half;
    for (int i = 0; i < half; ++i) {
      const float a = v[i], b = v[i + half];
      v[i] = a * c[i] - b * s[i];
      v[i + half] = b * c[i] + a * s[i];
    }
  }

  // Runs seq's tokens through the model, writing their K/V into the cache; when `logits` is
  // set, fills it with the logits of the last token.
  void RunSequence(const SequenceStep& seq, std::vector<float>* logits) {
    const int n = static_cast<int>(seq.tokens.size());
    const int H = config_.hidden_size, I = config_.intermediate_size, hd = config_.head_dim;
    const int nh = config_.num_heads, nkv = config_.num_kv_heads, group = nh / nkv;
    const int Q = nh * hd, KV = nkv * hd;
    const int64_t start = seq.start_position, end = start + n;
    const float eps = static_cast<float>(config_.rms_norm_eps);
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    EnsureRope(end);

    slots_.resize(static_cast<size_t>(end));
    for (int64_t t = 0; t < end; ++t) {
      slots_[static_cast<size_t>(t)] =
          int64_t{seq.block_table[static_cast<size_t>(t / layout_.block_size)]} *
              layout_.block_size +
          t % layout_.block_size;
    }
    x_.resize(static_cast<size_t>(n) * H);
    xn_.resize(static_cast<size_t>(n) * H);
    tmp_.resize(static_cast<size_t>(n) * H);
    q_.resize(static_cast<size_t>(n) * Q);
    k_new_.resize(static_cast<size_t>(n) * KV);
    v_new_.resize(static_cast<size_t>(n) * KV);
    attn_.resize(static_cast<size_t>(n) * Q);
    gate_.resize(static_cast<size_t>(n) * I);
    up_.resize(static_cast<size_t>(n) * I);
    scores_.resize(static_cast<size_t>(end));

    for (int r = 0; r < n; ++r) {
      const float* e = weights_.embed.data.data() + int64_t{seq.tokens[static_cast<size_t>(r)]} * H;
      std::copy(e, e + H, x_.data() + int64_t{r} * H);
    }

    for (int l = 0; l < config_.num_layers; ++l) {
      const LayerWeights& w = weights_.layers[static_cast<size_t>(l)];
      float* kc = k_[static_cast<size_t>(l)].data();
      float* vc = v_[static_cast<size_t>(l)].data();

      for (int r = 0; r < n; ++r) {
        RmsNorm(x_.data() + int64_t{r} * H, w.attn_norm.data.data(), xn_.data() + int64_t{r} * H, H,
                eps);
      }
      MatMul(w.wq.data.data(), xn_.data(), q_.data(), n, Q, H);
      MatMul(w.wk.data.data(), xn_.data(), k_new_.data(), n, KV, H);
      MatMul(w.wv.data.data(), xn_.data(), v_new_.data(), n, KV, H);
      for (int r = 0; r < n; ++r) {
        const int64_t pos = start + r;
        for (int h = 0; h < nh; ++h) ApplyRope(q_.data() + int64_t{r} * Q + int64_t{h} * hd, pos);
        for (int g = 0; g < nkv; ++g)
          ApplyRope(k_new_.data() + int64_t{r} * KV + int64_t{g} * hd, pos);
        const int64_t slot = slots_[static_cast<size_t>(pos)];
        std::copy_n(k_new_.data() + int64_t{r} * KV, KV, kc + slot * slot_floats_);
        std::copy_n(v_new_.data() + int64_t{r} * KV, KV, vc + slot * slot_floats_);
      }

      // Causal attention over the paged cache, head h reading KV head h / group.
      for (int r = 0; r < n; ++r) {
        const int64_t pos = start + r;
        for (int h = 0; h < nh; ++h) {
          const int g = h / group;
          const float* q = q_.data() + int64_t{r} * Q + int64_t{h} * hd;
          float max = -INFINITY;
          for (int64_t t = 0; t <= pos; ++t) {
            const float* k = kc + slots_[static_cast<size_t>(t)] * slot_floats_ + int64_t{g} * hd;
            const float s = Dot(q, k, hd) * scale;
            scores_[static_cast<size_t>(t)] = s;
            max = std::max(max, s);
          }
          float* out = attn_.data() + int64_t{r} * Q + int64_t{h} * hd;
          std::fill(out, out + hd, 0.0f);
          float sum = 0.0f;
          for (int64_t t = 0; t <= pos; ++t) {
            const float p = std::exp(scores_[static_cast<size_t>(t)] - max);
            sum += p;
            const float* v = vc + slots_[static_cast<size_t>(t)] * slot_floats_ + int64_t{g} * hd;
            for (int d = 0; d < hd; ++d) out[d] += p * v[d];
          }
          const float inv = 1.0f / sum;
          for (int d = 0; d < hd; ++d) out[d] *= inv;
        }
      }
      MatMul(w.wo.data.data(), attn_.data(), tmp_.data(), n, H, Q);
      for (int64_t i = 0; i < int64_t{n} * H; ++i)
        x_[static_cast<size_t>(i)] += tmp_[static_cast<size_t>(i)];

      // SwiGLU MLP.
      for (int r = 0; r < n; ++r) {
        RmsNorm(x_.data() + int64_t{r} * H, w.mlp_norm.data.data(), xn_.data() + int64_t{r} * H, H,
                eps);
      }
      MatMul(w.w_gate.data.data(), xn_.data(), gate_.data(), n, I, H);
      MatMul(w.w_up.data.data(), xn_.data(), up_.data(), n, I, H);
      for (int64_t i = 0; i < int64_t{n} * I; ++i) {
        const float g = gate_[static_cast<size_t>(i)];
        gate_[static_cast<size_t>(i)] = g / (1.0f + std::exp(-g)) * up_[static_cast<size_t>(i)];
      }
      MatMul(w.w_down.data.data(), gate_.data(), tmp_.data(), n, H, I);
      for (int64_t i = 0; i < int64_t{n} * H; ++i)
        x_[static_cast<size_t>(i)] += tmp_[static_cast<size_t>(i)];
    }

    if (logits == nullptr) return;
    const float* last = x_.data() + int64_t{n - 1} * H;
    RmsNorm(last, weights_.final_norm.data.data(), xn_.data(), H, eps);
    const Tensor& head = config_.tie_word_embeddings ? weights_.embed : weights_.lm_head;
    logits->resize(static_cast<size_t>(config_.vocab_size));
    MatMul(head.data.data(), xn_.data(), logits->data(), 1, config_.vocab_size, H);
  }

  ModelConfig config_;
  ModelWeights weights_;
  KvLayout layout_;
  int64_t slot_floats_ = 0;  // floats of one token's K (or V) in one layer
  std::vector<std::vector<float>> k_,
      v_;  // per layer: [num_blocks][block_size][kv_heads][head_dim]
  std::vector<double> inv_freq_;
  std::vector<float> rope_cos_, rope_sin_;  // [position][head_dim / 2]
  int64_t rope_positions_ = 0;
  // Scratch, reused across steps.
  std::vector<int64_t> slots_;
  std::vector<float> x_, xn_, tmp_, q_, k_new_, v_new_, attn_, gate_, up_, scores_;
};

}  // namespace

StatusOr<std::unique_ptr<Backend>> NewCpuBackend(ModelConfig config, ModelWeights weights,
                                                 int block_size, int num_blocks) {
  if (Status s = config.Validate(); !s.ok()) return s;
  if (Status s = CheckWeightShapes(config, weights); !s.ok()) return s;
  if (block_size < 1 || block_size > 4096) {
    return Status::InvalidArgument("block_size (" + std::to_string(block_size) +
                                   ") must be in [1, 4096]");
  }
  if (num_blocks < 1) {
    return Status::InvalidArgument("num_blocks (" + std::to_string(num_blocks) + ") must be >= 1");
  }
  KvLayout layout;
  layout.block_size = block_size;
  layout.num_blocks = num_blocks;
  layout.num_layers = config.num_layers;
  layout.num_kv_heads = config.num_kv_heads;
  layout.head_dim = config.head_dim;
  layout.bytes_per_element = 4;
  // Refuse caches beyond 1 TiB outright (a typo in num_blocks), before trying to allocate.
  const int64_t block_bytes = layout.BytesPerToken() * block_size;  // ≤ 2^47 after Validate
  if (num_blocks > (int64_t{1} << 40) / block_bytes) {
    return Status::InvalidArgument("KV cache of num_blocks (" + std::to_string(num_blocks) +
                                   ") × " + std::to_string(block_bytes) + " bytes is beyond 1 TiB");
  }
  const int64_t bytes = block_bytes * num_blocks;
  try {
    return std::unique_ptr<Backend>(
        std::make_unique<CpuBackend>(std::move(config), std::move(weights), layout));
  } catch (const std::bad_alloc&) {
    return Status::InvalidArgument("cannot allocate a KV cache of " + std::to_string(bytes) +
                                   " bytes (num_blocks " + std::to_string(num_blocks) + ")");
  }
}

}  // namespace pdpool::agent
