// Tests for the safetensors reader/writer and weight loading: files written here byte by byte
// (F32, F16, BF16, single and sharded), every malformed-file error naming the file and tensor,
// half/bf16 conversions, deterministic dummy weights, and a test-tiny checkpoint saved from
// DummyWeights that serves the same logits as the weights it came from.
#include "agent/model/safetensors.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "agent/engine/cpu/cpu_backend.h"
#include "agent/model/model_config.h"
#include "agent/model/weights.h"

namespace pdpool::agent {
namespace {

namespace fs = std::filesystem;

// A tensor as raw bytes, for files written by hand.
struct RawTensor {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};

std::string F32Bytes(const std::vector<float>& v) {
  std::string s(v.size() * 4, '\0');
  std::memcpy(s.data(), v.data(), s.size());
  return s;
}

std::string U16Bytes(const std::vector<uint16_t>& v) {
  std::string s;
  for (uint16_t x : v) {
    s.push_back(static_cast<char>(x & 0xff));
    s.push_back(static_cast<char>(x >> 8));
  }
  return s;
}

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("pdpool_st_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Writes header + data. `edit` may change the header JSON before it is serialized;
  // header_len_override replaces the length prefix.
  std::string Write(const std::string& file, const std::vector<RawTensor>& tensors,
                    const std::function<void(Json*)>& edit = nullptr,
                    int64_t header_len_override = -1, const std::string& raw_header = "") {
    Json header = Json::object();
    header["__metadata__"] = {{"format", "pt"}};
    std::string data;
    for (const RawTensor& t : tensors) {
      header[t.name] = {{"dtype", t.dtype},
                        {"shape", t.shape},
                        {"data_offsets", {data.size(), data.size() + t.bytes.size()}}};
      data += t.bytes;
    }
    if (edit) edit(&header);
    const std::string h = raw_header.empty() ? header.dump() : raw_header;
    const uint64_t n =
        header_len_override >= 0 ? static_cast<uint64_t>(header_len_override) : h.size();
    const std::string path = (dir_ / file).string();
    std::ofstream out(path, std::ios::binary);
    for (int k = 0; k < 8; ++k) out.put(static_cast<char>((n >> (8 * k)) & 0xff));
    out << h << data;
    return path;
  }

  // The error of opening `path` as a checkpoint and reading `tensor` from it.
  static Status OpenAndRead(const std::string& path, const std::string& tensor) {
    StatusOr<SafetensorsCheckpoint> c = SafetensorsCheckpoint::Open(path);
    if (!c.ok()) return c.status();
    StatusOr<Tensor> t = c->Read(tensor);
    return t.ok() ? Status::Ok() : t.status();
  }

  static void ExpectErrorNames(const Status& s, const std::string& file,
                               const std::string& tensor) {
    EXPECT_FALSE(s.ok());
    EXPECT_NE(s.message().find(file), std::string::npos) << "file missing from: " << s.message();
    if (!tensor.empty()) {
      EXPECT_NE(s.message().find(tensor), std::string::npos)
          << "tensor missing from: " << s.message();
    }
  }

  fs::path dir_;
};

TEST_F(SafetensorsTest, ReadsF32F16Bf16Exactly) {
  // F16 bits: 1, -2.5, 65504 (max), 2^-14 (min normal), 2^-24 (min subnormal), 3·2^-24, -0, inf.
  const std::vector<uint16_t> f16 = {0x3c00, 0xc100, 0x7bff, 0x0400,
                                     0x0001, 0x0003, 0x8000, 0x7c00};
  const std::vector<float> f16_want = {1.0f,
                                       -2.5f,
                                       65504.0f,
                                       std::ldexp(1.0f, -14),
                                       std::ldexp(1.0f, -24),
                                       3 * std::ldexp(1.0f, -24),
                                       -0.0f,
                                       std::numeric_limits<float>::infinity()};
  // BF16 bits: 1, -2.5, 0.15625, 3.0e38-ish (0x7f7f), smallest normal, -inf.
  const std::vector<uint16_t> bf16 = {0x3f80, 0xc020, 0x3e20, 0x7f7f, 0x0080, 0xff80};
  const std::vector<float> f32 = {0.1f, -1e-30f, 123456.789f, 0.0f, -7.0f, 1e30f};
  const std::string path = Write("model.safetensors", {{"a", "F16", {2, 4}, U16Bytes(f16)},
                                                       {"b", "BF16", {6}, U16Bytes(bf16)},
                                                       {"c", "F32", {3, 2}, F32Bytes(f32)}});
  StatusOr<SafetensorsFile> f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ(f->metadata().value("format", ""), "pt");

  StatusOr<Tensor> a = f->Read("a");
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_EQ(a->shape, (std::vector<int64_t>{2, 4}));
  ASSERT_EQ(a->data.size(), f16_want.size());
  for (size_t i = 0; i < f16_want.size(); ++i) {
    EXPECT_EQ(std::bit_cast<uint32_t>(a->data[i]), std::bit_cast<uint32_t>(f16_want[i])) << i;
  }
  StatusOr<Tensor> b = f->Read("b");
  ASSERT_TRUE(b.ok());
  for (size_t i = 0; i < bf16.size(); ++i) {
    EXPECT_EQ(std::bit_cast<uint32_t>(b->data[i]), static_cast<uint32_t>(bf16[i]) << 16) << i;
  }
  EXPECT_EQ(b->data[0], 1.0f);
  EXPECT_EQ(b->data[1], -2.5f);
  EXPECT_EQ(b->data[2], 0.15625f);
  StatusOr<Tensor> c = f->Read("c");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->data, f32);
  EXPECT_EQ(f->Read("nope").status().code(), StatusCode::kNotFound);
}

// ReadBf16 (the cuda backend's loader): BF16 bytes exactly as stored, F16 and F32 rounded to
// nearest even, the same bits as FloatToBf16 of what Read returns.
TEST_F(SafetensorsTest, ReadsBf16FromEachDtype) {
  const std::vector<uint16_t> bf16 = {0x3f80, 0xc020, 0x7fc1, 0x0001, 0xff80};  // NaN payload kept
  const std::vector<uint16_t> f16 = {0x3c00, 0x0001, 0x7bff, 0xfc00, 0x3555};
  const std::vector<float> f32 = {0.1f, std::bit_cast<float>(0x3f808000u),
                                  std::bit_cast<float>(0x3f818000u), -1e30f, 3.0e38f};
  const std::string path = Write("model.safetensors", {{"b", "BF16", {5}, U16Bytes(bf16)},
                                                       {"h", "F16", {5}, U16Bytes(f16)},
                                                       {"f", "F32", {5}, F32Bytes(f32)}});
  StatusOr<SafetensorsFile> f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  std::vector<uint16_t> out(3, 0xdead);
  ASSERT_TRUE(f->ReadBf16("b", &out).ok());
  EXPECT_EQ(out, bf16);
  for (const char* name : {"h", "f"}) {
    ASSERT_TRUE(f->ReadBf16(name, &out).ok()) << name;
    const StatusOr<Tensor> as_float = f->Read(name);
    ASSERT_TRUE(as_float.ok());
    ASSERT_EQ(out.size(), as_float->data.size()) << name;
    for (size_t i = 0; i < out.size(); ++i) {
      EXPECT_EQ(out[i], FloatToBf16(as_float->data[i])) << name << " " << i;
    }
  }
  EXPECT_EQ(out[1], 0x3f80);  // F32 ties round to even: down here, up in the next
  EXPECT_EQ(out[2], 0x3f82);
  EXPECT_EQ(f->ReadBf16("nope", &out).code(), StatusCode::kNotFound);
}

TEST_F(SafetensorsTest, HalfConversionsRoundTripEveryValue) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = HalfToFloat(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(((h >> 10) & 0x1f) == 0x1f && (h & 0x3ff) != 0) << h;
      EXPECT_TRUE(std::isnan(HalfToFloat(FloatToHalf(f))));
      continue;
    }
    ASSERT_EQ(FloatToHalf(f), h) << "half bits " << h;
    ASSERT_EQ(FloatToBf16(Bf16ToFloat(static_cast<uint16_t>(h))), h) << "bf16 bits " << h;
  }
  // Round to nearest even at the halfway points.
  EXPECT_EQ(FloatToHalf(1.0f + std::ldexp(1.0f, -11)), 0x3c00);      // tie → even (down)
  EXPECT_EQ(FloatToHalf(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);  // tie → even (up)
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7c00);                          // rounds to infinity
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -25)), 0x0000);             // tie → even (zero)
  EXPECT_EQ(FloatToHalf(std::ldexp(3.0f, -26)), 0x0001);
  EXPECT_EQ(FloatToBf16(std::bit_cast<float>(0x3f808000u)), 0x3f80);  // tie → even (down)
  EXPECT_EQ(FloatToBf16(std::bit_cast<float>(0x3f818000u)), 0x3f82);  // tie → even (up)
}

