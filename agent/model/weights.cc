// Model weights: deterministic dummy weights, loading from and saving to safetensors with
// Hugging Face names, and model-config resolution from flags.
#include "agent/model/weights.h"

#include <charconv>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <type_traits>
#include <utility>

#include "agent/model/safetensors.h"

namespace pdpool::agent {
namespace {

namespace fs = std::filesystem;

uint64_t Mix(uint64_t x) {
  uint64_t z = x + 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

enum class Init { kMatrix, kNorm };

// One tensor of the model: its HF name, where it lives, its shape and how dummy weights fill it.
template <typename TensorT>
struct Slot {
  std::string name;
  TensorT* tensor;
  std::vector<int64_t> shape;
  Init init;
  int64_t fan_in;
};

// Every tensor in a fixed order (the order fixes dummy weights' streams). `layers` must already
// have num_layers entries. lm_head is listed only when not tied.
template <typename W,
          typename TensorT = std::conditional_t<std::is_const_v<W>, const Tensor, Tensor>>
std::vector<Slot<TensorT>> Slots(const ModelConfig& c, W& w) {
  const int64_t h = c.hidden_size, inter = c.intermediate_size, v = c.vocab_size;
  const int64_t q = int64_t{c.num_heads} * c.head_dim, kv = int64_t{c.num_kv_heads} * c.head_dim;
  std::vector<Slot<TensorT>> s;
  s.push_back({"model.embed_tokens.weight", &w.embed, {v, h}, Init::kMatrix, h});
  for (int i = 0; i < c.num_layers; ++i) {
    auto& l = w.layers[static_cast<size_t>(i)];
    const std::string p = "model.layers." + std::to_string(i) + ".";
    s.push_back({p + "input_layernorm.weight", &l.attn_norm, {h}, Init::kNorm, 0});
    s.push_back({p + "self_attn.q_proj.weight", &l.wq, {q, h}, Init::kMatrix, h});
    s.push_back({p + "self_attn.k_proj.weight", &l.wk, {kv, h}, Init::kMatrix, h});
    s.push_back({p + "self_attn.v_proj.weight", &l.wv, {kv, h}, Init::kMatrix, h});
    s.push_back({p + "self_attn.o_proj.weight", &l.wo, {h, q}, Init::kMatrix, q});
    s.push_back({p + "post_attention_layernorm.weight", &l.mlp_norm, {h}, Init::kNorm, 0});
    s.push_back({p + "mlp.gate_proj.weight", &l.w_gate, {inter, h}, Init::kMatrix, h});
    s.push_back({p + "mlp.up_proj.weight", &l.w_up, {inter, h}, Init::kMatrix, h});
    s.push_back({p + "mlp.down_proj.weight", &l.w_down, {h, inter}, Init::kMatrix, inter});
  }
  s.push_back({"model.norm.weight", &w.final_norm, {h}, Init::kNorm, 0});
  if (!c.tie_word_embeddings) s.push_back({"lm_head.weight", &w.lm_head, {v, h}, Init::kMatrix, h});
  return s;
}

int64_t Product(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

}  // namespace

int64_t Tensor::NumElements() const { return Product(shape); }
int64_t WeightTensorShape::NumElements() const { return Product(shape); }

std::vector<WeightTensorShape> WeightTensorShapes(const ModelConfig& config) {
  ModelWeights shapes_only;
  shapes_only.layers.resize(static_cast<size_t>(config.num_layers));
  std::vector<WeightTensorShape> shapes;
  for (const Slot<Tensor>& s : Slots(config, shapes_only)) shapes.push_back({s.name, s.shape});
  return shapes;
}

std::vector<DummyTensorSpec> DummyWeightSpecs(const ModelConfig& config, uint64_t seed) {
  ModelWeights shapes_only;
  shapes_only.layers.resize(static_cast<size_t>(config.num_layers));
  std::vector<Slot<Tensor>> slots = Slots(config, shapes_only);
  std::vector<DummyTensorSpec> specs;
  specs.reserve(slots.size());
  for (size_t t = 0; t < slots.size(); ++t) {
    const Slot<Tensor>& s = slots[t];
    DummyTensorSpec spec;
    spec.name = s.name;
    spec.shape = s.shape;
    spec.stream = Mix(seed ^ Mix(0x5eed0000ull + t));
    // IEEE sqrt and division are correctly rounded: the same bound everywhere.
    spec.bound = s.init == Init::kNorm ? 0.05 : 1.0 / std::sqrt(static_cast<double>(s.fan_in));
    spec.center = s.init == Init::kNorm ? 1.0 : 0.0;
    specs.push_back(std::move(spec));
  }
  return specs;
}

ModelWeights DummyWeights(const ModelConfig& config, uint64_t seed) {
  ModelWeights w;
  w.layers.resize(static_cast<size_t>(config.num_layers));
  std::vector<Slot<Tensor>> slots = Slots(config, w);
  const std::vector<DummyTensorSpec> specs = DummyWeightSpecs(config, seed);
  for (size_t t = 0; t < slots.size(); ++t) {
    Slot<Tensor>& s = slots[t];
    const DummyTensorSpec& spec = specs[t];
    s.tensor->shape = s.shape;
    s.tensor->data.resize(static_cast<size_t>(Product(s.shape)));
    std::vector<float>& d = s.tensor->data;
    for (size_t i = 0; i < d.size(); ++i) {
      const uint64_t x = Mix(spec.stream + (static_cast<uint64_t>(i) + 1) * 0x9E3779B97F4A7C15ull);
      const double u = static_cast<double>(x >> 40) * (1.0 / 16777216.0);  // [0, 1), 24 bits
      d[i] = static_cast<float>(spec.center + (2.0 * u - 1.0) * spec.bound);
    }
  }
  return w;
}

Status CheckWeightShapes(const ModelConfig& config, const ModelWeights& weights) {
  if (weights.layers.size() != static_cast<size_t>(config.num_layers)) {
    return Status::InvalidArgument("weights have " + std::to_string(weights.layers.size()) +
                                   " layers, the model " + std::to_string(config.num_layers));
  }
  for (const Slot<const Tensor>& s : Slots(config, weights)) {
    if (s.tensor->shape != s.shape ||
        static_cast<int64_t>(s.tensor->data.size()) != Product(s.shape)) {
      return Status::InvalidArgument(
          "tensor " + s.name + ": shape " + ShapeString(s.tensor->shape) + " with " +
          std::to_string(s.tensor->data.size()) + " values, expected " + ShapeString(s.shape));
    }
  }
  if (config.tie_word_embeddings && !weights.lm_head.data.empty()) {
    return Status::InvalidArgument("lm_head must be empty when tie_word_embeddings is set");
  }
  return Status::Ok();
}

StatusOr<ModelWeights> LoadWeights(const ModelConfig& config, std::string_view spec) {
  if (Status s = config.Validate(); !s.ok()) return s;
  if (spec == "dummy" || spec.starts_with("dummy:")) {
    uint64_t seed = 0;
    if (spec.size() > 6) {
      const std::string_view digits = spec.substr(6);
      auto [ptr, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), seed);
      if (ec != std::errc() || ptr != digits.data() + digits.size()) {
        return Status::InvalidArgument(
            "weights \"" + std::string(spec) +
            "\": the seed after dummy: must be an unsigned 64-bit integer");
      }
    }
    return DummyWeights(config, seed);
  }
  StatusOr<SafetensorsCheckpoint> ckpt = SafetensorsCheckpoint::Open(std::string(spec));
  if (!ckpt.ok()) return ckpt.status();
  ModelWeights w;
  w.layers.resize(static_cast<size_t>(config.num_layers));
  for (Slot<Tensor>& s : Slots(config, w)) {
    StatusOr<Tensor> t = ckpt->Read(s.name, s.shape);
    if (!t.ok()) return t.status();
    *s.tensor = std::move(t).value();
  }
  return w;
}

namespace {

// A Hugging Face config.json: the explicit shape of a model.
StatusOr<ModelConfig> ReadHfConfigFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::NotFound("model config " + path + " not found");
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const Json j = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Status::InvalidArgument(path + ": not valid JSON");
  StatusOr<ModelConfig> c = ModelConfigFromHfConfig(j);
  if (!c.ok()) {
    std::string m = c.status().message();
    if (m.starts_with("config.json: ")) m = m.substr(13);
    return Status::InvalidArgument(path + ": " + m);
  }
  return c;
}

}  // namespace

StatusOr<ModelConfig> ResolveModelConfig(std::string_view model_flag,
                                         std::string_view weights_spec) {
  if (model_flag.ends_with(".json")) return ReadHfConfigFile(std::string(model_flag));
  if (!model_flag.empty() && model_flag != "auto") return ModelConfigFromPreset(model_flag);
  if (weights_spec == "dummy" || weights_spec.starts_with("dummy:") || weights_spec.empty()) {
    std::string valid;
    for (const std::string& n : ModelPresetNames()) valid += (valid.empty() ? "" : ", ") + n;
    return Status::InvalidArgument(
        "model \"auto\" reads config.json beside the weights; with weights \"" +
        std::string(weights_spec) + "\" name a preset (one of: " + valid +
        ") or a config.json file with the shape");
  }
  std::error_code ec;
  const fs::path p(weights_spec);
  if (!fs::exists(p, ec)) {
    return Status::NotFound("model \"auto\": weights path " + p.string() + " not found");
  }
  const fs::path dir = fs::is_directory(p, ec) ? p : p.parent_path();
  return ReadHfConfigFile((dir / "config.json").string());
}

Status SaveWeights(const ModelConfig& config, const ModelWeights& weights, const std::string& dir,
                   std::string_view dtype) {
  StatusOr<SafetensorsDtype> d = ParseSafetensorsDtype(dtype);
  if (!d.ok()) return d.status();
  if (Status s = CheckWeightShapes(config, weights); !s.ok()) return s;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return Status::InvalidArgument("cannot create " + dir + ": " + ec.message());
  std::vector<NamedTensor> named;
  for (const Slot<const Tensor>& s : Slots(config, weights)) named.push_back({s.name, s.tensor});
  const std::string file = (fs::path(dir) / "model.safetensors").string();
  if (Status s = WriteSafetensors(file, named, *d, Json{{"format", "pt"}}); !s.ok()) return s;
  const std::string cfg_path = (fs::path(dir) / "config.json").string();
  std::ofstream out(cfg_path, std::ios::trunc);
  out << ModelConfigToHfConfig(config).dump(2) << "\n";
  out.close();
  if (!out) return Status::InvalidArgument("cannot write " + cfg_path);
  return Status::Ok();
}

}  // namespace pdpool::agent
