// The sampling kernel's body (agent/engine/cuda/sampling_kernel.cuh) run on the CPU under the
// warp emulator (warp_emulator.h), against the same cases as the GPU tests
// (tests/gpu/sampling_cases.h): greedy equals the CPU's argmax with ties and NaN; top-p draws
// follow the exact nucleus distribution (a small and a large vocabulary, ties at the threshold,
// a flat row); a draw among absorbed weights stays in its range.
// Checks the block reductions, the threshold search and the walk on machines without a GPU.
// Label unit.
// clang-format off
// First: the CUDA builtins (threadIdx, __syncthreads, atomicMax) that the kernel body uses.
#include "tests/cuda_emulation/warp_emulator.h"
// clang-format on

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "agent/engine/cuda/sampling_kernel.cuh"
#include "tests/gpu/gpu_test_support.h"
#include "tests/gpu/sampling_cases.h"

namespace pdpool::agent::cuda {
namespace {

using ::pdpool::cuda_emulation::RunGrid;
using ::pdpool::cuda_emulation::SetScheduleSeed;
using ::pdpool::testing::AbsorbedRangeBatch;
using ::pdpool::testing::AbsorbedRangeCase;
using ::pdpool::testing::AbsorbedRangeDraws;
using ::pdpool::testing::CpuGreedy;
using ::pdpool::testing::ExpectAllInAbsorbedRange;
using ::pdpool::testing::ExpectNucleusDraws;
using ::pdpool::testing::FlatRow;
using ::pdpool::testing::FreshSeed;
using ::pdpool::testing::GreedyRows;
using ::pdpool::testing::NormalRow;
using ::pdpool::testing::SampleBatch;
using ::pdpool::testing::TiedThresholdRow;

std::vector<int32_t> Sample(const std::vector<float>& logits, int vocab,
                            const std::vector<SampleRowParams>& params) {
  const int rows = static_cast<int>(params.size());
  std::vector<float> weights(logits.size());
  std::vector<int32_t> tokens(params.size(), -7);
  RunGrid(dim3(rows), kSampleThreads, sizeof(SampleShared), [&](unsigned char* shared) {
    SampleBlock(logits.data(), weights.data(), vocab, params.data(), tokens.data(),
                *reinterpret_cast<SampleShared*>(shared));
  });
  return tokens;
}

class EmulatedSamplingTest : public ::testing::Test {
 protected:
  void TearDown() override { SetScheduleSeed(0); }
};

TEST_F(EmulatedSamplingTest, GreedyIsTheCpuArgmax) {
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  SetScheduleSeed(seed | 1);
  const int vocab = 128256, rows = 5;
  const std::vector<float> logits = GreedyRows(rng, vocab, rows);
  EXPECT_EQ(Sample(logits, vocab, std::vector<SampleRowParams>(rows)), CpuGreedy(logits, vocab));
}

// The GPU tests' nucleus cases with fewer draws (each emulated block is 1024 fibers), so the
// frequency bounds are looser, but a token outside the nucleus still fails at once. 40 ids, and
// 32768 (the threshold search reads the row until at most 8192 weights are in range).
TEST_F(EmulatedSamplingTest, TopPDrawsFollowTheNucleusDistribution) {
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  SetScheduleSeed(seed | 1);
  ExpectNucleusDraws(Sample, NormalRow(rng, 40), seed, 400, 0.8, 0.7, 0, false);
  ExpectNucleusDraws(Sample, NormalRow(rng, 32768), seed, 40, 0.7, 0.9, 0, false);
}

TEST_F(EmulatedSamplingTest, TiesAtTheThresholdAreKeptInIdOrder) {
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  SetScheduleSeed(seed | 1);
  ExpectNucleusDraws(Sample, TiedThresholdRow(4096), seed, 100, 1.0, 0.5, 5 + 137, false);
  ExpectNucleusDraws(Sample, FlatRow(2048), seed, 60, 1.0, 0.25, 512, false);
}

TEST_F(EmulatedSamplingTest, ADrawInARangeOfAbsorbedWeightsStaysInThatRange) {
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const AbsorbedRangeCase c = AbsorbedRangeDraws(seed, 2);
  ASSERT_FALSE(c.sample_indexes.empty()) << "no draw landed in the range; try another seed";
  const SampleBatch b = AbsorbedRangeBatch(c, seed);
  ExpectAllInAbsorbedRange(Sample(b.logits, AbsorbedRangeCase::kVocab, b.params));
}

}  // namespace
}  // namespace pdpool::agent::cuda
