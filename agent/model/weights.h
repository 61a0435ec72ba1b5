// Model weights in float32 host memory: the Llama tensors in Hugging Face layouts, made from a
// seed (DummyWeights, like vLLM's --load-format dummy) or loaded from safetensors, and the
// resolution of --model / --weights flags into a ModelConfig. Plain values and free functions;
// thread-compatible.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "agent/model/model_config.h"
#include "common/status.h"

namespace pdpool::agent {

// Row-major; shape {rows, cols} for matrices, {n} for vectors.
struct Tensor {
  std::vector<int64_t> shape;
  std::vector<float> data;

  int64_t NumElements() const;
};

// HF layouts ([out, in] for projections): q_proj [heads*head_dim, hidden], k/v_proj
// [kv_heads*head_dim, hidden], o_proj [hidden, heads*head_dim], gate/up [inter, hidden],
// down [hidden, inter], norms [hidden].
struct LayerWeights {
  Tensor attn_norm, wq, wk, wv, wo, mlp_norm, w_gate, w_up, w_down;
};

struct ModelWeights {
  Tensor embed;  // [vocab, hidden]
  std::vector<LayerWeights> layers;
  Tensor final_norm;  // [hidden]
  Tensor lm_head;     // [vocab, hidden]; empty when the config ties it to embed
};

// One tensor of the model: its Hugging Face name and shape.
struct WeightTensorShape {
  std::string name;
  std::vector<int64_t> shape;

  int64_t NumElements() const;
};
// Every tensor of the model in checkpoint order: the embedding; per layer input_layernorm,
// q_proj, k_proj, v_proj, o_proj, post_attention_layernorm, gate_proj, up_proj, down_proj; the
// final norm; lm_head only when not tied.
std::vector<WeightTensorShape> WeightTensorShapes(const ModelConfig& config);

// Deterministic weights: the same (config, seed) gives the same bytes on every machine
// (integer hash stream, IEEE arithmetic only). Projections are uniform in ±1/sqrt(fan_in),
// norms uniform in 1 ± 0.05.
ModelWeights DummyWeights(const ModelConfig& config, uint64_t seed);

// How DummyWeights fills one tensor, for backends that generate the same values elsewhere (the
// cuda backend, on the GPU): element i is
//   float(center + (2·u − 1)·bound), u = (SplitMix64(stream + (i + 1)·0x9E3779B97F4A7C15) >> 40) / 2^24
// computed in IEEE double.
struct DummyTensorSpec {
  std::string name;  // Hugging Face name
  std::vector<int64_t> shape;
  uint64_t stream = 0;
  double bound = 0;
  double center = 0;
};
// Every tensor of the model in DummyWeights' order (lm_head only when not tied).
std::vector<DummyTensorSpec> DummyWeightSpecs(const ModelConfig& config, uint64_t seed);

// spec: "dummy:<seed>" (or "dummy", seed 0), or a path: a directory holding model.safetensors
// or model.safetensors.index.json, an index file, or a single .safetensors file. Tensors are
// checked against the config's shapes; errors name the file and the tensor.
StatusOr<ModelWeights> LoadWeights(const ModelConfig& config, std::string_view spec);

// model_flag: a preset name; a path ending in .json (a Hugging Face config.json: an explicit
// shape); or ""/"auto" to read config.json beside the weights (the directory, or the
// directory of the file). Dummy weights need a preset or a config file.
StatusOr<ModelConfig> ResolveModelConfig(std::string_view model_flag,
                                         std::string_view weights_spec);

// Every tensor present with the shape the config implies (lm_head empty iff tied).
Status CheckWeightShapes(const ModelConfig& config, const ModelWeights& weights);

// Writes `dir`/model.safetensors (HF tensor names; dtype "F32", "BF16" or "F16") and
// `dir`/config.json, creating `dir` if needed: a checkpoint LoadWeights and
// ResolveModelConfig("auto", dir) read back.
Status SaveWeights(const ModelConfig& config, const ModelWeights& weights, const std::string& dir,
                   std::string_view dtype = "F32");

}  // namespace pdpool::agent