TEST_F(SafetensorsTest, WriterRoundTripsEachDtype) {
  Tensor t{{2, 3}, {1.0f, -0.5f, 0.25f, 3.0f, -65504.0f, 0.0f}};
  for (SafetensorsDtype d :
       {SafetensorsDtype::kF32, SafetensorsDtype::kF16, SafetensorsDtype::kBF16}) {
    const std::string path =
        (dir_ / (std::string(SafetensorsDtypeName(d)) + ".safetensors")).string();
    std::vector<NamedTensor> named = {{"w", &t}};
    ASSERT_TRUE(WriteSafetensors(path, named, d).ok());
    StatusOr<SafetensorsFile> f = SafetensorsFile::Open(path);
    ASSERT_TRUE(f.ok()) << f.status().ToString();
    EXPECT_EQ(f->entries().at("w").dtype, SafetensorsDtypeName(d));
    StatusOr<Tensor> back = f->Read("w");
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(back->shape, t.shape);
    if (d == SafetensorsDtype::kBF16) {
      EXPECT_EQ(back->data[4], -65536.0f);  // nearest bf16 of -65504
      back->data[4] = t.data[4];
    }
    EXPECT_EQ(back->data, t.data) << SafetensorsDtypeName(d);
  }
}

TEST_F(SafetensorsTest, ShardedIndex) {
  Write("model-00001-of-00002.safetensors", {{"x", "F32", {2}, F32Bytes({1, 2})}});
  Write("model-00002-of-00002.safetensors", {{"y", "BF16", {1}, U16Bytes({0x4040})}});
  std::ofstream((dir_ / "model.safetensors.index.json").string())
      << R"({"metadata": {"total_size": 10}, "weight_map": {"x": "model-00001-of-00002.safetensors",
            "y": "model-00002-of-00002.safetensors"}})";
  for (const std::string& path :
       {dir_.string(), (dir_ / "model.safetensors.index.json").string()}) {
    StatusOr<SafetensorsCheckpoint> c = SafetensorsCheckpoint::Open(path);
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    EXPECT_EQ(c->TensorNames(), (std::vector<std::string>{"x", "y"}));
    EXPECT_EQ(c->Read("x")->data, (std::vector<float>{1, 2}));
    EXPECT_EQ(c->Read("y")->data, (std::vector<float>{3}));
    const std::vector<int64_t> want = {2, 1};
    Status s = c->Read("x", want).status();
    ExpectErrorNames(s, "model-00001-of-00002.safetensors", "\"x\"");
    EXPECT_NE(s.message().find("shape [2], expected [2, 1]"), std::string::npos) << s.message();
    std::vector<uint16_t> bits;
    ASSERT_TRUE(c->ReadBf16("y", std::vector<int64_t>{1}, &bits).ok());
    EXPECT_EQ(bits, (std::vector<uint16_t>{0x4040}));
    s = c->ReadBf16("x", want, &bits);
    ExpectErrorNames(s, "model-00001-of-00002.safetensors", "\"x\"");
    EXPECT_NE(s.message().find("shape [2], expected [2, 1]"), std::string::npos) << s.message();
    EXPECT_EQ(c->ReadBf16("z", want, &bits).code(), StatusCode::kNotFound);
  }
}

