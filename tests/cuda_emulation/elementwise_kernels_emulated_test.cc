// The cuda backend's elementwise and row kernel bodies (agent/engine/cuda/elementwise_kernels.cuh)
// run on the CPU under the warp emulator (warp_emulator.h) against host references: dummy
// weights bit-identical to DummyWeights before the bf16 rounding, embedding, fused residual +
// RMSNorm, the last-token gather, RoPE (llama3 frequencies from agent/model/rope.h) with the K/V
// cache write at the layout of kv_cache_layout.h, and SwiGLU. Label unit.
// clang-format off
// First: the CUDA builtins (threadIdx, __syncthreads, shuffles) that the kernel bodies use.
#include "tests/cuda_emulation/warp_emulator.h"
// clang-format on

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "agent/engine/cuda/elementwise_kernels.cuh"
#include "agent/model/model_config.h"
#include "agent/model/rope.h"
#include "agent/model/weights.h"
#include "tests/gpu/gpu_test_support.h"
#include "tests/gpu/paged_attention_case.h"

namespace pdpool::agent::cuda {
namespace {

using ::pdpool::cuda_emulation::RunGrid;
using ::pdpool::testing::FreshSeed;
using ::pdpool::testing::Poison;
using ::pdpool::testing::RandomBf16;
using ::pdpool::testing::RelativeError;
using ::pdpool::testing::RoundBf16;
using ::pdpool::testing::ToFloat;

ModelConfig SmallConfig() {
  ModelConfig c;
  c.name = "emulation-test";
  c.vocab_size = 300;
  c.hidden_size = 320;  // not a multiple of the 256 threads of a row block
  c.intermediate_size = 200;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 64;
  c.max_position_embeddings = 4096;
  c.rope_theta = 500000.0;
  c.rope_scaling.llama3 = true;
  c.rope_scaling.original_max_position_embeddings = 1024;
  return c;
}

TEST(EmulatedElementwiseTest, DummyInitIsDummyWeightsRoundedToBf16) {
  const ModelConfig c = SmallConfig();
  const uint64_t seed = 1234;
  const ModelWeights host = DummyWeights(c, seed);
  const std::vector<DummyTensorSpec> specs = DummyWeightSpecs(c, seed);
  // The embedding (uniform around 0) and the first norm (around 1).
  const std::vector<std::pair<size_t, const Tensor*>> checks = {{0, &host.embed},
                                                                {1, &host.layers[0].attn_norm}};
  for (const auto& [index, tensor] : checks) {
    const DummyTensorSpec& spec = specs[index];
    SCOPED_TRACE(spec.name);
    std::vector<bf16> out(tensor->data.size());
    Poison(out);
    const int64_t n = static_cast<int64_t>(out.size());
    RunGrid(dim3(7), 64, 0, [&](unsigned char*) {  // a grid-stride loop over several blocks
      DummyInitBody(out.data(), n, spec.stream, spec.bound, spec.center);
    });
    for (size_t i = 0; i < out.size(); ++i) {
      ASSERT_EQ(__bfloat162float(out[i]), RoundBf16(tensor->data[i])) << "element " << i;
    }
  }
}

TEST(EmulatedElementwiseTest, EmbeddingNormAndGatherMatchTheHost) {
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const int hidden = 320, rows = 3, vocab = 50;
  const float eps = 1e-5f;
  const std::vector<bf16> embed = RandomBf16(static_cast<size_t>(vocab) * hidden, rng, 1.0f);
  const std::vector<int32_t> tokens = {7, 0, 49};
  std::vector<float> x(static_cast<size_t>(rows) * hidden);
  Poison(x);
  RunGrid(dim3(rows), kRowThreads, 0,
          [&](unsigned char*) { EmbeddingBody(tokens.data(), embed.data(), x.data(), hidden); });
  for (int r = 0; r < rows; ++r) {
    for (int i = 0; i < hidden; ++i) {
      ASSERT_EQ(x[static_cast<size_t>(r * hidden + i)],
                __bfloat162float(embed[static_cast<size_t>(tokens[r] * hidden + i)]));
    }
  }

  // x += delta, then out = bf16(x / rms(x) · weight).
  const std::vector<bf16> delta = RandomBf16(x.size(), rng, 0.5f);
  const std::vector<bf16> weight = RandomBf16(static_cast<size_t>(hidden), rng, 2.0f);
  std::vector<double> expect_x(x.size());
  std::vector<float> expect_out(x.size());
  for (int r = 0; r < rows; ++r) {
    double sum_sq = 0;
    for (int i = 0; i < hidden; ++i) {
      const size_t k = static_cast<size_t>(r * hidden + i);
      expect_x[k] = double{x[k]} + __bfloat162float(delta[k]);
      sum_sq += expect_x[k] * expect_x[k];
    }
    const double inv = 1.0 / std::sqrt(sum_sq / hidden + eps);
    for (int i = 0; i < hidden; ++i) {
      const size_t k = static_cast<size_t>(r * hidden + i);
      expect_out[k] =
          static_cast<float>(expect_x[k] * inv * __bfloat162float(weight[static_cast<size_t>(i)]));
    }
  }
  std::vector<bf16> out(x.size());
  Poison(out);
  RunGrid(dim3(rows), kRowThreads, sizeof(float) * kRowThreads / 32, [&](unsigned char* shared) {
    AddRmsNormBody(x.data(), delta.data(), weight.data(), out.data(), hidden, eps,
                   reinterpret_cast<float*>(shared));
  });
  for (size_t k = 0; k < x.size(); ++k) ASSERT_NEAR(x[k], expect_x[k], 1e-5) << "x " << k;
  EXPECT_LE(RelativeError(ToFloat(out), expect_out), 1e-2);

  // The sampled rows: x[rows[j]] + delta[rows[j]].
  const std::vector<int32_t> picked = {2, 0};
  std::vector<float> gathered(picked.size() * hidden);
  Poison(gathered);
  RunGrid(dim3(static_cast<unsigned>(picked.size())), kRowThreads, 0, [&](unsigned char*) {
    GatherResidualBody(x.data(), delta.data(), picked.data(), gathered.data(), hidden);
  });
  for (size_t j = 0; j < picked.size(); ++j) {
    for (int i = 0; i < hidden; ++i) {
      const size_t k = static_cast<size_t>(picked[j] * hidden + i);
      ASSERT_EQ(gathered[j * hidden + static_cast<size_t>(i)], x[k] + __bfloat162float(delta[k]));
    }
  }
}

// qkv rows rotated at their positions: q into q_out, k and v into the cache slots; the rest of
// the cache is untouched.
TEST(EmulatedElementwiseTest, RopeRotatesQAndKAndWritesTheCacheSlots) {
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const ModelConfig c = SmallConfig();
  const int hd = c.head_dim, half = hd / 2, nh = c.num_heads, kvh = c.num_kv_heads;
  const int positions_in_table = 3000, rows = 3, block_size = 16, num_blocks = 4;
  const std::vector<double> inv_freq = RopeInverseFrequencies(c);
  std::vector<float2> table(static_cast<size_t>(positions_in_table) * half);
  for (int p = 0; p < positions_in_table; ++p) {
    for (int i = 0; i < half; ++i) {
      const double angle = p * inv_freq[static_cast<size_t>(i)];
      table[static_cast<size_t>(p * half + i)] =
          make_float2(static_cast<float>(std::cos(angle)), static_cast<float>(std::sin(angle)));
    }
  }
  const KvCacheGeometry g = MakeKvCacheGeometry(1, kvh, hd, block_size);
  const int width = (nh + 2 * kvh) * hd;
  const std::vector<bf16> qkv = RandomBf16(static_cast<size_t>(rows) * width, rng, 1.0f);
  const std::vector<int32_t> positions = {0, 17, 2999};
  const std::vector<int64_t> slots = {5, 2 * block_size + 15, 3 * block_size};
  std::vector<bf16> q_out(static_cast<size_t>(rows) * nh * hd);
  std::vector<bf16> cache(static_cast<size_t>(g.block_stride * num_blocks));
  Poison(q_out);
  Poison(cache);
  RunGrid(dim3(rows), kRowThreads, 0, [&](unsigned char*) {
    RopeAndCacheWriteBody(qkv.data(), positions.data(), slots.data(), table.data(), q_out.data(),
                          cache.data(), g, nh);
  });
  std::vector<bool> written(cache.size(), false);
  for (int r = 0; r < rows; ++r) {
    const bf16* src = qkv.data() + static_cast<size_t>(r) * width;
    // Rotate-half in double: (a, b) → (a cos − b sin, b cos + a sin).
    auto rotated = [&](int head, int d) {
      const int i = d % half;
      const double angle = positions[static_cast<size_t>(r)] * inv_freq[static_cast<size_t>(i)];
      const double a = __bfloat162float(src[head * hd + i]);
      const double b = __bfloat162float(src[head * hd + i + half]);
      return d < half ? a * std::cos(angle) - b * std::sin(angle)
                      : b * std::cos(angle) + a * std::sin(angle);
    };
    for (int h = 0; h < nh; ++h) {
      for (int d = 0; d < hd; ++d) {
        EXPECT_NEAR(__bfloat162float(q_out[static_cast<size_t>((r * nh + h) * hd + d)]),
                    rotated(h, d), 1e-2)
            << "q row " << r << " head " << h << " dim " << d;
      }
    }
    for (int h = 0; h < kvh; ++h) {
      for (int d = 0; d < hd; ++d) {
        const int64_t k_at = g.Offset(0, h, slots[static_cast<size_t>(r)]) + d;
        const int64_t v_at = g.Offset(1, h, slots[static_cast<size_t>(r)]) + d;
        EXPECT_NEAR(__bfloat162float(cache[static_cast<size_t>(k_at)]), rotated(nh + h, d), 1e-2)
            << "k row " << r << " head " << h << " dim " << d;
        EXPECT_EQ(__bfloat162float(cache[static_cast<size_t>(v_at)]),
                  __bfloat162float(src[(nh + kvh + h) * hd + d]))
            << "v row " << r << " head " << h << " dim " << d;
        written[static_cast<size_t>(k_at)] = written[static_cast<size_t>(v_at)] = true;
      }
    }
  }
  for (size_t k = 0; k < cache.size(); ++k) {
    if (!written[k]) {
      uint16_t bits;
      std::memcpy(&bits, &cache[k], sizeof(bits));
      ASSERT_EQ(bits, 0xFFFF) << "cache element " << k << " written outside the slots";
    }
  }
}

TEST(EmulatedElementwiseTest, SwiGluIsSiluOfGateTimesUp) {
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const int rows = 3, inter = 200;
  const std::vector<bf16> gate_up = RandomBf16(static_cast<size_t>(rows) * 2 * inter, rng, 6.0f);
  std::vector<bf16> out(static_cast<size_t>(rows) * inter);
  Poison(out);
  RunGrid(dim3(2), 256, 0, [&](unsigned char*) {  // fewer threads than elements: grid stride
    SwiGluBody(gate_up.data(), out.data(), rows, inter);
  });
  std::vector<float> expect(out.size());
  for (int r = 0; r < rows; ++r) {
    for (int i = 0; i < inter; ++i) {
      const double gate = __bfloat162float(gate_up[static_cast<size_t>(r * 2 * inter + i)]);
      const double up = __bfloat162float(gate_up[static_cast<size_t>(r * 2 * inter + inter + i)]);
      expect[static_cast<size_t>(r * inter + i)] =
          static_cast<float>(gate / (1.0 + std::exp(-gate)) * up);
    }
  }
  EXPECT_LE(RelativeError(ToFloat(out), expect), 1e-2);
}

}  // namespace
}  // namespace pdpool::agent::cuda
