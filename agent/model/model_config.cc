// ModelConfig: presets, validation, parameter/KV arithmetic, and Hugging Face config.json
// parsing for Llama-family decoders.
#include "agent/model/model_config.h"

#include <cmath>
#include <string>
#include <utility>

namespace pdpool::agent {
namespace {

// Generous upper bounds: they exist so that products of fields cannot overflow int64 and so
// that a typo (an extra digit) is reported instead of attempting a petabyte allocation.
constexpr int64_t kMaxVocab = int64_t{1} << 24;
constexpr int64_t kMaxDim = int64_t{1} << 20;
constexpr int64_t kMaxLayers = 4096;
constexpr int64_t kMaxHeads = 1 << 16;
constexpr int64_t kMaxPositions = int64_t{1} << 26;
constexpr int kByteTokenizerVocab = 258;  // bytes 0..255, BOS 256, EOS 257

Status CheckRange(const char* field, int64_t value, int64_t lo, int64_t hi) {
  if (value < lo || value > hi) {
    return Status::InvalidArgument(std::string(field) + " (" + std::to_string(value) +
                                   ") must be in [" + std::to_string(lo) + ", " +
                                   std::to_string(hi) + "]");
  }
  return Status::Ok();
}

struct PresetRow {
  const char* name;
  int vocab, hidden, intermediate, layers, heads, kv_heads, head_dim, max_pos;
  double rope_theta, factor, low, high;
  int orig_max_pos;
  bool tied;
};

constexpr PresetRow kPresets[] = {
    {"test-tiny", 512, 64, 192, 2, 4, 2, 16, 4096, 10000.0, 8.0, 1.0, 4.0, 1024, true},
    {"llama-3.2-1b", 128256, 2048, 8192, 16, 32, 8, 64, 131072, 500000.0, 32.0, 1.0, 4.0, 8192,
     true},
    {"llama-3.1-8b", 128256, 4096, 14336, 32, 32, 8, 128, 131072, 500000.0, 8.0, 1.0, 4.0, 8192,
     false},
    {"llama-3.1-70b", 128256, 8192, 28672, 80, 64, 8, 128, 131072, 500000.0, 8.0, 1.0, 4.0, 8192,
     false},
    {"llama-3.1-405b", 128256, 16384, 53248, 126, 128, 8, 128, 131072, 500000.0, 8.0, 1.0, 4.0,
     8192, false},
};

// Reads an integer field; absent → NotFound-style InvalidArgument unless a fallback is given.
Status ReadInt(const Json& j, const char* key, int* out, bool required,
               const char* display = nullptr) {
  if (display == nullptr) display = key;
  const Json* v = JsonChild(j, key);
  if (v == nullptr) {
    if (required) {
      return Status::InvalidArgument(std::string("config.json: missing field ") + display);
    }
    return Status::Ok();
  }
  if (!v->is_number_integer()) {
    // Accept 4096.0 (some exporters write floats) but nothing fractional.
    if (v->is_number_float()) {
      double d = v->get<double>();
      if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) <= 2147483647.0) {
        *out = static_cast<int>(d);
        return Status::Ok();
      }
    }
    return Status::InvalidArgument(std::string("config.json: field ") + display +
                                   " must be an integer, got " + v->dump());
  }
  int64_t x = v->get<int64_t>();
  if (x < -2147483647LL || x > 2147483647LL) {
    return Status::InvalidArgument(std::string("config.json: field ") + display + " (" + v->dump() +
                                   ") does not fit in 32 bits");
  }
  *out = static_cast<int>(x);
  return Status::Ok();
}

Status ReadDouble(const Json& j, const char* key, const char* display, double* out) {
  const Json* v = JsonChild(j, key);
  if (v == nullptr) return Status::Ok();
  if (!v->is_number()) {
    return Status::InvalidArgument(std::string("config.json: field ") + display +
                                   " must be a number, got " + v->dump());
  }
  *out = v->get<double>();
  return Status::Ok();
}

}  // namespace

