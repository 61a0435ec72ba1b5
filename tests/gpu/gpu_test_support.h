// Helpers of the GPU tests (label gpu): whether a GPU is here (the tests skip cleanly when not),
// fresh random seeds (printed, so a failure can be replayed with PDPOOL_TEST_SEED), bf16
// rounding on the host, and the relative error ‖out − ref‖ / ‖ref‖ that fails on any NaN.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace pdpool::testing {

// "" when a CUDA GPU is usable; otherwise why not.
inline std::string NoGpuReason() {
  int count = 0;
  const cudaError_t error = cudaGetDeviceCount(&count);
  if (error != cudaSuccess) {
    return std::string("no CUDA GPU here (cudaGetDeviceCount: ") + cudaGetErrorString(error) + ")";
  }
  if (count == 0) return "no CUDA GPU here (0 devices)";
  return "";
}

#define PDPOOL_SKIP_WITHOUT_GPU()                                                              \
  do {                                                                                         \
    if (std::string why = ::pdpool::testing::NoGpuReason(); !why.empty()) GTEST_SKIP() << why; \
  } while (0)

// A fresh seed per call unless PDPOOL_TEST_SEED fixes it; tests print it.
inline uint64_t FreshSeed() {
  if (const char* fixed = std::getenv("PDPOOL_TEST_SEED")) return std::strtoull(fixed, nullptr, 10);
  std::random_device device;
  return (uint64_t{device()} << 32) ^ device();
}

inline float RoundBf16(float x) { return __bfloat162float(__float2bfloat16(x)); }

// Fills host memory with 0xFF bytes: NaN as bf16 and as fp32, so an element a kernel leaves
// unwritten fails the comparison.
template <typename T>
void Poison(std::vector<T>& v) {
  std::memset(static_cast<void*>(v.data()), 0xFF, v.size() * sizeof(T));
}

// ‖out − ref‖₂ / ‖ref‖₂; +inf when out has a NaN or the sizes differ.
inline double RelativeError(const std::vector<float>& out, const std::vector<float>& ref) {
  if (out.size() != ref.size()) return std::numeric_limits<double>::infinity();
  double diff = 0, norm = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    if (std::isnan(out[i])) return std::numeric_limits<double>::infinity();
    const double d = static_cast<double>(out[i]) - ref[i];
    diff += d * d;
    norm += static_cast<double>(ref[i]) * ref[i];
  }
  return std::sqrt(diff / std::max(norm, 1e-300));
}

}  // namespace pdpool::testing
