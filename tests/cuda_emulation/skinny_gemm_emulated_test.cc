// The skinny GEMM's body (agent/engine/cuda/skinny_gemm_kernel.cuh) runs on the CPU under the
// warp emulator against the float64 references of tests/gpu/skinny_gemm_case.h: each epilogue,
// 1 to 8 rows, output counts that leave a block partly empty, and reductions that end inside a
// 32-element step and inside an unrolled group of steps. AddressSanitizer checks that no row of
// x past `rows` and no weight past the matrix is read. Label unit.
// clang-format off
// First: the CUDA builtins (threadIdx, __syncthreads, shuffles) that the kernel bodies use.
#include "tests/cuda_emulation/warp_emulator.h"
// clang-format on

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "agent/engine/cuda/skinny_gemm_kernel.cuh"
#include "tests/gpu/gpu_test_support.h"
#include "tests/gpu/skinny_gemm_case.h"

namespace pdpool::agent::cuda {
namespace {

using ::pdpool::cuda_emulation::RunGrid;
using ::pdpool::testing::ExpectSkinnyGemmOutput;
using ::pdpool::testing::FreshSeed;
using ::pdpool::testing::MakeSkinnyGemmCase;
using ::pdpool::testing::Poison;
using ::pdpool::testing::SkinnyGemmCase;
using ::pdpool::testing::SkinnyGemmShape;
using ::pdpool::testing::SkinnyGemmShapeName;

void RunSkinnyGemm(const SkinnyGemmCase& c, std::vector<uint8_t>& y) {
  const int blocks = c.epilogue == SkinnyEpilogue::kSwiGlu ? (c.out + 7) / 8 : (c.out + 15) / 16;
  RunGrid(dim3(blocks), kSkinnyThreads, sizeof(SkinnyShared), [&](unsigned char* smem) {
    auto& shared = *reinterpret_cast<SkinnyShared*>(smem);
    switch (c.epilogue) {
      case SkinnyEpilogue::kBf16:
        SkinnyGemmBlock<SkinnyEpilogue::kBf16>(c.x.data(), c.w.data(), y.data(), c.rows, c.out,
                                               c.in, shared);
        break;
      case SkinnyEpilogue::kFloat:
        SkinnyGemmBlock<SkinnyEpilogue::kFloat>(c.x.data(), c.w.data(), y.data(), c.rows, c.out,
                                                c.in, shared);
        break;
      case SkinnyEpilogue::kSwiGlu:
        SkinnyGemmBlock<SkinnyEpilogue::kSwiGlu>(c.x.data(), c.w.data(), y.data(), c.rows, c.out,
                                                 c.in, shared);
        break;
    }
  });
}

class EmulatedSkinnyGemmTest : public ::testing::TestWithParam<SkinnyGemmShape> {};

TEST_P(EmulatedSkinnyGemmTest, MatchesTheFloat64Reference) {
  const auto [epilogue, rows, out, in] = GetParam();
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const SkinnyGemmCase c = MakeSkinnyGemmCase(rng, rows, out, in, epilogue);
  // Room for kSkinnyGemmMaxRows rows, poisoned: rows past c.rows must stay unwritten.
  std::vector<uint8_t> y(c.OutputBytes() / rows * kSkinnyGemmMaxRows);
  Poison(y);
  RunSkinnyGemm(c, y);
  ExpectSkinnyGemmOutput(c, y, kSkinnyGemmMaxRows);
}

// in = 264: 9 steps of 32, so warp 0 alone takes a second step; in = 1064: 34 steps, one full
// unrolled group per warp and a partial one, the last step 8 elements short of 32.
INSTANTIATE_TEST_SUITE_P(
    Shapes, EmulatedSkinnyGemmTest,
    ::testing::Values(SkinnyGemmShape{SkinnyEpilogue::kBf16, 1, 40, 264},
                      SkinnyGemmShape{SkinnyEpilogue::kBf16, 8, 32, 1064},
                      SkinnyGemmShape{SkinnyEpilogue::kBf16, 3, 16, 8},
                      SkinnyGemmShape{SkinnyEpilogue::kFloat, 5, 37, 1064},
                      SkinnyGemmShape{SkinnyEpilogue::kFloat, 8, 16, 264},
                      SkinnyGemmShape{SkinnyEpilogue::kSwiGlu, 1, 20, 264},
                      SkinnyGemmShape{SkinnyEpilogue::kSwiGlu, 7, 8, 1064}),
    SkinnyGemmShapeName);

}  // namespace
}  // namespace pdpool::agent::cuda
