// The decode and prefill attention kernel bodies (agent/engine/cuda/*_kernel.cuh; prefill both
// on mma.sync and on wgmma) run on the CPU under the warp emulator (warp_emulator.h: one fiber
// per CUDA thread, ldmatrix, mma.sync, wgmma and cp.async emulated as the PTX ISA defines them) and are compared with the same float64
// references as the GPU tests (tests/gpu/paged_attention_case.h), on fresh random inputs with
// outputs poisoned. This checks their fragment layouts, masking, pipelines, splits and barriers
// on machines without a GPU; it says nothing of their speed, and the GPU tests remain the
// judge on real hardware. Label unit.
// clang-format off
// First: the CUDA builtins (threadIdx, __syncthreads, shuffles) that the kernel bodies use.
#include "tests/cuda_emulation/warp_emulator.h"
// clang-format on

#include <gtest/gtest.h>

#include <cstring>
#include <numeric>
#include <string>
#include <tuple>
#include <vector>

#include "agent/engine/cuda/decode_attention_kernel.cuh"
#include "agent/engine/cuda/prefill_attention_kernel.cuh"
#include "agent/engine/cuda/prefill_attention_wgmma_kernel.cuh"
#include "tests/gpu/gpu_test_support.h"
#include "tests/gpu/paged_attention_case.h"