int64_t ModelConfig::ParamCount() const {
  const int64_t h = hidden_size;
  const int64_t q_dim = int64_t{num_heads} * head_dim;
  const int64_t kv_dim = int64_t{num_kv_heads} * head_dim;
  const int64_t attn = h * q_dim + 2 * h * kv_dim + q_dim * h;
  const int64_t mlp = 3 * h * intermediate_size;
  const int64_t norms = 2 * h;
  const int64_t embed = int64_t{vocab_size} * h;
  return embed + num_layers * (attn + mlp + norms) + h + (tie_word_embeddings ? 0 : embed);
}

int64_t ModelConfig::KvBytesPerToken(int bytes_per_element) const {
  return int64_t{2} * num_layers * num_kv_heads * head_dim * bytes_per_element;
}

Status ModelConfig::Validate() const {
  Status s;
  if (!(s = CheckRange("vocab_size", vocab_size, kByteTokenizerVocab, kMaxVocab)).ok()) return s;
  if (!(s = CheckRange("hidden_size", hidden_size, 1, kMaxDim)).ok()) return s;
  if (!(s = CheckRange("intermediate_size", intermediate_size, 1, kMaxDim)).ok()) return s;
  if (!(s = CheckRange("num_layers", num_layers, 1, kMaxLayers)).ok()) return s;
  if (!(s = CheckRange("num_heads", num_heads, 1, kMaxHeads)).ok()) return s;
  if (!(s = CheckRange("num_kv_heads", num_kv_heads, 1, num_heads)).ok()) return s;
  if (num_heads % num_kv_heads != 0) {
    return Status::InvalidArgument("num_heads (" + std::to_string(num_heads) +
                                   ") must be a multiple of num_kv_heads (" +
                                   std::to_string(num_kv_heads) + ")");
  }
  if (!(s = CheckRange("head_dim", head_dim, 2, 4096)).ok()) return s;
  if (head_dim % 2 != 0) {
    return Status::InvalidArgument("head_dim (" + std::to_string(head_dim) +
                                   ") must be even (RoPE rotates pairs)");
  }
  if (int64_t{num_heads} * head_dim > kMaxDim) {
    return Status::InvalidArgument("num_heads * head_dim (" +
                                   std::to_string(int64_t{num_heads} * head_dim) +
                                   ") must be at most " + std::to_string(kMaxDim));
  }
  if (!(s = CheckRange("max_position_embeddings", max_position_embeddings, 1, kMaxPositions))
           .ok()) {
    return s;
  }
  if (!(rms_norm_eps > 0.0) || !std::isfinite(rms_norm_eps)) {
    return Status::InvalidArgument("rms_norm_eps (" + std::to_string(rms_norm_eps) +
                                   ") must be a positive finite number");
  }
  if (!(rope_theta > 1.0) || !std::isfinite(rope_theta)) {
    return Status::InvalidArgument("rope_theta (" + std::to_string(rope_theta) +
                                   ") must be a finite number > 1");
  }
  if (rope_scaling.llama3) {
    const RopeScaling& r = rope_scaling;
    if (!(r.factor >= 1.0) || !std::isfinite(r.factor)) {
      return Status::InvalidArgument("rope_scaling.factor (" + std::to_string(r.factor) +
                                     ") must be a finite number >= 1");
    }
    if (!(r.low_freq_factor > 0.0) || !std::isfinite(r.high_freq_factor) ||
        !(r.high_freq_factor > r.low_freq_factor)) {
      return Status::InvalidArgument("rope_scaling.high_freq_factor (" +
                                     std::to_string(r.high_freq_factor) +
                                     ") must be greater than rope_scaling.low_freq_factor (" +
                                     std::to_string(r.low_freq_factor) + ") > 0");
    }
    if (!(s = CheckRange("rope_scaling.original_max_position_embeddings",
                         r.original_max_position_embeddings, 1, kMaxPositions))
             .ok()) {
      return s;
    }
  }
  if (!(s = CheckRange("bos_token_id", bos_token_id, 0, int64_t{vocab_size} - 1)).ok()) return s;
  if (!(s = CheckRange("eos_token_id", eos_token_id, 0, int64_t{vocab_size} - 1)).ok()) return s;
  return Status::Ok();
}

