// The cuda backend's attention and sampling kernels against float64 references on the host,
// on fresh random inputs each run (seed printed; PDPOOL_TEST_SEED replays one): paged decode
// attention over random block tables and context lengths, split several ways; causal prefill
// attention with earlier context in the cache; greedy and top-p sampling. Outputs are poisoned
// with NaN before each launch, so an element left unwritten fails. Label gpu; skips without a GPU.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <string>
#include <tuple>
#include <random>
#include <vector>

#include "agent/engine/cuda/kernels.h"
#include "agent/engine/cuda/kv_cache_layout.h"
#include "agent/engine/sampling.h"
#include "tests/gpu/gpu_test_support.h"
#include "tests/gpu/paged_attention_case.h"
#include "tests/gpu/sampling_cases.h"
#include "tests/gpu/skinny_gemm_case.h"

namespace pdpool::agent::cuda {
namespace {

using ::pdpool::testing::AbsorbedRangeBatch;
using ::pdpool::testing::AbsorbedRangeCase;
using ::pdpool::testing::AbsorbedRangeDraws;
using ::pdpool::testing::CpuGreedy;
using ::pdpool::testing::DescribeMismatch;
using ::pdpool::testing::ExpectAllInAbsorbedRange;
using ::pdpool::testing::ExpectNucleusDraws;
using ::pdpool::testing::ExpectSkinnyGemmOutput;
using ::pdpool::testing::FlatRow;
using ::pdpool::testing::FreshSeed;
using ::pdpool::testing::GreedyRows;
using ::pdpool::testing::MakeCase;
using ::pdpool::testing::MakeSkinnyGemmCase;
using ::pdpool::testing::NormalRow;
using ::pdpool::testing::PagedCase;
using ::pdpool::testing::Reference;
using ::pdpool::testing::RelativeError;
using ::pdpool::testing::RoundBf16;
using ::pdpool::testing::RowSampler;
using ::pdpool::testing::SampleBatch;
using ::pdpool::testing::SkinnyGemmCase;
using ::pdpool::testing::SkinnyGemmShape;
using ::pdpool::testing::SkinnyGemmShapeName;
using ::pdpool::testing::TiedThresholdRow;
using ::pdpool::testing::ToFloat;

#define ASSERT_CUDA(call) \
  ASSERT_EQ((call), cudaSuccess) << #call << ": " << cudaGetErrorString(cudaGetLastError())

template <typename T>
struct Device {
  T* ptr = nullptr;
  size_t n = 0;
  explicit Device(size_t count) : n(count) {
    if (cudaMalloc(reinterpret_cast<void**>(&ptr), std::max<size_t>(count, 1) * sizeof(T)) !=
        cudaSuccess) {
      ptr = nullptr;
    }
  }
  ~Device() { cudaFree(ptr); }
  void Upload(const std::vector<T>& host) {
    cudaMemcpy(ptr, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice);
  }
  std::vector<T> Download() const {
    std::vector<T> host(n);
    cudaMemcpy(host.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost);
    return host;
  }
  void Poison() { cudaMemset(ptr, 0xFF, n * sizeof(T)); }  // bf16 0xFFFF and fp32 0xFFFFFFFF: NaN
};

class AttentionKernelTest : public ::testing::TestWithParam<std::tuple<int, int>> {
 protected:
  void SetUp() override { PDPOOL_SKIP_WITHOUT_GPU(); }
};

TEST_P(AttentionKernelTest, DecodeMatchesFloat64Reference) {
  const auto [head_dim, group] = GetParam();
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> context(0, 1500);
  std::vector<std::pair<int, int>> seqs;
  for (int i = 0; i < 7; ++i) seqs.push_back({context(rng), 1});
  seqs.push_back({0, 1});  // a one-token context
  PagedCase c = MakeCase(rng, head_dim, 2, group, seqs);
  const std::vector<float> ref = Reference(c);
  for (int splits : {1, 3, 16}) {
    SCOPED_TRACE("num_splits " + std::to_string(splits));
    Device<bf16> cache(c.cache.size()), q(c.q.size()), out(c.q.size());
    Device<SeqMeta> meta(c.meta.size());
    Device<int32_t> tables(c.tables.size()), index(c.meta.size());
    Device<float> partial(static_cast<size_t>(
        DecodePartialFloats(static_cast<int>(c.meta.size()), c.num_heads, splits, head_dim)));
    cache.Upload(c.cache);
    q.Upload(c.q);
    meta.Upload(c.meta);
    tables.Upload(c.tables);
    std::vector<int32_t> all(c.meta.size());
    std::iota(all.begin(), all.end(), 0);
    index.Upload(all);
    out.Poison();
    ASSERT_TRUE(LaunchDecodeAttention(q.ptr, meta.ptr, index.ptr, static_cast<int>(all.size()),
                                      tables.ptr, cache.ptr, c.g, c.num_heads, splits, partial.ptr,
                                      out.ptr, nullptr)
                    .ok());
    ASSERT_CUDA(cudaDeviceSynchronize());
    const std::vector<float> got = ToFloat(out.Download());
    const double error = RelativeError(got, ref);
    EXPECT_LE(error, 1e-2) << DescribeMismatch(got, ref, c.num_heads, head_dim);
    RecordProperty("decode_rel_error_splits_" + std::to_string(splits), std::to_string(error));
  }
}

TEST_P(AttentionKernelTest, PrefillMatchesFloat64Reference) {
  const auto [head_dim, group] = GetParam();
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  // Tile edges (63, 64, 65 rows), a long prompt, and chunks with earlier context cached.
  PagedCase c = MakeCase(rng, head_dim, 2, group,
                         {{0, 63}, {0, 64}, {0, 65}, {0, 333}, {100, 50}, {517, 130}, {31, 2}});
  const std::vector<float> ref = Reference(c);
  Device<bf16> cache(c.cache.size()), q(c.q.size()), out(c.q.size());
  Device<SeqMeta> meta(c.meta.size());
  Device<int32_t> tables(c.tables.size());
  cache.Upload(c.cache);
  q.Upload(c.q);
  meta.Upload(c.meta);
  tables.Upload(c.tables);
  // The mma.sync kernel everywhere; the wgmma one where it runs (compute capability 9.0).
  int device = 0, major = 0, minor = 0;
  ASSERT_CUDA(cudaGetDevice(&device));
  ASSERT_CUDA(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  ASSERT_CUDA(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  for (const bool wgmma : {false, true}) {
    if (wgmma && !WgmmaPrefillAttentionSupported(major, minor)) continue;
    SCOPED_TRACE(wgmma ? "wgmma kernel" : "mma.sync kernel");
    // Each kernel's query tiles: 64 rows (mma.sync) or 128 (wgmma).
    const int tile_rows = wgmma ? kWgmmaPrefillTileRows : kPrefillTileRows;
    std::vector<int2> tiles;
    for (size_t i = 0; i < c.meta.size(); ++i) {
      for (int t0 = 0; t0 < c.meta[i].num_new; t0 += tile_rows) {
        tiles.push_back({static_cast<int>(i), t0});
      }
    }
    Device<int2> tile_list(tiles.size());
    tile_list.Upload(tiles);
    out.Poison();
    const Status launched =
        (wgmma ? LaunchPrefillAttentionWgmma : LaunchPrefillAttention)(
            q.ptr, meta.ptr, tile_list.ptr, static_cast<int>(tiles.size()), tables.ptr, cache.ptr,
            c.g, c.num_heads, out.ptr, nullptr);
    ASSERT_TRUE(launched.ok()) << launched.ToString();
    ASSERT_CUDA(cudaDeviceSynchronize());
    const std::vector<float> got = ToFloat(out.Download());
    const double error = RelativeError(got, ref);
    EXPECT_LE(error, 1e-2) << DescribeMismatch(got, ref, c.num_heads, head_dim);
    RecordProperty(wgmma ? "prefill_wgmma_rel_error" : "prefill_rel_error", std::to_string(error));
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionKernelTest,
                         ::testing::Combine(::testing::Values(64, 128),
                                            ::testing::Values(1, 4, 8)));

class SamplingKernelTest : public ::testing::Test {
 protected:
  void SetUp() override { PDPOOL_SKIP_WITHOUT_GPU(); }

  std::vector<int32_t> Sample(const std::vector<float>& logits, int vocab,
                              const std::vector<SampleRowParams>& params) {
    const int rows = static_cast<int>(params.size());
    Device<float> l(logits.size()), w(logits.size());
    Device<SampleRowParams> p(params.size());
    Device<int32_t> tokens(params.size());
    l.Upload(logits);
    p.Upload(params);
    tokens.Poison();
    Status s = LaunchSample(l.ptr, w.ptr, rows, vocab, p.ptr, tokens.ptr, nullptr);
    EXPECT_TRUE(s.ok()) << s.ToString();
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    return tokens.Download();
  }

  const RowSampler sampler_ = [this](const std::vector<float>& logits, int vocab,
                                     const std::vector<SampleRowParams>& params) {
    return Sample(logits, vocab, params);
  };
};

TEST_F(SamplingKernelTest, GreedyIsTheCpuArgmax) {
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const int vocab = 128256, rows = 6;
  const std::vector<float> logits = GreedyRows(rng, vocab, rows);
  EXPECT_EQ(Sample(logits, vocab, std::vector<SampleRowParams>(rows)), CpuGreedy(logits, vocab));
}

// Draws many tokens (one row per sample_index) and compares the frequencies with the exact
// nucleus distribution: every kept token's frequency within 5 standard deviations, no token
// outside the nucleus ever drawn, and the same draws twice. A small vocabulary (the threshold
// search runs in shared memory from the start); 32768 ids (it reads the row until at most 8192
// weights are left in range); ties at the threshold spread over the row, which must be kept in
// id order; a row of equal weights.
TEST_F(SamplingKernelTest, TopPDrawsFollowTheNucleusDistribution) {
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  ExpectNucleusDraws(sampler_, NormalRow(rng, 40), seed, 20000, 0.8, 0.7, 0, true);
  ExpectNucleusDraws(sampler_, NormalRow(rng, 32768), seed, 4000, 0.7, 0.9, 0, true);
}

TEST_F(SamplingKernelTest, TiesAtTheThresholdAreKeptInIdOrder) {
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  ExpectNucleusDraws(sampler_, TiedThresholdRow(4096), seed, 8000, 1.0, 0.5, 5 + 137, true);
  ExpectNucleusDraws(sampler_, FlatRow(2048), seed, 8000, 1.0, 0.25, 512, true);
}

// A walk that sums in float stalls among weights below half an ulp of the running sum: the sum
// never passes a target inside their range (sampling_cases.h). The kernel must return a token
// of that range, not the last kept token of the vocabulary.
TEST_F(SamplingKernelTest, ADrawInARangeOfAbsorbedWeightsStaysInThatRange) {
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const AbsorbedRangeCase c = AbsorbedRangeDraws(seed, 4);
  ASSERT_FALSE(c.sample_indexes.empty()) << "no draw landed in the range; try another seed";
  const SampleBatch b = AbsorbedRangeBatch(c, seed);
  ExpectAllInAbsorbedRange(Sample(b.logits, AbsorbedRangeCase::kVocab, b.params));
}

// The skinny GEMM of decode steps (LaunchSkinnyGemm) against float64 sums, for each epilogue:
// odd shapes, and Llama-3.1-8B's down projection (in 14336) and gate/up (SwiGLU, out 14336).
class SkinnyGemmKernelTest : public ::testing::TestWithParam<SkinnyGemmShape> {
 protected:
  void SetUp() override { PDPOOL_SKIP_WITHOUT_GPU(); }
};

TEST_P(SkinnyGemmKernelTest, MatchesTheFloat64Reference) {
  const auto [epilogue, rows, out, in] = GetParam();
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const SkinnyGemmCase c = MakeSkinnyGemmCase(rng, rows, out, in, epilogue);
  Device<bf16> x(c.x.size()), w(c.w.size());
  Device<uint8_t> y(c.OutputBytes() / rows * kSkinnyGemmMaxRows);
  ASSERT_TRUE(x.ptr && w.ptr && y.ptr);
  x.Upload(c.x);
  w.Upload(c.w);
  y.Poison();
  const Status s = LaunchSkinnyGemm(x.ptr, w.ptr, y.ptr, rows, out, in, epilogue, nullptr);
  ASSERT_TRUE(s.ok()) << s.ToString();
  ASSERT_CUDA(cudaDeviceSynchronize());
  ExpectSkinnyGemmOutput(c, y.Download(), kSkinnyGemmMaxRows);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, SkinnyGemmKernelTest,
    ::testing::Values(SkinnyGemmShape{SkinnyEpilogue::kBf16, 1, 40, 264},
                      SkinnyGemmShape{SkinnyEpilogue::kBf16, 8, 4096, 14336},
                      SkinnyGemmShape{SkinnyEpilogue::kFloat, 5, 1037, 1064},
                      SkinnyGemmShape{SkinnyEpilogue::kSwiGlu, 1, 14336, 4096},
                      SkinnyGemmShape{SkinnyEpilogue::kSwiGlu, 7, 20, 264}),
    SkinnyGemmShapeName);

TEST(SkinnyGemmShapeTest, UnsupportedShapesAreRefusedWithTheLimit) {
  alignas(16) static bf16 buffer[64];
  const Status rows = CheckSkinnyGemm(buffer, buffer, 9, 16, 16);
  EXPECT_EQ(rows.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(rows.ToString().find("rows 9"), std::string::npos) << rows.ToString();
  EXPECT_NE(CheckSkinnyGemm(buffer, buffer, 1, 16, 12).ToString().find("multiple of 8"),
            std::string::npos);
  EXPECT_NE(CheckSkinnyGemm(buffer + 1, buffer, 1, 16, 16).ToString().find("aligned"),
            std::string::npos);
  EXPECT_TRUE(CheckSkinnyGemm(buffer, buffer, 8, 16, 16).ok());
}

}  // namespace
}  // namespace pdpool::agent::cuda
