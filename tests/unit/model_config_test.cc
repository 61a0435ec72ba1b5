// Tests for ModelConfig (presets against published parameter counts and KV sizes, validation
// messages naming the field, Hugging Face config.json parsing) and the byte tokenizer.
#include "agent/model/model_config.h"

#include <gtest/gtest.h>

#include <fstream>
#include <string>
#include <vector>

#include "agent/model/tokenizer.h"
#include "agent/model/weights.h"

namespace pdpool::agent {
namespace {

ModelConfig Preset(const char* name) {
  StatusOr<ModelConfig> c = ModelConfigFromPreset(name);
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  return c.ok() ? c.value() : ModelConfig{};
}

TEST(ModelConfigTest, PresetParamCountsMatchPublishedSizes) {
  struct Case {
    const char* name;
    double published;
  };
  for (const Case& c : {Case{"llama-3.2-1b", 1.24e9}, Case{"llama-3.1-8b", 8.03e9},
                        Case{"llama-3.1-70b", 70.6e9}, Case{"llama-3.1-405b", 405.9e9}}) {
    const double got = static_cast<double>(Preset(c.name).ParamCount());
    EXPECT_NEAR(got / c.published, 1.0, 0.01) << c.name << ": " << got;
  }
  // Exact arithmetic for the 8B shape: 2·128256·4096 + 32·(2·4096²+2·4096·1024+3·4096·14336+2·4096)
  // + 4096.
  EXPECT_EQ(Preset("llama-3.1-8b").ParamCount(), 8030261248);
}

TEST(ModelConfigTest, KvBytesPerToken) {
  EXPECT_EQ(Preset("llama-3.1-8b").KvBytesPerToken(2), 131072);
  EXPECT_EQ(Preset("llama-3.1-70b").KvBytesPerToken(2), 327680);
  EXPECT_EQ(Preset("llama-3.1-405b").KvBytesPerToken(2), 516096);
  EXPECT_EQ(Preset("llama-3.2-1b").KvBytesPerToken(2), 32768);
  EXPECT_EQ(Preset("test-tiny").KvBytesPerToken(4), 2 * 2 * 2 * 16 * 4);
}

TEST(ModelConfigTest, PresetsAreValidAndUnknownNamesListThem) {
  const std::vector<std::string> names = ModelPresetNames();
  ASSERT_EQ(names.size(), 5u);
  for (const std::string& n : names) {
    ModelConfig c = Preset(n.c_str());
    EXPECT_EQ(c.name, n);
    EXPECT_TRUE(c.Validate().ok()) << n << ": " << c.Validate().ToString();
    EXPECT_EQ(c.bos_token_id, 256);
    EXPECT_EQ(c.eos_token_id, 257);
  }
  ModelConfig tiny = Preset("test-tiny");
  EXPECT_EQ(tiny.vocab_size, 512);
  EXPECT_EQ(tiny.head_dim, 16);
  EXPECT_TRUE(tiny.tie_word_embeddings);
  EXPECT_EQ(tiny.rope_scaling.original_max_position_embeddings, 1024);
  EXPECT_EQ(Preset("llama-3.2-1b").rope_scaling.factor, 32.0);

  StatusOr<ModelConfig> bad = ModelConfigFromPreset("llama-2-7b");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  for (const std::string& n : names) {
    EXPECT_NE(bad.status().message().find(n), std::string::npos) << bad.status().message();
  }
}

TEST(ModelConfigTest, ValidateNamesFieldAndLimit) {
  ModelConfig c = Preset("llama-3.1-8b");
  c.num_kv_heads = 6;
  EXPECT_EQ(c.Validate().message(), "num_heads (32) must be a multiple of num_kv_heads (6)");

  struct Case {
    void (*mutate)(ModelConfig*);
    const char* needle;
  };
  const Case cases[] = {
      {[](ModelConfig* m) { m->vocab_size = 100; }, "vocab_size (100)"},
      {[](ModelConfig* m) { m->vocab_size = 257; }, "258"},
      {[](ModelConfig* m) { m->hidden_size = 0; }, "hidden_size (0)"},
      {[](ModelConfig* m) { m->intermediate_size = -1; }, "intermediate_size"},
      {[](ModelConfig* m) { m->num_layers = 0; }, "num_layers"},
      {[](ModelConfig* m) { m->num_heads = 0; }, "num_heads"},
      {[](ModelConfig* m) { m->num_kv_heads = 64; }, "num_kv_heads (64)"},
      {[](ModelConfig* m) { m->head_dim = 127; }, "head_dim (127)"},
      {[](ModelConfig* m) { m->max_position_embeddings = 0; }, "max_position_embeddings"},
      {[](ModelConfig* m) { m->rms_norm_eps = 0; }, "rms_norm_eps"},
      {[](ModelConfig* m) { m->rope_theta = -1; }, "rope_theta"},
      {[](ModelConfig* m) { m->rope_scaling.high_freq_factor = 0.5; },
       "rope_scaling.high_freq_factor"},
      {[](ModelConfig* m) { m->rope_scaling.factor = 0.5; }, "rope_scaling.factor"},
      {[](ModelConfig* m) { m->eos_token_id = 200000; }, "eos_token_id"},
  };
  for (const Case& k : cases) {
    ModelConfig m = Preset("llama-3.1-8b");
    k.mutate(&m);
    Status s = m.Validate();
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << k.needle;
    EXPECT_NE(s.message().find(k.needle), std::string::npos) << s.message();
  }
}

// The config.json of meta-llama/Llama-3.1-8B (fields this engine reads, plus some it ignores).
Json Llama8bConfig() {
  return Json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "attention_bias": false, "bos_token_id": 128000,
    "eos_token_id": 128001, "hidden_act": "silu", "hidden_size": 4096,
    "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 131072,
    "mlp_bias": false, "model_type": "llama", "num_attention_heads": 32,
    "num_hidden_layers": 32, "num_key_value_heads": 8, "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
    "transformers_version": "4.43.0.dev0", "use_cache": true, "vocab_size": 128256})");
}