std::vector<std::string> ModelPresetNames() {
  std::vector<std::string> names;
  for (const PresetRow& p : kPresets) names.emplace_back(p.name);
  return names;
}

StatusOr<ModelConfig> ModelConfigFromPreset(std::string_view name) {
  for (const PresetRow& p : kPresets) {
    if (name != p.name) continue;
    ModelConfig c;
    c.name = p.name;
    c.vocab_size = p.vocab;
    c.hidden_size = p.hidden;
    c.intermediate_size = p.intermediate;
    c.num_layers = p.layers;
    c.num_heads = p.heads;
    c.num_kv_heads = p.kv_heads;
    c.head_dim = p.head_dim;
    c.max_position_embeddings = p.max_pos;
    c.rms_norm_eps = 1e-5;
    c.rope_theta = p.rope_theta;
    c.rope_scaling.llama3 = true;
    c.rope_scaling.factor = p.factor;
    c.rope_scaling.low_freq_factor = p.low;
    c.rope_scaling.high_freq_factor = p.high;
    c.rope_scaling.original_max_position_embeddings = p.orig_max_pos;
    c.tie_word_embeddings = p.tied;
    return c;
  }
  std::string valid;
  for (const std::string& n : ModelPresetNames()) valid += (valid.empty() ? "" : ", ") + n;
  return Status::InvalidArgument("unknown model preset \"" + std::string(name) +
                                 "\" (valid: " + valid + ")");
}

