// The cuda backend's whole forward against the cpu backend (the float32 oracle) on the same
// bf16-rounded dummy weights and fresh random prompts: prefill logits, decode continuation
// through captured graphs (decode GEMMs on cuBLAS, on the skinny GEMM and as measured; prefill
// attention on mma.sync, on wgmma and as measured),
// chunked prefill, graph replay against eager runs, KV export/import
// between two backends, and the errors a caller sees. Label gpu; skips without a GPU.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <memory>
#include <random>
#include <string>
#include <vector>

#include "agent/engine/backend.h"
#include "agent/engine/cpu/cpu_backend.h"
#include "agent/engine/cuda/cuda_backend.h"
#include "agent/engine/cuda/kernels.h"
#include "agent/model/weights.h"
#include "tests/gpu/gpu_test_support.h"

namespace pdpool::agent {
namespace {

using ::pdpool::testing::FreshSeed;
using ::pdpool::testing::RelativeError;
using ::pdpool::testing::RoundBf16;

constexpr uint64_t kWeightSeed = 7;
constexpr int kBlockSize = 16;

// A small Llama with the shapes the kernels support (head_dim 64, GQA group 4) and llama3 RoPE.
ModelConfig SmallConfig() {
  ModelConfig c;
  c.name = "gpu-test";
  c.vocab_size = 1000;
  c.hidden_size = 512;
  c.intermediate_size = 1024;
  c.num_layers = 3;
  c.num_heads = 8;
  c.num_kv_heads = 2;
  c.head_dim = 64;
  c.max_position_embeddings = 4096;
  c.rope_theta = 500000.0;
  c.rope_scaling.llama3 = true;
  c.rope_scaling.original_max_position_embeddings = 1024;
  return c;
}

std::unique_ptr<Backend> Cpu(const ModelConfig& c) {
  ModelWeights w = DummyWeights(c, kWeightSeed);
  // The GPU holds bf16 weights: the oracle computes in float32 on the same rounded values.
  auto round = [](Tensor& t) {
    for (float& x : t.data) x = RoundBf16(x);
  };
  round(w.embed);
  round(w.final_norm);
  round(w.lm_head);
  for (LayerWeights& l : w.layers) {
    for (Tensor* t :
         {&l.attn_norm, &l.wq, &l.wk, &l.wv, &l.wo, &l.mlp_norm, &l.w_gate, &l.w_up, &l.w_down}) {
      round(*t);
    }
  }
  auto b = NewCpuBackend(c, std::move(w), kBlockSize, 256);
  EXPECT_TRUE(b.ok()) << b.status().ToString();
  return b.ok() ? std::move(*b) : nullptr;
}

std::unique_ptr<Backend> Gpu(const ModelConfig& c, bool graphs = true,
                             DecodeGemm decode_gemm = DecodeGemm::kAuto,
                             PrefillAttention prefill_attention = PrefillAttention::kAuto) {
  CudaBackendOptions o;
  o.model = c;
  o.weights = "dummy:" + std::to_string(kWeightSeed);
  o.block_size = kBlockSize;
  o.num_blocks = 256;  // 8 slots of 32 blocks
  o.max_batched_tokens = 2048;
  o.max_sequences = 64;
  o.cuda_graphs = graphs;
  o.decode_gemm = decode_gemm;
  o.prefill_attention = prefill_attention;
  auto b = NewCudaBackend(o);
  EXPECT_TRUE(b.ok()) << b.status().ToString();
  return b.ok() ? std::move(*b) : nullptr;
}

std::vector<int32_t> RandomTokens(std::mt19937_64& rng, int n, int vocab) {
  std::uniform_int_distribution<int32_t> d(0, vocab - 1);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = d(rng);
  return t;
}

// Sequence slot i uses blocks [i·32, i·32 + 32): up to 512 positions.
SequenceStep Seq(uint64_t id, std::vector<int32_t> tokens, int start, int slot) {
  SequenceStep s;
  s.seq_id = id;
  s.tokens = std::move(tokens);
  s.start_position = start;
  for (int b = 0; b < 32; ++b) s.block_table.push_back(slot * 32 + b);
  s.sampling.temperature = 0;
  return s;
}

class CudaBackendTest : public ::testing::Test {
 protected:
  void SetUp() override { PDPOOL_SKIP_WITHOUT_GPU(); }
};

// Decode steps of 5 sequences take the GEMMs that decode_gemm says (steps of at most 8 rows);
// the prefill takes the attention kernel prefill_attention says (auto: the faster of the two
// at load where wgmma runs; wgmma is skipped on GPUs other than compute capability 9.0).
struct KernelChoice {
  DecodeGemm decode_gemm;
  PrefillAttention prefill_attention;
  const char* name;
};
class CudaBackendKernelChoiceTest : public ::testing::TestWithParam<KernelChoice> {
 protected:
  void SetUp() override { PDPOOL_SKIP_WITHOUT_GPU(); }
};

TEST_P(CudaBackendKernelChoiceTest, PrefillAndDecodeMatchTheCpuBackend) {
  if (GetParam().prefill_attention == PrefillAttention::kWgmma) {
    cudaDeviceProp prop{};
    ASSERT_EQ(cudaGetDeviceProperties(&prop, 0), cudaSuccess);
    if (!cuda::WgmmaPrefillAttentionSupported(prop.major, prop.minor)) {
      GTEST_SKIP() << "wgmma needs compute capability 9.0; " << prop.name << " has " << prop.major
                   << "." << prop.minor;
    }
  }
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const ModelConfig c = SmallConfig();
  auto cpu = Cpu(c);
  auto gpu = Gpu(c, true, GetParam().decode_gemm, GetParam().prefill_attention);
  ASSERT_TRUE(cpu && gpu);
  // One batch of prompts of several lengths (tile edges included), then decode steps that
  // feed back the cpu's greedy tokens to both.
  const std::vector<int> lengths = {1, 17, 64, 65, 300};
  StepBatch batch;
  batch.want_logits = true;
  for (size_t i = 0; i < lengths.size(); ++i) {
    batch.sequences.push_back(
        Seq(i, RandomTokens(rng, lengths[i], c.vocab_size), 0, static_cast<int>(i)));
  }
  for (int step = 0; step < 6; ++step) {
    SCOPED_TRACE("step " + std::to_string(step));
    auto want = cpu->Step(batch);
    auto got = gpu->Step(batch);
    ASSERT_TRUE(want.ok()) << want.status().ToString();
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    for (size_t i = 0; i < batch.sequences.size(); ++i) {
      const double error = RelativeError(got->logits[i], want->logits[i]);
      EXPECT_LE(error, 1e-2) << "sequence " << i;
      if (step == 0)
        RecordProperty("prefill_rel_error_" + std::to_string(i), std::to_string(error));
    }
    for (size_t i = 0; i < batch.sequences.size(); ++i) {
      SequenceStep& s = batch.sequences[i];
      s.start_position += static_cast<int>(s.tokens.size());
      s.tokens = {want->next_tokens[i]};
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Kernels, CudaBackendKernelChoiceTest,
    ::testing::Values(KernelChoice{DecodeGemm::kAuto, PrefillAttention::kAuto, "auto"},
                      KernelChoice{DecodeGemm::kCublas, PrefillAttention::kMma, "cublas_mma"},
                      KernelChoice{DecodeGemm::kSkinny, PrefillAttention::kWgmma, "skinny_wgmma"}),
    [](const ::testing::TestParamInfo<KernelChoice>& info) { return info.param.name; });

TEST_F(CudaBackendTest, ChunkedPrefillEqualsOneShotPrefill) {
  std::mt19937_64 rng(FreshSeed());
  const ModelConfig c = SmallConfig();
  auto gpu = Gpu(c);
  ASSERT_TRUE(gpu);
  const std::vector<int32_t> prompt = RandomTokens(rng, 200, c.vocab_size);
  StepBatch whole;
  whole.want_logits = true;
  whole.sequences.push_back(Seq(1, prompt, 0, 0));
  auto one_shot = gpu->Step(whole);
  ASSERT_TRUE(one_shot.ok()) << one_shot.status().ToString();
  int start = 0;
  StatusOr<StepResult> last = Status::Internal("no chunk ran");
  for (int chunk : {70, 64, 66}) {
    StepBatch b;
    b.want_logits = true;
    SequenceStep s = Seq(
        2, std::vector<int32_t>(prompt.begin() + start, prompt.begin() + start + chunk), start, 1);
    s.sample = start + chunk == 200;
    b.sequences.push_back(s);
    last = gpu->Step(b);
    ASSERT_TRUE(last.ok()) << last.status().ToString();
    start += chunk;
  }
  EXPECT_LE(RelativeError(last->logits[0], one_shot->logits[0]), 1e-2);
  EXPECT_EQ(last->next_tokens[0], one_shot->next_tokens[0]);
}

TEST_F(CudaBackendTest, GraphReplayEqualsEagerAndPaddingIsInvisible) {
  std::mt19937_64 rng(FreshSeed());
  const ModelConfig c = SmallConfig();
  auto graphs = Gpu(c, true);
  auto eager = Gpu(c, false);
  ASSERT_TRUE(graphs && eager);
  StepBatch prefill;
  for (int i = 0; i < 5; ++i) {  // 5 sequences: the graph runs the bucket of 8, 3 rows padding
    prefill.sequences.push_back(Seq(i, RandomTokens(rng, 40 + 7 * i, c.vocab_size), 0, i));
  }
  auto a = graphs->Step(prefill);
  auto b = eager->Step(prefill);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_EQ(a->next_tokens, b->next_tokens);
  StepBatch decode = prefill;
  decode.want_logits = true;
  for (size_t i = 0; i < decode.sequences.size(); ++i) {
    decode.sequences[i].start_position = static_cast<int>(prefill.sequences[i].tokens.size());
    decode.sequences[i].tokens = {a->next_tokens[i]};
  }
  for (int step = 0; step < 4; ++step) {
    auto ga = graphs->Step(decode);
    auto eb = eager->Step(decode);
    ASSERT_TRUE(ga.ok()) << ga.status().ToString();
    ASSERT_TRUE(eb.ok()) << eb.status().ToString();
    for (size_t i = 0; i < decode.sequences.size(); ++i) {
      EXPECT_LE(RelativeError(ga->logits[i], eb->logits[i]), 1e-3) << "sequence " << i;
      decode.sequences[i].start_position += 1;
      decode.sequences[i].tokens = {ga->next_tokens[i]};
    }
  }
}

// A decode graph samples every row of its bucket; a row the batch does not sample (a one-token
// prompt chunk that is not the last) must still get no token, whichever batch captured it.
TEST_F(CudaBackendTest, UnsampledRowOfAGraphBatchGetsNoToken) {
  std::mt19937_64 rng(FreshSeed());
  const ModelConfig c = SmallConfig();
  auto graphs = Gpu(c, true);
  auto eager = Gpu(c, false);
  ASSERT_TRUE(graphs && eager);
  StepBatch prefill;
  for (int i = 0; i < 3; ++i) {
    prefill.sequences.push_back(Seq(i, RandomTokens(rng, 20 + i, c.vocab_size), 0, i));
  }
  auto first = eager->Step(prefill);
  ASSERT_TRUE(first.ok() && graphs->Step(prefill).ok());
  StepBatch decode = prefill;
  for (size_t i = 0; i < decode.sequences.size(); ++i) {
    decode.sequences[i].start_position = static_cast<int>(prefill.sequences[i].tokens.size());
    decode.sequences[i].tokens = {first->next_tokens[i]};
  }
  for (bool capture_with_all_sampled : {true, false}) {
    StepBatch b = decode;
    if (!capture_with_all_sampled) b.sequences[1].sample = false;
    auto g = graphs->Step(b);
    auto e = eager->Step(b);
    ASSERT_TRUE(g.ok()) << g.status().ToString();
    ASSERT_TRUE(e.ok()) << e.status().ToString();
    EXPECT_EQ(g->next_tokens, e->next_tokens);
    EXPECT_EQ(g->next_tokens[1], capture_with_all_sampled ? e->next_tokens[1] : -1);
  }
}

TEST_F(CudaBackendTest, ExportedKvImportedIntoAnotherBackendContinuesTheSequence) {
  std::mt19937_64 rng(FreshSeed());
  const ModelConfig c = SmallConfig();
  auto prefill = Gpu(c);
  auto decode = Gpu(c);
  ASSERT_TRUE(prefill && decode);
  const std::vector<int32_t> prompt = RandomTokens(rng, 50, c.vocab_size);  // 3 full blocks + 2
  StepBatch b;
  b.sequences.push_back(Seq(1, prompt, 0, 0));
  auto first = prefill->Step(b);
  ASSERT_TRUE(first.ok());
  const SequenceStep& s = b.sequences[0];
  for (int blk = 0; blk < 4; ++blk) {
    const int tokens = blk < 3 ? kBlockSize : 2;
    std::string wire;
    ASSERT_TRUE(
        prefill->ExportKvBlock(s.block_table[static_cast<size_t>(blk)], tokens, &wire).ok());
    ASSERT_TRUE(decode->ImportKvBlock(100 + blk, tokens, wire).ok());
  }
  StepBatch on_prefill, on_decode;
  on_prefill.want_logits = on_decode.want_logits = true;
  SequenceStep next = Seq(1, {first->next_tokens[0]}, 50, 0);
  on_prefill.sequences.push_back(next);
  next.block_table = {100, 101, 102, 103};
  on_decode.sequences.push_back(next);
  auto x = prefill->Step(on_prefill);
  auto y = decode->Step(on_decode);
  ASSERT_TRUE(x.ok() && y.ok());
  EXPECT_LE(RelativeError(y->logits[0], x->logits[0]), 1e-6);
  EXPECT_EQ(y->next_tokens[0], x->next_tokens[0]);
  // A wrong payload size is refused, naming the sizes.
  Status bad = decode->ImportKvBlock(0, 3, "short");
  EXPECT_EQ(bad.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.message().find("bytes"), std::string::npos) << bad.message();
}

TEST_F(CudaBackendTest, ErrorsNameWhatIsWrong) {
  const ModelConfig c = SmallConfig();
  CudaBackendOptions o;
  o.model = c;
  o.num_blocks = 16;
  o.device = 999;
  auto missing = NewCudaBackend(o);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("device 999"), std::string::npos);
  o.device = 0;
  o.model.head_dim = 96;
  o.model.hidden_size = 96 * 8;
  auto shape = NewCudaBackend(o);
  ASSERT_FALSE(shape.ok());
  EXPECT_NE(shape.status().message().find("head_dim 96"), std::string::npos);

  auto gpu = Gpu(c);
  ASSERT_TRUE(gpu);
  StepBatch b;
  b.sequences.push_back(Seq(1, {1, 2, 3}, 0, 0));
  b.sequences[0].block_table = {9999};
  auto r = gpu->Step(b);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("block_table[0] = 9999"), std::string::npos)
      << r.status().message();
  EXPECT_NE(gpu->device_kv(), nullptr);
  EXPECT_EQ(gpu->device_kv()->device_uuid.rfind("GPU-", 0), 0u);
}

// Runs without a GPU too: the names a worker's --decode-gemm and --prefill-attention take.
TEST(KernelChoiceTest, NamesParseAndOthersAreRefusedWithTheChoices) {
  EXPECT_EQ(*ParseDecodeGemm("auto"), DecodeGemm::kAuto);
  EXPECT_EQ(*ParseDecodeGemm("cublas"), DecodeGemm::kCublas);
  EXPECT_EQ(*ParseDecodeGemm("skinny"), DecodeGemm::kSkinny);
  const auto bad = ParseDecodeGemm("fast");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("auto, cublas or skinny"), std::string::npos)
      << bad.status().message();
  EXPECT_EQ(*ParsePrefillAttention("auto"), PrefillAttention::kAuto);
  EXPECT_EQ(*ParsePrefillAttention("mma"), PrefillAttention::kMma);
  EXPECT_EQ(*ParsePrefillAttention("wgmma"), PrefillAttention::kWgmma);
  const auto bad_attention = ParsePrefillAttention("fa3");
  ASSERT_FALSE(bad_attention.ok());
  EXPECT_NE(bad_attention.status().message().find("auto, mma or wgmma"), std::string::npos);
}

}  // namespace
}  // namespace pdpool::agent