TEST(ModelConfigTest, ParsesHfConfigLikeThePreset) {
  StatusOr<ModelConfig> c = ModelConfigFromHfConfig(Llama8bConfig());
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  ModelConfig p = Preset("llama-3.1-8b");
  EXPECT_EQ(c->vocab_size, p.vocab_size);
  EXPECT_EQ(c->hidden_size, p.hidden_size);
  EXPECT_EQ(c->intermediate_size, p.intermediate_size);
  EXPECT_EQ(c->num_layers, p.num_layers);
  EXPECT_EQ(c->num_heads, p.num_heads);
  EXPECT_EQ(c->num_kv_heads, p.num_kv_heads);
  EXPECT_EQ(c->head_dim, 128);
  EXPECT_EQ(c->max_position_embeddings, p.max_position_embeddings);
  EXPECT_DOUBLE_EQ(c->rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c->rope_theta, 500000.0);
  EXPECT_TRUE(c->rope_scaling.llama3);
  EXPECT_DOUBLE_EQ(c->rope_scaling.factor, 8.0);
  EXPECT_EQ(c->rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_EQ(c->ParamCount(), p.ParamCount());
  // The byte tokenizer's ids, not the checkpoint's.
  EXPECT_EQ(c->bos_token_id, 256);
  EXPECT_EQ(c->eos_token_id, 257);
}

TEST(ModelConfigTest, HfConfigDefaultsAndLegacyRopeKey) {
  Json j = Llama8bConfig();
  j.erase("num_key_value_heads");
  j.erase("rope_scaling");
  j["rope_theta"] = 10000;  // an integer is a number too
  StatusOr<ModelConfig> c = ModelConfigFromHfConfig(j);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->num_kv_heads, 32);
  EXPECT_EQ(c->head_dim, 128);
  EXPECT_FALSE(c->rope_scaling.llama3);
  EXPECT_DOUBLE_EQ(c->rope_theta, 10000.0);

  j = Llama8bConfig();
  j["rope_scaling"].erase("rope_type");
  j["rope_scaling"]["type"] = "llama3";
  j["head_dim"] = 64;  // explicit head_dim wins over hidden/heads
  c = ModelConfigFromHfConfig(j);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_TRUE(c->rope_scaling.llama3);
  EXPECT_EQ(c->head_dim, 64);
}

// transformers 5 saves rope_theta and the llama3 scaling together as rope_parameters.
TEST(ModelConfigTest, HfConfigRopeParametersOfTransformers5) {
  Json j = Llama8bConfig();
  j.erase("rope_scaling");
  j.erase("rope_theta");
  j["rope_parameters"] = {{"rope_type", "llama3"},   {"rope_theta", 500000.0},
                          {"factor", 32.0},          {"low_freq_factor", 1.0},
                          {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
  StatusOr<ModelConfig> c = ModelConfigFromHfConfig(j);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_DOUBLE_EQ(c->rope_theta, 500000.0);
  EXPECT_TRUE(c->rope_scaling.llama3);
  EXPECT_DOUBLE_EQ(c->rope_scaling.factor, 32.0);

  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 250000.0}};
  c = ModelConfigFromHfConfig(j);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_DOUBLE_EQ(c->rope_theta, 250000.0);
  EXPECT_FALSE(c->rope_scaling.llama3);

  j["rope_parameters"] = {{"rope_type", "yarn"}, {"rope_theta", 250000.0}};
  c = ModelConfigFromHfConfig(j);
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("rope_parameters.rope_type"), std::string::npos)
      << c.status().message();
}