namespace pdpool::agent::cuda {
namespace {

using ::pdpool::cuda_emulation::ClearGlobals;
using ::pdpool::cuda_emulation::RegisterGlobal;
using ::pdpool::cuda_emulation::RunGrid;
using ::pdpool::cuda_emulation::SetScheduleSeed;
using ::pdpool::testing::DescribeMismatch;
using ::pdpool::testing::FreshSeed;
using ::pdpool::testing::MakeCase;
using ::pdpool::testing::PagedCase;
using ::pdpool::testing::Poison;
using ::pdpool::testing::Reference;
using ::pdpool::testing::RelativeError;
using ::pdpool::testing::ToFloat;

template <typename T>
void Register(const std::vector<T>& v) {
  RegisterGlobal(v.data(), v.size() * sizeof(T));
}

// Threads released by a barrier run in a shuffled order (seeded from the test's seed), so that
// a warp can run ahead of the others where a kernel forgot a __syncthreads.
class EmulatedAttentionTest : public ::testing::TestWithParam<std::tuple<int, int>> {
 protected:
  void TearDown() override {
    ClearGlobals();
    SetScheduleSeed(0);
  }
};

// Runs a prefill kernel body (`block`, called as PrefillAttentionBlock is) over the tiles.
template <typename Block>
std::vector<bf16> RunPrefillKernel(const PagedCase& c, const std::vector<int2>& tiles,
                                   int threads, size_t shared_bytes, int head_dim, Block block) {
  std::vector<bf16> out(c.q.size());
  Poison(out);
  Register(c.cache);
  Register(c.q);
  const int num_tiles = static_cast<int>(tiles.size());
  RunGrid(dim3(c.num_heads, num_tiles), threads, shared_bytes, [&](unsigned char* smem) {
    block(c.q.data(), c.meta.data(), tiles.data(), num_tiles, c.tables.data(), c.cache.data(), c.g,
          c.num_heads, AttentionScaleLog2(head_dim), out.data(), smem);
  });
  return out;
}

template <int HD>
std::vector<bf16> RunPrefill(const PagedCase& c, const std::vector<int2>& tiles) {
  return RunPrefillKernel(c, tiles, kPrefillThreads, PrefillSmem<HD>::kBytes, HD,
                          PrefillAttentionBlock<HD>);
}

template <int HD>
std::vector<bf16> RunWgmmaPrefill(const PagedCase& c, const std::vector<int2>& tiles) {
  return RunPrefillKernel(c, tiles, kWgmmaPrefillThreads, WgmmaPrefillSmem<HD>::kBytes, HD,
                          WgmmaPrefillAttentionBlock<HD>);
}

template <int HD>
std::vector<bf16> RunDecode(const PagedCase& c, int splits) {
  const int num_seqs = static_cast<int>(c.meta.size());
  std::vector<int32_t> index(c.meta.size());
  std::iota(index.begin(), index.end(), 0);
  std::vector<float> partial(
      static_cast<size_t>(DecodePartialFloats(num_seqs, c.num_heads, splits, HD)));
  std::vector<bf16> out(c.q.size());
  Poison(partial);
  Poison(out);
  Register(c.cache);
  Register(c.q);
  RunGrid(dim3(splits, c.g.num_kv_heads, num_seqs), 32, DecodeSmem<HD>::kBytes,
          [&](unsigned char* smem) {
            DecodeAttentionBlock<HD>(c.q.data(), c.meta.data(), index.data(), c.tables.data(),
                                     c.cache.data(), c.g, c.num_heads, AttentionScaleLog2(HD),
                                     splits, partial.data(), smem);
          });
  RunGrid(dim3(c.num_heads, num_seqs), HD, 0, [&](unsigned char*) {
    DecodeCombineBlock<HD>(c.meta.data(), index.data(), partial.data(), c.num_heads, splits,
                           out.data());
  });
  return out;
}

// Tile edges (63, 64, 65, 127, 128, 129 rows), three tiles, and chunks with earlier context
// cached; and the query tiles of `tile_rows` rows of every sequence.
PagedCase PrefillCase(std::mt19937_64& rng, int head_dim, int group, int tile_rows,
                      std::vector<int2>* tiles) {
  PagedCase c = MakeCase(rng, head_dim, 1, group,
                         {{0, 63}, {0, 64}, {0, 65}, {0, 129}, {0, 150}, {100, 50}, {20, 128},
                          {31, 2}, {77, 1}});
  for (size_t i = 0; i < c.meta.size(); ++i) {
    for (int t0 = 0; t0 < c.meta[i].num_new; t0 += tile_rows) {
      tiles->push_back({static_cast<int>(i), t0});
    }
  }
  return c;
}

// Runs the mma.sync or the wgmma prefill kernel over PrefillCase and compares with float64.
void ExpectPrefillMatchesReference(int head_dim, int group, bool wgmma) {
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  SetScheduleSeed(seed | 1);
  std::vector<int2> tiles;
  const PagedCase c =
      PrefillCase(rng, head_dim, group, wgmma ? kWgmmaPrefillTileRows : kPrefillTileRows, &tiles);
  std::vector<bf16> out;
  if (wgmma) {
    out = head_dim == 128 ? RunWgmmaPrefill<128>(c, tiles) : RunWgmmaPrefill<64>(c, tiles);
  } else {
    out = head_dim == 128 ? RunPrefill<128>(c, tiles) : RunPrefill<64>(c, tiles);
  }
  const std::vector<float> got = ToFloat(out), ref = Reference(c);
  EXPECT_LE(RelativeError(got, ref), 1e-2) << DescribeMismatch(got, ref, c.num_heads, head_dim);
}

TEST_P(EmulatedAttentionTest, PrefillMatchesFloat64Reference) {
  const auto [head_dim, group] = GetParam();
  ExpectPrefillMatchesReference(head_dim, group, /*wgmma=*/false);
}

TEST_P(EmulatedAttentionTest, WgmmaPrefillMatchesFloat64Reference) {
  const auto [head_dim, group] = GetParam();
  ExpectPrefillMatchesReference(head_dim, group, /*wgmma=*/true);
}

TEST_P(EmulatedAttentionTest, DecodeMatchesFloat64Reference) {
  const auto [head_dim, group] = GetParam();
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  SetScheduleSeed(seed | 1);
  std::uniform_int_distribution<int> context(0, 300);
  std::vector<std::pair<int, int>> seqs;
  for (int i = 0; i < 4; ++i) seqs.push_back({context(rng), 1});
  seqs.push_back({0, 1});   // a one-token context: most splits are empty
  seqs.push_back({15, 1});  // exactly one 16-key tile
  const PagedCase c = MakeCase(rng, head_dim, 2, group, seqs);
  const std::vector<float> ref = Reference(c);
  for (int splits : {1, 3, 16}) {
    SCOPED_TRACE("num_splits " + std::to_string(splits));
    const std::vector<bf16> out =
        head_dim == 128 ? RunDecode<128>(c, splits) : RunDecode<64>(c, splits);
    const std::vector<float> got = ToFloat(out);
    EXPECT_LE(RelativeError(got, ref), 1e-2) << DescribeMismatch(got, ref, c.num_heads, head_dim);
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, EmulatedAttentionTest,
                         ::testing::Combine(::testing::Values(64, 128),
                                            ::testing::Values(1, 4, 16)));

}  // namespace
}  // namespace pdpool::agent::cuda