StatusOr<ModelConfig> ModelConfigFromHfConfig(const Json& j) {
  if (!j.is_object()) return Status::InvalidArgument("config.json: not a JSON object");
  ModelConfig c;
  c.name = "custom";
  if (const Json* n = JsonChild(j, "_name_or_path");
      n != nullptr && n->is_string() && !n->get<std::string>().empty()) {
    c.name = n->get<std::string>();
  }
  Status s;
  if (!(s = ReadInt(j, "vocab_size", &c.vocab_size, true)).ok()) return s;
  if (!(s = ReadInt(j, "hidden_size", &c.hidden_size, true)).ok()) return s;
  if (!(s = ReadInt(j, "intermediate_size", &c.intermediate_size, true)).ok()) return s;
  if (!(s = ReadInt(j, "num_hidden_layers", &c.num_layers, true)).ok()) return s;
  if (!(s = ReadInt(j, "num_attention_heads", &c.num_heads, true)).ok()) return s;
  c.num_kv_heads = c.num_heads;
  if (!(s = ReadInt(j, "num_key_value_heads", &c.num_kv_heads, false)).ok()) return s;
  c.head_dim = c.num_heads > 0 ? c.hidden_size / c.num_heads : 0;
  if (!(s = ReadInt(j, "head_dim", &c.head_dim, false)).ok()) return s;
  if (!(s = ReadInt(j, "max_position_embeddings", &c.max_position_embeddings, true)).ok()) {
    return s;
  }
  if (!(s = ReadDouble(j, "rms_norm_eps", "rms_norm_eps", &c.rms_norm_eps)).ok()) return s;
  c.rope_theta = 10000.0;  // transformers' LlamaConfig default
  if (!(s = ReadDouble(j, "rope_theta", "rope_theta", &c.rope_theta)).ok()) return s;
  if (const Json* t = JsonChild(j, "tie_word_embeddings"); t != nullptr) {
    if (!t->is_boolean()) {
      return Status::InvalidArgument(
          "config.json: field tie_word_embeddings must be a boolean, got " + t->dump());
    }
    c.tie_word_embeddings = t->get<bool>();
  }
  // transformers 5 writes rope_theta and the scaling together as one rope_parameters object.
  const Json* rs = JsonChild(j, "rope_scaling");
  std::string field = "rope_scaling";
  if (rs == nullptr && (rs = JsonChild(j, "rope_parameters")) != nullptr) {
    field = "rope_parameters";
    if (rs->is_object() && JsonChild(*rs, "rope_theta") != nullptr) {
      if (!(s = ReadDouble(*rs, "rope_theta", "rope_parameters.rope_theta", &c.rope_theta)).ok()) {
        return s;
      }
    }
  }
  if (rs != nullptr) {
    if (!rs->is_object()) {
      return Status::InvalidArgument("config.json: field " + field + " must be an object, got " +
                                     rs->dump());
    }
    const Json* type = JsonChild(*rs, "rope_type");
    if (type == nullptr) type = JsonChild(*rs, "type");
    if (type == nullptr || !type->is_string()) {
      return Status::InvalidArgument("config.json: field " + field +
                                     ".rope_type must be a string (\"llama3\")");
    }
    const std::string t = type->get<std::string>();
    if (t == "llama3") {
      c.rope_scaling.llama3 = true;
      if (!(s = ReadDouble(*rs, "factor", (field + ".factor").c_str(), &c.rope_scaling.factor))
               .ok()) {
        return s;
      }
      if (!(s = ReadDouble(*rs, "low_freq_factor", (field + ".low_freq_factor").c_str(),
                           &c.rope_scaling.low_freq_factor))
               .ok()) {
        return s;
      }
      if (!(s = ReadDouble(*rs, "high_freq_factor", (field + ".high_freq_factor").c_str(),
                           &c.rope_scaling.high_freq_factor))
               .ok()) {
        return s;
      }
      if (!(s = ReadInt(*rs, "original_max_position_embeddings",
                        &c.rope_scaling.original_max_position_embeddings, false,
                        (field + ".original_max_position_embeddings").c_str()))
               .ok()) {
        return s;
      }
    } else if (t != "default") {
      return Status::InvalidArgument("config.json: " + field + ".rope_type \"" + t +
                                     "\" is not supported (supported: llama3, default)");
    }
  }
  // Token ids stay those of the byte tokenizer (the checkpoint's own tokenizer is not used).
  if (s = c.Validate(); !s.ok()) return Status::InvalidArgument("config.json: " + s.message());
  return c;
}

Json ModelConfigToHfConfig(const ModelConfig& c) {
  Json j = {
      {"architectures", Json::array({"LlamaForCausalLM"})},
      {"model_type", "llama"},
      {"vocab_size", c.vocab_size},
      {"hidden_size", c.hidden_size},
      {"intermediate_size", c.intermediate_size},
      {"num_hidden_layers", c.num_layers},
      {"num_attention_heads", c.num_heads},
      {"num_key_value_heads", c.num_kv_heads},
      {"head_dim", c.head_dim},
      {"max_position_embeddings", c.max_position_embeddings},
      {"rms_norm_eps", c.rms_norm_eps},
      {"rope_theta", c.rope_theta},
      {"tie_word_embeddings", c.tie_word_embeddings},
      {"hidden_act", "silu"},
      {"torch_dtype", "float32"},
  };
  if (!c.name.empty() && c.name != "custom") j["_name_or_path"] = c.name;
  if (c.rope_scaling.llama3) {
    j["rope_scaling"] = {
        {"rope_type", "llama3"},
        {"factor", c.rope_scaling.factor},
        {"low_freq_factor", c.rope_scaling.low_freq_factor},
        {"high_freq_factor", c.rope_scaling.high_freq_factor},
        {"original_max_position_embeddings", c.rope_scaling.original_max_position_embeddings},
    };
  } else {
    j["rope_scaling"] = nullptr;
  }
  return j;
}

}  // namespace pdpool::agent