TEST_F(SafetensorsTest, MissingShardNamesShardAndTensor) {
  Write("a.safetensors", {{"x", "F32", {1}, F32Bytes({1})}});
  std::ofstream((dir_ / "model.safetensors.index.json").string())
      << R"({"weight_map": {"x": "a.safetensors", "model.norm.weight": "b.safetensors"}})";
  Status s = SafetensorsCheckpoint::Open(dir_.string()).status();
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  ExpectErrorNames(s, "b.safetensors", "model.norm.weight");
  EXPECT_NE(s.message().find("model.safetensors.index.json"), std::string::npos);
}

TEST_F(SafetensorsTest, MalformedFilesNameFileAndTensor) {
  const std::vector<RawTensor> good = {{"first", "F32", {2, 2}, F32Bytes({1, 2, 3, 4})},
                                       {"second", "F16", {3}, U16Bytes({1, 2, 3})}};
  {  // Truncated data: the last tensor's offsets run past the end of the file.
    const std::string p = Write("truncated.safetensors", good);
    fs::resize_file(p, fs::file_size(p) - 2);
    Status s = OpenAndRead(p, "first");
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    ExpectErrorNames(s, "truncated.safetensors", "second");
    EXPECT_NE(s.message().find("out of range"), std::string::npos) << s.message();
  }
  {  // Header length beyond the file.
    const std::string p = Write("longheader.safetensors", good, nullptr, 1 << 20);
    Status s = OpenAndRead(p, "first");
    ExpectErrorNames(s, "longheader.safetensors", "");
    EXPECT_NE(s.message().find("header length 1048576"), std::string::npos) << s.message();
  }
  {  // Too short to hold the header length at all.
    const std::string p = (dir_ / "tiny.safetensors").string();
    std::ofstream(p) << "abc";
    Status s = OpenAndRead(p, "first");
    ExpectErrorNames(s, "tiny.safetensors", "");
    EXPECT_NE(s.message().find("too short"), std::string::npos) << s.message();
  }
  {  // Corrupted header JSON.
    std::string h =
        Json{{"first", {{"dtype", "F32"}, {"shape", {1}}, {"data_offsets", {0, 4}}}}}.dump();
    h[0] = 'x';
    const std::string p =
        Write("badjson.safetensors", {{"first", "F32", {1}, F32Bytes({1})}}, nullptr, -1, h);
    Status s = OpenAndRead(p, "first");
    ExpectErrorNames(s, "badjson.safetensors", "");
    EXPECT_NE(s.message().find("JSON"), std::string::npos) << s.message();
  }
  {  // Unsupported (but well-formed) dtype: refused when read.
    const std::string p = Write("int.safetensors", {{"ids", "I32", {2}, F32Bytes({0, 0})}});
    Status s = OpenAndRead(p, "ids");
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    ExpectErrorNames(s, "int.safetensors", "ids");
    EXPECT_NE(s.message().find("I32"), std::string::npos) << s.message();
  }
  {  // Unknown dtype: refused at open.
    const std::string p = Write("q4.safetensors", {{"w", "Q4_K", {2}, "ab"}});
    Status s = OpenAndRead(p, "w");
    ExpectErrorNames(s, "q4.safetensors", "\"w\"");
    EXPECT_NE(s.message().find("Q4_K"), std::string::npos) << s.message();
  }
  {  // data_offsets whose size does not match shape × dtype.
    const std::string p = Write("offsets.safetensors", good, [](Json* h) {
      (*h)["first"]["shape"] = {2, 3};
    });
    Status s = OpenAndRead(p, "first");
    ExpectErrorNames(s, "offsets.safetensors", "first");
    EXPECT_NE(s.message().find("needs 24"), std::string::npos) << s.message();
  }
  {  // begin > end, negative offsets, bad shape entries.
    for (auto edit : std::vector<std::function<void(Json*)>>{
             [](Json* h) {
               (*h)["second"]["data_offsets"] = {16, 10};
             },
             [](Json* h) {
               (*h)["second"]["data_offsets"] = {-2, 4};
             },
             [](Json* h) { (*h)["second"]["shape"] = {-3}; },
             [](Json* h) { (*h)["second"]["shape"] = "3"; },
             [](Json* h) { (*h)["second"] = 5; },
         }) {
      const std::string p = Write("edited.safetensors", good, edit);
      Status s = OpenAndRead(p, "first");
      EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
      ExpectErrorNames(s, "edited.safetensors", "second");
    }
  }
  {  // Missing tensor.
    const std::string p = Write("model.safetensors", good);
    Status s = OpenAndRead(p, "third");
    EXPECT_EQ(s.code(), StatusCode::kNotFound);
    ExpectErrorNames(s, "model.safetensors", "third");
  }
  EXPECT_EQ(OpenAndRead((dir_ / "absent.safetensors").string(), "x").code(), StatusCode::kNotFound);
  fs::remove(dir_ / "model.safetensors");
  EXPECT_EQ(OpenAndRead(dir_.string(), "x").code(), StatusCode::kNotFound);
}

