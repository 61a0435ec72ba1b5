// Helpers shared by the warp emulator's own tests (warp_emulator_test.cc,
// warpgroup_mma_emulation_test.cc): exact random bf16 bit patterns, their values, bf16x2 packing,
// and the check that a RunGrid call fails with a given message. Host code only; plain functions.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace pdpool::cuda_emulation::testing {

// A random bf16 (bit pattern): a float in [-2, 2) truncated to bf16, so exact.
inline uint16_t RandomBf16(std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(-2.0f, 2.0f);
  float f = dist(rng);
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return static_cast<uint16_t>(bits >> 16);
}

inline double Bf16ToDouble(uint16_t bits) {
  uint32_t word = uint32_t{bits} << 16;
  float f;
  std::memcpy(&f, &word, sizeof f);
  return f;
}

// Two bf16 as one register, `low` in the low half.
inline uint32_t Pack(uint16_t low, uint16_t high) {
  return uint32_t{low} | (uint32_t{high} << 16);
}

// Runs `run` and expects a std::runtime_error whose message contains every one of `parts`.
template <typename Fn>
void ExpectErrorContaining(Fn run, const std::vector<std::string>& parts) {
  try {
    run();
  } catch (const std::runtime_error& e) {
    std::string message = e.what();
    for (const std::string& part : parts) {
      EXPECT_NE(message.find(part), std::string::npos) << "missing \"" << part << "\" in:\n"
                                                       << message;
    }
    return;
  }
  ADD_FAILURE() << "RunGrid did not throw";
}

}  // namespace pdpool::cuda_emulation::testing
