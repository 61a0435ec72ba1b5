// Test cases for the skinny GEMM (agent/engine/cuda/skinny_gemm*.{cu,cuh}), shared by the GPU
// tests (tests/gpu) and the emulated kernel tests (tests/cuda_emulation): random bf16 weights and
// rows, a float64 reference, and the check of an output against it for each epilogue (bf16,
// fp32, SwiGLU over the fused [gate; up] matrix). Outputs are expected poisoned beforehand:
// every element the kernel must write is checked finite and close, every other one unchanged.
// Host code only; plain functions.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "agent/engine/cuda/kernels.h"
#include "tests/gpu/gpu_test_support.h"

namespace pdpool::testing {

struct SkinnyGemmCase {
  int rows = 0, out = 0, in = 0;
  agent::cuda::SkinnyEpilogue epilogue = agent::cuda::SkinnyEpilogue::kBf16;
  std::vector<agent::cuda::bf16> x;  // [rows, in]
  std::vector<agent::cuda::bf16> w;  // [out, in], or [2·out, in] for SwiGLU
  std::vector<double> ref;           // [rows, out] (SwiGLU: [rows, 2·out], the gate/up sums)

  int WeightRows() const {
    return epilogue == agent::cuda::SkinnyEpilogue::kSwiGlu ? 2 * out : out;
  }
  size_t OutputBytes() const {
    const size_t each = epilogue == agent::cuda::SkinnyEpilogue::kFloat ? 4 : 2;
    return static_cast<size_t>(rows) * out * each;
  }
};

// A test shape: (epilogue, rows, out, in), named like "swiglu_7x20x264" in test names.
using SkinnyGemmShape = std::tuple<agent::cuda::SkinnyEpilogue, int, int, int>;
inline std::string SkinnyGemmShapeName(const ::testing::TestParamInfo<SkinnyGemmShape>& info) {
  const auto [epilogue, rows, out, in] = info.param;
  const char* name = epilogue == agent::cuda::SkinnyEpilogue::kBf16    ? "bf16"
                     : epilogue == agent::cuda::SkinnyEpilogue::kFloat ? "fp32"
                                                                       : "swiglu";
  return std::string(name) + "_" + std::to_string(rows) + "x" + std::to_string(out) + "x" +
         std::to_string(in);
}

// Weights around ±0.05, rows around ±1: sums of a few hundred terms, of order 1.
inline SkinnyGemmCase MakeSkinnyGemmCase(std::mt19937_64& rng, int rows, int out, int in,
                                         agent::cuda::SkinnyEpilogue epilogue) {
  SkinnyGemmCase c;
  c.rows = rows;
  c.out = out;
  c.in = in;
  c.epilogue = epilogue;
  std::normal_distribution<float> wd(0.0f, 0.05f), xd(0.0f, 1.0f);
  c.w.resize(static_cast<size_t>(c.WeightRows()) * in);
  for (auto& v : c.w) v = __float2bfloat16(wd(rng));
  c.x.resize(static_cast<size_t>(rows) * in);
  for (auto& v : c.x) v = __float2bfloat16(xd(rng));
  c.ref.assign(static_cast<size_t>(rows) * c.WeightRows(), 0.0);
  for (int r = 0; r < rows; ++r) {
    for (int o = 0; o < c.WeightRows(); ++o) {
      double sum = 0;
      for (int k = 0; k < in; ++k) {
        sum += static_cast<double>(__bfloat162float(c.w[static_cast<size_t>(o) * in + k])) *
               __bfloat162float(c.x[static_cast<size_t>(r) * in + k]);
      }
      c.ref[static_cast<size_t>(r) * c.WeightRows() + o] = sum;
    }
  }
  return c;
}

// `y` holds the kernel's output buffer of `capacity_rows` ≥ rows rows, poisoned before the run.
// fp32 outputs: within 1e-5 of the sum's scale (fp32 accumulation); bf16: within one bf16 ulp of
// the exact sum; SwiGLU: within two ulps of silu(bf16 gate) · bf16 up from the exact sums. Rows
// past `rows` must still be poison.
inline void ExpectSkinnyGemmOutput(const SkinnyGemmCase& c, const std::vector<uint8_t>& y,
                                   int capacity_rows) {
  using agent::cuda::SkinnyEpilogue;
  const bool fp32 = c.epilogue == SkinnyEpilogue::kFloat;
  const size_t each = fp32 ? 4 : 2;
  ASSERT_EQ(y.size(), static_cast<size_t>(capacity_rows) * c.out * each);
  int bad = 0;
  for (int r = 0; r < capacity_rows; ++r) {
    for (int o = 0; o < c.out; ++o) {
      const size_t at = static_cast<size_t>(r) * c.out + o;
      float got;
      if (fp32) {
        std::memcpy(&got, y.data() + at * 4, 4);
      } else {
        agent::cuda::bf16 b;
        std::memcpy(&b, y.data() + at * 2, 2);
        got = __bfloat162float(b);
      }
      if (r >= c.rows) {
        if (!std::isnan(got) && ++bad <= 5) {
          ADD_FAILURE() << "row " << r << " output " << o << " written past the rows";
        }
        continue;
      }
      const double* sums = c.ref.data() + static_cast<size_t>(r) * c.WeightRows();
      double want, tolerance;
      if (c.epilogue == SkinnyEpilogue::kSwiGlu) {
        const double gate = RoundBf16(static_cast<float>(sums[o]));
        const double up = RoundBf16(static_cast<float>(sums[c.out + o]));
        want = gate / (1.0 + std::exp(-gate)) * up;
        // The kernel rounds its fp32 sums to bf16: one ulp of gate and of up, then the output's.
        tolerance = std::ldexp(std::fabs(want), -6) + 1e-4;
      } else {
        want = sums[o];
        tolerance = fp32 ? 1e-5 * (1.0 + std::fabs(want)) : std::ldexp(std::fabs(want), -7) + 1e-5;
      }
      if (!(std::fabs(got - want) <= tolerance) && ++bad <= 5) {
        ADD_FAILURE() << "row " << r << " output " << o << ": got " << got << ", want " << want;
      }
    }
  }
  EXPECT_EQ(bad, 0) << "mismatched outputs";
}

}  // namespace pdpool::testing