// ---------------------------------------------------------------------------------------------
// Weights: dummy determinism and checkpoints of test-tiny.

ModelConfig Tiny() { return ModelConfigFromPreset("test-tiny").value(); }

// FNV-1a of DummyWeights(test-tiny, seed 7), all tensors in order.
constexpr uint64_t kPinnedTinySeed7Hash = 13713633211417568632ull;

uint64_t Fnv1a(const ModelWeights& w) {
  uint64_t h = 1469598103934665603ull;
  auto add = [&](const Tensor& t) {
    for (float f : t.data) {
      uint32_t b = std::bit_cast<uint32_t>(f);
      for (int k = 0; k < 4; ++k) {
        h ^= (b >> (8 * k)) & 0xff;
        h *= 1099511628211ull;
      }
    }
  };
  add(w.embed);
  for (const LayerWeights& l : w.layers) {
    for (const Tensor* t :
         {&l.attn_norm, &l.wq, &l.wk, &l.wv, &l.wo, &l.mlp_norm, &l.w_gate, &l.w_up, &l.w_down}) {
      add(*t);
    }
  }
  add(w.final_norm);
  add(w.lm_head);
  return h;
}

TEST(WeightsTest, DummyWeightsAreDeterministicAndShaped) {
  ModelConfig c = Tiny();
  ModelWeights a = DummyWeights(c, 7);
  EXPECT_TRUE(CheckWeightShapes(c, a).ok());
  EXPECT_TRUE(a.lm_head.data.empty());  // tied
  EXPECT_EQ(Fnv1a(a), Fnv1a(DummyWeights(c, 7)));
  EXPECT_NE(Fnv1a(a), Fnv1a(DummyWeights(c, 8)));
  // Bounds: projections within ±1/sqrt(fan_in), norms within 1 ± 0.05, not all equal.
  for (float v : a.layers[0].w_down.data) ASSERT_LE(std::fabs(v), 1.0f / std::sqrt(192.0f));
  for (float v : a.layers[1].mlp_norm.data) ASSERT_NEAR(v, 1.0f, 0.05f);
  EXPECT_NE(a.layers[0].wq.data[0], a.layers[0].wq.data[1]);
  // Pinned: the same bytes on every machine and every release (IEEE arithmetic and an integer
  // hash only). If this changes, dummy-weight benchmarks are no longer comparable.
  EXPECT_EQ(Fnv1a(a), kPinnedTinySeed7Hash);

  StatusOr<ModelWeights> loaded = LoadWeights(c, "dummy:7");
  ASSERT_TRUE(loaded.ok());
  EXPECT_EQ(Fnv1a(*loaded), Fnv1a(a));
  EXPECT_EQ(Fnv1a(*LoadWeights(c, "dummy")), Fnv1a(DummyWeights(c, 0)));
  Status bad = LoadWeights(c, "dummy:x7").status();
  EXPECT_EQ(bad.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.message().find("dummy:x7"), std::string::npos);

  ModelConfig untied = c;
  untied.tie_word_embeddings = false;
  ModelWeights u = DummyWeights(untied, 7);
  EXPECT_EQ(u.lm_head.shape, (std::vector<int64_t>{512, 64}));
}