TEST(ModelConfigTest, HfConfigErrorsNameTheField) {
  struct Case {
    void (*mutate)(Json*);
    const char* needle;
  };
  const Case cases[] = {
      {[](Json* j) { j->erase("hidden_size"); }, "missing field hidden_size"},
      {[](Json* j) { (*j)["vocab_size"] = "big"; }, "vocab_size must be an integer"},
      {[](Json* j) { (*j)["num_hidden_layers"] = 2.5; }, "num_hidden_layers must be an integer"},
      {[](Json* j) { (*j)["rms_norm_eps"] = "small"; }, "rms_norm_eps must be a number"},
      {[](Json* j) { (*j)["tie_word_embeddings"] = 1; }, "tie_word_embeddings"},
      {[](Json* j) { (*j)["rope_scaling"]["rope_type"] = "yarn"; }, "rope_scaling.rope_type"},
      {[](Json* j) { (*j)["rope_scaling"]["factor"] = "8"; }, "rope_scaling.factor"},
      {[](Json* j) { (*j)["rope_scaling"]["original_max_position_embeddings"] = "x"; },
       "rope_scaling.original_max_position_embeddings"},
      {[](Json* j) { (*j)["num_key_value_heads"] = 6; }, "num_kv_heads (6)"},
      {[](Json* j) { (*j)["vocab_size"] = 200; }, "vocab_size (200)"},
  };
  for (const Case& k : cases) {
    Json j = Llama8bConfig();
    k.mutate(&j);
    StatusOr<ModelConfig> c = ModelConfigFromHfConfig(j);
    ASSERT_FALSE(c.ok()) << k.needle;
    EXPECT_EQ(c.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(c.status().message().find(k.needle), std::string::npos) << c.status().message();
  }
  EXPECT_FALSE(ModelConfigFromHfConfig(Json::array()).ok());
}

TEST(ModelConfigTest, HfConfigRoundTrip) {
  for (const std::string& n : ModelPresetNames()) {
    ModelConfig p = Preset(n.c_str());
    StatusOr<ModelConfig> c = ModelConfigFromHfConfig(ModelConfigToHfConfig(p));
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    EXPECT_EQ(c->name, n);
    EXPECT_EQ(c->ParamCount(), p.ParamCount());
    EXPECT_EQ(c->head_dim, p.head_dim);
    EXPECT_EQ(c->tie_word_embeddings, p.tie_word_embeddings);
    EXPECT_EQ(c->rope_scaling.factor, p.rope_scaling.factor);
    EXPECT_EQ(c->rope_theta, p.rope_theta);
  }
}

TEST(ModelConfigTest, ResolveModelConfigFromFlags) {
  StatusOr<ModelConfig> c = ResolveModelConfig("test-tiny", "dummy:3");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->name, "test-tiny");
  for (const char* flag : {"", "auto"}) {
    StatusOr<ModelConfig> bad = ResolveModelConfig(flag, "dummy:3");
    ASSERT_FALSE(bad.ok());
    EXPECT_NE(bad.status().message().find("test-tiny"), std::string::npos)
        << bad.status().message();
  }
  StatusOr<ModelConfig> missing = ResolveModelConfig("auto", "/nonexistent/pdpool/weights");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("/nonexistent/pdpool/weights"), std::string::npos)
      << missing.status().message();
  EXPECT_FALSE(ResolveModelConfig("llama-9", "dummy").ok());
}

TEST(ModelConfigTest, ExplicitShapeFromAConfigFile) {
  const std::string path = ::testing::TempDir() + "/pdpool-explicit-shape.json";
  ModelConfig shape = *ModelConfigFromPreset("test-tiny");
  shape.num_layers = 3;
  shape.hidden_size = 96;
  shape.num_heads = 6;
  std::ofstream(path) << ModelConfigToHfConfig(shape).dump();
  StatusOr<ModelConfig> c = ResolveModelConfig(path, "dummy:1");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->num_layers, 3);
  EXPECT_EQ(c->hidden_size, 96);
  std::ofstream(path) << "{not json";
  StatusOr<ModelConfig> bad = ResolveModelConfig(path, "dummy:1");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find(path), std::string::npos);
}

TEST(ByteTokenizerTest, RoundTripsBytesAndDropsSpecialIds) {
  ByteTokenizer tok;
  const std::string text = "héllo\n\x01\xff";
  std::vector<int32_t> ids = tok.Encode(text);
  ASSERT_EQ(ids.size(), text.size());
  for (int32_t id : ids) {
    EXPECT_GE(id, 0);
    EXPECT_LT(id, 256);
  }
  EXPECT_EQ(ids.back(), 255);
  EXPECT_EQ(tok.Decode(ids), text);
  std::vector<int32_t> with_special = {tok.bos_id(), 'h', 'i', tok.eos_id(), 300, -1, '!'};
  EXPECT_EQ(tok.Decode(with_special), "hi!");
  EXPECT_EQ(tok.bos_id(), 256);
  EXPECT_EQ(tok.eos_id(), 257);
  EXPECT_TRUE(tok.Encode("").empty());
}

}  // namespace
}  // namespace pdpool::agent
