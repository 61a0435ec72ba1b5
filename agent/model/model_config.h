// ModelConfig: the shape of a Llama-family decoder (RMSNorm, RoPE with llama3 frequency
// scaling, grouped-query attention, SwiGLU MLP), from a named preset, explicit fields, or a
// Hugging Face config.json. Plain value type; thread-compatible.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/json.h"
#include "common/status.h"

namespace pdpool::agent {

// rope_scaling of Llama 3.1+ ("rope_type": "llama3"); disabled for older shapes.
struct RopeScaling {
  bool llama3 = false;
  double factor = 8.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int original_max_position_embeddings = 8192;
};

struct ModelConfig {
  std::string name;  // preset name, or "custom"
  int vocab_size = 0;
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;  // usually hidden_size / num_heads
  int max_position_embeddings = 0;
  double rms_norm_eps = 1e-5;
  double rope_theta = 500000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  int bos_token_id = 256;  // the byte-level tokenizer's ids (bytes are 0..255)
  int eos_token_id = 257;

  // Parameter count (embeddings counted once when tied).
  int64_t ParamCount() const;
  // KV bytes per token: 2 · layers · kv_heads · head_dim · bytes_per_element.
  int64_t KvBytesPerToken(int bytes_per_element) const;
  // Names the first invalid field and its limit (heads not dividing, zero sizes, vocab too
  // small for the byte tokenizer's 258 ids, ...).
  Status Validate() const;
};

// Presets: test-tiny, llama-3.2-1b, llama-3.1-8b, llama-3.1-70b, llama-3.1-405b.
StatusOr<ModelConfig> ModelConfigFromPreset(std::string_view name);
std::vector<std::string> ModelPresetNames();
// From a Hugging Face config.json (LlamaForCausalLM fields).
StatusOr<ModelConfig> ModelConfigFromHfConfig(const Json& config_json);
// The inverse: a config.json (LlamaForCausalLM) that ModelConfigFromHfConfig reads back equal
// (except `name`, which becomes "custom" unless "_name_or_path" is set).
Json ModelConfigToHfConfig(const ModelConfig& config);

}  // namespace pdpool::agent