TEST_F(SafetensorsTest, SavedDummyCheckpointServesSameLogits) {
  ModelConfig c = Tiny();
  ModelWeights w = DummyWeights(c, 21);
  const std::string dir = (dir_ / "tiny").string();
  ASSERT_TRUE(SaveWeights(c, w, dir, "F32").ok());

  StatusOr<ModelConfig> resolved = ResolveModelConfig("auto", dir);
  ASSERT_TRUE(resolved.ok()) << resolved.status().ToString();
  EXPECT_EQ(resolved->ParamCount(), c.ParamCount());
  // A file path resolves config.json beside it too.
  EXPECT_TRUE(ResolveModelConfig("", dir + "/model.safetensors").ok());
  StatusOr<ModelWeights> loaded = LoadWeights(*resolved, dir);
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_EQ(Fnv1a(*loaded), Fnv1a(w));

  auto run = [](const ModelConfig& cfg, ModelWeights weights) {
    auto b = NewCpuBackend(cfg, std::move(weights), 16, 4).value();
    StepBatch batch;
    batch.want_logits = true;
    SequenceStep s;
    s.tokens = {256, 'h', 'e', 'l', 'l', 'o'};
    s.block_table = {0};
    s.sampling.temperature = 0;
    batch.sequences = {s};
    return b->Step(batch).value().logits[0];
  };
  const std::vector<float> direct = run(c, w);
  const std::vector<float> from_file = run(*resolved, std::move(loaded).value());
  ASSERT_EQ(direct.size(), from_file.size());
  EXPECT_EQ(std::memcmp(direct.data(), from_file.data(), direct.size() * 4), 0);

  // BF16 checkpoints load (rounded weights) and give close logits.
  const std::string dir16 = (dir_ / "tiny16").string();
  ASSERT_TRUE(SaveWeights(c, w, dir16, "BF16").ok());
  StatusOr<ModelWeights> w16 = LoadWeights(c, dir16);
  ASSERT_TRUE(w16.ok()) << w16.status().ToString();
  const std::vector<float> bf16 = run(c, std::move(w16).value());
  double diff = 0, scale = 0;
  for (size_t i = 0; i < direct.size(); ++i) {
    diff = std::max(diff, static_cast<double>(std::fabs(direct[i] - bf16[i])));
    scale = std::max(scale, static_cast<double>(std::fabs(direct[i])));
  }
  EXPECT_LT(diff / scale, 0.05);
}

// WeightTensorShapes lists what a saved checkpoint holds, in DummyWeightSpecs' order (the cuda
// backend lays its weights out by it).
TEST_F(SafetensorsTest, WeightTensorShapesAreTheCheckpointsTensors) {
  for (bool tied : {true, false}) {
    ModelConfig c = Tiny();
    c.tie_word_embeddings = tied;
    const std::vector<WeightTensorShape> shapes = WeightTensorShapes(c);
    const std::vector<DummyTensorSpec> specs = DummyWeightSpecs(c, 1);
    ASSERT_EQ(shapes.size(), specs.size());
    for (size_t i = 0; i < shapes.size(); ++i) {
      EXPECT_EQ(shapes[i].name, specs[i].name);
      EXPECT_EQ(shapes[i].shape, specs[i].shape);
    }
    const std::string dir = (dir_ / (tied ? "tied" : "untied")).string();
    ASSERT_TRUE(SaveWeights(c, DummyWeights(c, 1), dir, "BF16").ok());
    StatusOr<SafetensorsCheckpoint> ckpt = SafetensorsCheckpoint::Open(dir);
    ASSERT_TRUE(ckpt.ok()) << ckpt.status().ToString();
    EXPECT_EQ(ckpt->TensorNames().size(), shapes.size());
    std::vector<uint16_t> bits;
    for (const WeightTensorShape& t : shapes) {
      EXPECT_TRUE(ckpt->ReadBf16(t.name, t.shape, &bits).ok()) << t.name;
    }
  }
}

TEST_F(SafetensorsTest, LoadWeightsNamesMissingAndMisshapenTensors) {
  ModelConfig c = Tiny();
  ModelWeights w = DummyWeights(c, 1);
  const std::string dir = (dir_ / "ckpt").string();
  ASSERT_TRUE(SaveWeights(c, w, dir).ok());

  // A config with a different intermediate size: the MLP tensors' shapes no longer match.
  ModelConfig wider = c;
  wider.intermediate_size = 256;
  Status s = LoadWeights(wider, dir).status();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  ExpectErrorNames(s, "model.safetensors", "model.layers.0.mlp.gate_proj.weight");
  EXPECT_NE(s.message().find("shape [192, 64], expected [256, 64]"), std::string::npos)
      << s.message();

  // Untied config against a tied checkpoint: lm_head.weight is missing.
  ModelConfig untied = c;
  untied.tie_word_embeddings = false;
  s = LoadWeights(untied, dir).status();
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  ExpectErrorNames(s, "model.safetensors", "lm_head.weight");

  // More layers than the checkpoint has.
  ModelConfig deeper = c;
  deeper.num_layers = 3;
  s = LoadWeights(deeper, dir).status();
  ExpectErrorNames(s, "model.safetensors", "model.layers.2.input_layernorm.weight");
}

}  // namespace
}  // namespace pdpool::agent
