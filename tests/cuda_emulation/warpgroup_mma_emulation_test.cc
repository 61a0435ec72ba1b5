// Tests of the emulated Hopper warpgroup MMA (wgmma, agent/engine/cuda/warpgroup_mma.cuh) under
// the warp emulator. The operands are placed in shared memory by this file's own placement
// functions, written from the PTX ISA's canonical layouts (9.7.15.5.1.2, "Shared Memory Matrix
// Layout"), and the register fragments from its figures for m64nNk16 (9.7.15.5.1.1.1); results
// are compared with float64 references. One test cross-checks the header's Swizzle128Offset and
// Swizzle128Descriptor against this reading of the ISA; the others check asynchrony (results land
// only at wgmma.wait_group) and the errors the emulator must report.
// clang-format off
// First: the CUDA built-ins and __device__ & co. that the headers below use.
#include "tests/cuda_emulation/warp_emulator.h"
// clang-format on

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "agent/engine/cuda/warp_mma.cuh"
#include "agent/engine/cuda/warpgroup_mma.cuh"
#include "tests/cuda_emulation/emulator_test_support.h"

namespace pdpool::cuda_emulation {
namespace {

namespace kernel = pdpool::agent::cuda;
namespace emu = pdpool::agent::cuda::emulation;
using testing::Bf16ToDouble;
using testing::ExpectErrorContaining;
using testing::Pack;
using testing::RandomBf16;

constexpr int kWarpgroup = 128;
constexpr uint32_t kAtom = 1024;  // SBO of a 128-byte-swizzled tile: 8 rows of 128 bytes
constexpr uint16_t kBf16One = 0x3f80;

// ---- data -------------------------------------------------------------------------------------

// An integer in [-3, 3] as bf16: products and their sums stay exact in float.
uint16_t SmallIntBf16(std::mt19937& rng) {
  float f = static_cast<float>(static_cast<int>(rng() % 7) - 3);
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return static_cast<uint16_t>(bits >> 16);
}

// A (64 x k, a[m * k + kk]) times B (k x n, b[kk * n + col]).
struct Problem {
  int n = 0;
  int k = 0;
  std::vector<uint16_t> a;
  std::vector<uint16_t> b;
  uint16_t A(int m, int kk) const { return a[static_cast<size_t>(m * k + kk)]; }
  uint16_t B(int kk, int col) const { return b[static_cast<size_t>(kk * n + col)]; }
};

Problem MakeProblem(int n, int k, uint32_t seed, bool small_integers = false) {
  std::mt19937 rng(seed);
  Problem p;
  p.n = n;
  p.k = k;
  p.a.resize(static_cast<size_t>(64 * k));
  p.b.resize(static_cast<size_t>(k * n));
  for (auto& v : p.a) v = small_integers ? SmallIntBf16(rng) : RandomBf16(rng);
  for (auto& v : p.b) v = small_integers ? SmallIntBf16(rng) : RandomBf16(rng);
  return p;
}

// Expects out (64 x n, out[m * n + col]) == scale * A * B (+ c), in float64 with the error bound
// of k float additions.
void ExpectProduct(const Problem& p, const std::vector<float>& out, const std::string& label,
                   const std::vector<float>* c = nullptr) {
  int failures = 0;
  for (int m = 0; m < 64; ++m) {
    for (int col = 0; col < p.n; ++col) {
      double expected = c != nullptr ? (*c)[static_cast<size_t>(m * p.n + col)] : 0.0;
      double magnitude = std::fabs(expected);
      for (int kk = 0; kk < p.k; ++kk) {
        double product = Bf16ToDouble(p.A(m, kk)) * Bf16ToDouble(p.B(kk, col));
        expected += product;
        magnitude += std::fabs(product);
      }
      double tolerance = (p.k + 1) * std::ldexp(magnitude, -24) + 1e-30;
      double got = out[static_cast<size_t>(m * p.n + col)];
      if (!(std::fabs(got - expected) <= tolerance) && ++failures <= 10) {
        ADD_FAILURE() << label << ": D[" << m << "][" << col << "] = " << got << ", expected "
                      << expected << " (tolerance " << tolerance << ")";
      }
    }
  }
  EXPECT_EQ(failures, 0) << label;
}

// ---- the PTX ISA's layouts, written here independently of warpgroup_mma.cuh --------------------

// The 128-byte swizzle, Swizzle<3,4,3> on byte addresses: bits 4-6 ^= bits 7-9.
uint32_t IsaSwizzle128(uint32_t address) { return address ^ (((address >> 7) & 7u) << 4); }

// K-major, 128-byte swizzle, bf16 (T = 8 elements): ((8,m),(T,2k)):((8T,SBO),(1,T)), i.e. row
// `row` (of A, or column n of B) is 64 k-elements, 128 bytes, eight rows per 1024-byte atom and
// 8-row groups SBO bytes apart. `base` must be 1024-byte aligned (descriptor base offset 0).
uint32_t KMajorAddress(uint32_t base, int row, int k, uint32_t sbo) {
  return IsaSwizzle128(base + static_cast<uint32_t>(row % 8) * 128 +
                       static_cast<uint32_t>(row / 8) * sbo + static_cast<uint32_t>(k / 8) * 16 +
                       static_cast<uint32_t>(k % 8) * 2);
}

// MN-major, 128-byte swizzle, bf16: ((T,8,m),(8,k)):((1,T,LBO),(8T,SBO)), i.e. a 128-byte row
// holds 64 consecutive mn for one k, the next k is the next row, 8-k groups are SBO apart and the
// next 64 mn are LBO further.
uint32_t MnMajorAddress(uint32_t base, int mn, int k, uint32_t lbo, uint32_t sbo) {
  return IsaSwizzle128(base + static_cast<uint32_t>(mn % 8) * 2 +
                       static_cast<uint32_t>((mn / 8) % 8) * 16 +
                       static_cast<uint32_t>(mn / 64) * lbo + static_cast<uint32_t>(k % 8) * 128 +
                       static_cast<uint32_t>(k / 8) * sbo);
}

// The matrix descriptor: bits 0-13, 16-29, 32-45 = (x & 0x3FFFF) >> 4 of the start address, LBO and
// SBO; 49-51 base offset; 62-63 swizzle mode (1 = 128-byte).
uint64_t IsaDescriptor(uint32_t start, uint32_t lbo, uint32_t sbo, unsigned swizzle = 1,
                       unsigned base_offset = 0) {
  auto encode = [](uint32_t x) { return uint64_t{(x & 0x3FFFFu) >> 4}; };
  return encode(start) | (encode(lbo) << 16) | (encode(sbo) << 32) |
         (uint64_t{base_offset & 7u} << 49) | (uint64_t{swizzle & 3u} << 62);
}

// Register fragments of m64nNk16 for thread i (0..127) of a warpgroup: warp w = i / 32 owns rows
// 16w .. 16w+15; g = lane / 4, t = lane % 4.
// A register r holds (row, col) in its low half and (row, col + 1) in its high half.
void ARegister(int i, int r, int* row, int* col) {
  int w = i / 32, lane = i % 32, g = lane / 4, t = lane % 4;
  *row = 16 * w + g + (r % 2 == 1 ? 8 : 0);
  *col = 2 * t + (r >= 2 ? 8 : 0);
}
// Accumulator d[j], j = 4q + 2h + c: (row 16w + g + 8h, column 8q + 2t + c).
void DElement(int i, int j, int* row, int* col) {
  int w = i / 32, lane = i % 32, g = lane / 4, t = lane % 4;
  int q = j / 4, h = (j / 2) % 2, c = j % 2;
  *row = 16 * w + g + 8 * h;
  *col = 8 * q + 2 * t + c;
}

// ---- kernel-side helpers (run by every thread of `count` threads starting at `first`) ----------

void StoreBf16(unsigned char* shared, uint32_t address, uint16_t bits) {
  std::memcpy(shared + (address - emu::SharedAddress(shared)), &bits, sizeof bits);
}

// A (64 x p.k), K-major at `region` (1024-byte aligned), 8-row groups 1024 bytes apart.
void PlaceA(unsigned char* shared, uint32_t region, const Problem& p, int index, int count) {
  for (int e = index; e < 64 * p.k; e += count) {
    int m = e / p.k, k = e % p.k;
    StoreBf16(shared, KMajorAddress(region, m, k, kAtom), p.A(m, k));
  }
}
// B K-major: column n of B is row n of the tile (p.k <= 64).
void PlaceBKMajor(unsigned char* shared, uint32_t region, const Problem& p, int index, int count) {
  for (int e = index; e < p.n * p.k; e += count) {
    int col = e / p.k, k = e % p.k;
    StoreBf16(shared, KMajorAddress(region, col, k, kAtom), p.B(k, col));
  }
}
// B N-major: row k holds 64 n; the next 64 n are `lbo` bytes further.
void PlaceBNMajor(unsigned char* shared, uint32_t region, const Problem& p, uint32_t lbo, int index,
                  int count) {
  for (int e = index; e < p.n * p.k; e += count) {
    int k = e / p.n, col = e % p.n;
    StoreBf16(shared, MnMajorAddress(region, col, k, lbo, kAtom), p.B(k, col));
  }
}

// The A registers of thread i for the k16 slice `slice` of p.
void ARegisters(const Problem& p, int i, int slice, uint32_t (&a)[4]) {
  for (int r = 0; r < 4; ++r) {
    int row, col;
    ARegister(i, r, &row, &col);
    col += 16 * slice;
    a[r] = Pack(p.A(row, col), p.A(row, col + 1));
  }
}

void StoreAccumulators(const float* d, int n, int i, std::vector<float>* out) {
  for (int j = 0; j < n / 2; ++j) {
    int row, col;
    DElement(i, j, &row, &col);
    (*out)[static_cast<size_t>(row * n + col)] = d[j];
  }
}

// ---- results ----------------------------------------------------------------------------------

// Descriptor base offset 0 means the swizzle pattern starts at 1024-byte boundaries of the shared
// address: the block's shared memory starts at one, as pointer and as shared address.
TEST(WarpgroupMmaEmulation, SharedMemoryStartsAtA1024ByteBoundary) {
  for (size_t bytes : {size_t{100}, size_t{5000}, size_t{40960}}) {
    bool aligned = true;
    RunGrid(dim3(2), kWarpgroup, bytes, [&](unsigned char* shared) {
      aligned = aligned && reinterpret_cast<uintptr_t>(shared) % 1024 == 0 &&
                emu::SharedAddress(shared) % 1024 == 0 &&
                emu::SharedAddress(shared + 64) == emu::SharedAddress(shared) + 64;
    });
    EXPECT_TRUE(aligned) << bytes << " bytes";
  }
}

// m64n64k16 with A and B K-major in shared memory: four k16 slices of a K = 64 tile, each the
// descriptor start advanced by 32 bytes along the 128-byte rows, 8-row groups SBO = 1024 apart.
TEST(WarpgroupMmaEmulation, SharedAAndBKMajorM64N64MatchesFloat64) {
  const Problem p = MakeProblem(64, 64, 11);
  constexpr uint32_t kA = 1024, kB = kA + 8 * kAtom;  // 64 rows each: 8 atoms
  std::vector<float> out(64 * 64);
  RunGrid(dim3(1), kWarpgroup, kB + 8 * kAtom, [&](unsigned char* shared) {
    const int tid = static_cast<int>(threadIdx.x);
    const uint32_t base = emu::SharedAddress(shared);
    PlaceA(shared, base + kA, p, tid, kWarpgroup);
    PlaceBKMajor(shared, base + kB, p, tid, kWarpgroup);
    kernel::FenceProxyAsyncShared();
    __syncthreads();
    float d[32];
    for (float& v : d) v = std::numeric_limits<float>::quiet_NaN();  // scale-d 0 must not read d
    kernel::WarpgroupFence();
    for (int slice = 0; slice < 4; ++slice) {
      const uint64_t desc_a = IsaDescriptor(base + kA + 32 * slice, 16, kAtom);
      const uint64_t desc_b = IsaDescriptor(base + kB + 32 * slice, 16, kAtom);
      kernel::WarpgroupMmaSS64<false>(d, desc_a, desc_b, slice > 0);
    }
    kernel::WarpgroupCommit();
    kernel::WarpgroupWait<0>();
    StoreAccumulators(d, 64, tid, &out);
  });
  ExpectProduct(p, out, "m64n64k16 SS");
  EXPECT_EQ(LastRunStats().warpgroup_mmas, 4u);
}

// m64n128k16 with A from registers and B N-major (imm-trans-b = 1): B stored as rows of k (keys),
// 64 n per 128-byte row, SBO = 1024 to the next 8 k, LBO to the next 64 n.
TEST(WarpgroupMmaEmulation, RegisterAAndNMajorBM64N128MatchesFloat64) {
  const Problem p = MakeProblem(128, 32, 12);
  constexpr uint32_t kLbo = 32 * 128;  // each 64-n block: 32 rows of k, 128 bytes each
  constexpr uint32_t kB = 2048;
  std::vector<float> out(64 * 128);
  RunGrid(dim3(1), kWarpgroup, kB + 2 * kLbo, [&](unsigned char* shared) {
    const int tid = static_cast<int>(threadIdx.x);
    const uint32_t base = emu::SharedAddress(shared);
    PlaceBNMajor(shared, base + kB, p, kLbo, tid, kWarpgroup);
    kernel::FenceProxyAsyncShared();
    __syncthreads();
    uint32_t a[2][4];  // one set per k16 slice: both are in flight until the wait
    float d[64];
    kernel::WarpgroupFence();
    for (int slice = 0; slice < 2; ++slice) {
      ARegisters(p, tid, slice, a[slice]);
      // 16 k per slice: two 8-k groups, 2 * SBO bytes.
      const uint64_t desc_b = IsaDescriptor(base + kB + slice * 2 * kAtom, kLbo, kAtom);
      kernel::WarpgroupMmaRS128<true>(d, a[slice], desc_b, slice > 0);
    }
    kernel::WarpgroupCommit();
    kernel::WarpgroupWait<0>();
    StoreAccumulators(d, 128, tid, &out);
  });
  ExpectProduct(p, out, "m64n128k16 RS, B N-major");
}

// Other widths through the emulation entry points: n = 8 and n = 256 (B K-major, 256 rows).
TEST(WarpgroupMmaEmulation, NarrowestAndWidestShapesMatchFloat64) {
  for (int n : {8, 256}) {
    const Problem p = MakeProblem(n, 16, 13 + static_cast<uint32_t>(n));
    const uint32_t kA = 0, kB = 8 * kAtom;
    const uint32_t b_bytes = static_cast<uint32_t>((n + 7) / 8) * kAtom;
    std::vector<float> out(static_cast<size_t>(64 * n));
    RunGrid(dim3(1), kWarpgroup, kB + b_bytes, [&](unsigned char* shared) {
      const int tid = static_cast<int>(threadIdx.x);
      const uint32_t base = emu::SharedAddress(shared);
      PlaceA(shared, base + kA, p, tid, kWarpgroup);
      PlaceBKMajor(shared, base + kB, p, tid, kWarpgroup);
      __syncthreads();
      std::vector<float> d(static_cast<size_t>(n / 2), 0.0f);
      emu::WarpgroupFence();
      emu::WarpgroupMmaSS(d.data(), n, IsaDescriptor(base + kA, 16, kAtom),
                          IsaDescriptor(base + kB, 16, kAtom), false, false);
      emu::WarpgroupCommit();
      emu::WarpgroupWait(0);
      StoreAccumulators(d.data(), n, tid, &out);
    });
    ExpectProduct(p, out, "m64n" + std::to_string(n) + "k16");
  }
}

// Integer data (exact in float): scale-d = 0 overwrites d, scale-d = 1 adds to it.
TEST(WarpgroupMmaEmulation, AccumulateFalseOverwritesAndTrueAdds) {
  const Problem p = MakeProblem(64, 16, 14, /*small_integers=*/true);
  constexpr uint32_t kA = 0, kB = 8 * kAtom;
  std::vector<float> overwritten(64 * 64), added(64 * 64), initial(64 * 64);
  RunGrid(dim3(1), kWarpgroup, kB + 8 * kAtom, [&](unsigned char* shared) {
    const int tid = static_cast<int>(threadIdx.x);
    const uint32_t base = emu::SharedAddress(shared);
    PlaceA(shared, base + kA, p, tid, kWarpgroup);
    PlaceBKMajor(shared, base + kB, p, tid, kWarpgroup);
    __syncthreads();
    const uint64_t desc_a = IsaDescriptor(base + kA, 16, kAtom);
    const uint64_t desc_b = IsaDescriptor(base + kB, 16, kAtom);
    float d[32], e[32];
    for (int j = 0; j < 32; ++j) d[j] = e[j] = 1000.0f + static_cast<float>(tid * 32 + j);
    StoreAccumulators(e, 64, tid, &initial);
    kernel::WarpgroupFence();
    kernel::WarpgroupMmaSS64<false>(d, desc_a, desc_b, false);
    kernel::WarpgroupMmaSS64<false>(e, desc_a, desc_b, true);
    kernel::WarpgroupCommit();
    kernel::WarpgroupWait<0>();
    StoreAccumulators(d, 64, tid, &overwritten);
    StoreAccumulators(e, 64, tid, &added);
  });
  for (int m = 0; m < 64; ++m) {
    for (int col = 0; col < 64; ++col) {
      double product = 0;
      for (int k = 0; k < 16; ++k) product += Bf16ToDouble(p.A(m, k)) * Bf16ToDouble(p.B(k, col));
      ASSERT_EQ(overwritten[static_cast<size_t>(m * 64 + col)], product) << m << "," << col;
      ASSERT_EQ(added[static_cast<size_t>(m * 64 + col)],
                initial[static_cast<size_t>(m * 64 + col)] + product)
          << m << "," << col;
    }
  }
}

// Two warpgroups of one block, each with its own operands, shapes and wgmma-groups.
TEST(WarpgroupMmaEmulation, TwoWarpgroupsRunIndependentMmas) {
  const Problem p0 = MakeProblem(64, 32, 15);   // warpgroup 0: SS, B K-major, one group
  const Problem p1 = MakeProblem(128, 16, 16);  // warpgroup 1: RS, B N-major, two groups
  constexpr uint32_t kA0 = 0, kB0 = 8 * kAtom, kB1 = 16 * kAtom, kLbo1 = 16 * 128;
  for (uint64_t seed : {uint64_t{0}, uint64_t{5}}) {
    SetScheduleSeed(seed);
    std::vector<float> out0(64 * 64), out1a(64 * 128), out1b(64 * 128);
    RunGrid(dim3(1), 2 * kWarpgroup, kB1 + 2 * kLbo1, [&](unsigned char* shared) {
      const int tid = static_cast<int>(threadIdx.x);
      const uint32_t base = emu::SharedAddress(shared);
      PlaceA(shared, base + kA0, p0, tid, 2 * kWarpgroup);
      PlaceBKMajor(shared, base + kB0, p0, tid, 2 * kWarpgroup);
      PlaceBNMajor(shared, base + kB1, p1, kLbo1, tid, 2 * kWarpgroup);
      __syncthreads();
      const int i = tid % kWarpgroup;
      if (tid / kWarpgroup == 0) {
        float d[32];
        kernel::WarpgroupFence();
        for (int slice = 0; slice < 2; ++slice) {
          kernel::WarpgroupMmaSS64<false>(d, IsaDescriptor(base + kA0 + 32 * slice, 16, kAtom),
                                          IsaDescriptor(base + kB0 + 32 * slice, 16, kAtom),
                                          slice > 0);
        }
        kernel::WarpgroupCommit();
        kernel::WarpgroupWait<0>();
        StoreAccumulators(d, 64, i, &out0);
      } else {
        uint32_t a[4];
        ARegisters(p1, i, 0, a);
        float d[64], e[64];
        const uint64_t desc_b = IsaDescriptor(base + kB1, kLbo1, kAtom);
        kernel::WarpgroupFence();
        kernel::WarpgroupMmaRS128<true>(d, a, desc_b, false);
        kernel::WarpgroupCommit();
        kernel::WarpgroupMmaRS128<true>(e, a, desc_b, false);
        kernel::WarpgroupCommit();
        kernel::WarpgroupWait<1>();
        StoreAccumulators(d, 128, i, &out1a);
        kernel::WarpgroupWait<0>();
        StoreAccumulators(e, 128, i, &out1b);
      }
      __syncthreads();
    });
    ExpectProduct(p0, out0, "warpgroup 0, schedule seed " + std::to_string(seed));
    ExpectProduct(p1, out1a, "warpgroup 1 group 1, schedule seed " + std::to_string(seed));
    ExpectProduct(p1, out1b, "warpgroup 1 group 2, schedule seed " + std::to_string(seed));
  }
  SetScheduleSeed(0);
}

// ---- the header's helpers against this file's reading of the ISA -------------------------------

// Swizzle128Offset and Swizzle128Descriptor (the kernels' placement and descriptors) must agree
// with the ISA's canonical layouts and descriptor format as written above, and the header's recipe
// (place with Swizzle128Offset, advance the descriptor 32 bytes per k16) must compute A * B.
TEST(WarpgroupMmaEmulation, HeaderSwizzleHelpersAgreeWithIsaLayouts) {
  // K-major (rows M or N, 64 k per row; 8-row groups 1024 bytes apart).
  for (int row = 0; row < 256; ++row) {
    for (int col = 0; col < 64; ++col) {
      ASSERT_EQ(kernel::Swizzle128Offset(row, col), KMajorAddress(0, row, col, kAtom))
          << "K-major element (" << row << ", k " << col << ")";
    }
  }
  // N-major B: the header's rows are k, its columns n (< 64); LBO is not involved below 64 n.
  for (int k = 0; k < 64; ++k) {
    for (int n = 0; n < 64; ++n) {
      ASSERT_EQ(kernel::Swizzle128Offset(k, n), MnMajorAddress(0, n, k, 0, kAtom))
          << "N-major element (n " << n << ", k " << k << ")";
    }
  }
  for (uint32_t address : {0u, 16u, 32u, 96u, 1024u, 5152u, 0x3FFF0u, 0x40020u}) {
    for (uint32_t lbo : {16u, 2048u, 4096u, 0x3FFF0u}) {
      for (uint32_t sbo : {16u, 1024u, 0x3FFF0u}) {
        ASSERT_EQ(kernel::Swizzle128Descriptor(address, lbo, sbo), IsaDescriptor(address, lbo, sbo))
            << std::hex << "address 0x" << address << " lbo 0x" << lbo << " sbo 0x" << sbo;
      }
    }
  }
  // End to end with the header's own placement and descriptors.
  const Problem p = MakeProblem(64, 64, 17);
  constexpr uint32_t kA = 0, kB = 8 * kAtom;
  std::vector<float> out(64 * 64);
  RunGrid(dim3(1), kWarpgroup, kB + 8 * kAtom, [&](unsigned char* shared) {
    const int tid = static_cast<int>(threadIdx.x);
    const uint32_t base = emu::SharedAddress(shared);
    for (int e = tid; e < 64 * 64; e += kWarpgroup) {
      const int row = e / 64, col = e % 64;
      StoreBf16(shared, base + kA + kernel::Swizzle128Offset(row, col), p.A(row, col));
      StoreBf16(shared, base + kB + kernel::Swizzle128Offset(row, col), p.B(col, row));
    }
    kernel::FenceProxyAsyncShared();
    __syncthreads();
    float d[32];
    kernel::WarpgroupFence();
    for (int slice = 0; slice < 4; ++slice) {
      kernel::WarpgroupMmaSS64<false>(
          d, kernel::Swizzle128Descriptor(base + kA + 32 * slice, 16, 1024),
          kernel::Swizzle128Descriptor(base + kB + 32 * slice, 16, 1024), slice > 0);
    }
    kernel::WarpgroupCommit();
    kernel::WarpgroupWait<0>();
    StoreAccumulators(d, 64, tid, &out);
  });
  ExpectProduct(p, out, "header placement and descriptors");
}

// ---- asynchrony -------------------------------------------------------------------------------

// All-ones A and B: every D entry of one wgmma is 16. The accumulators start at 1.
struct OnesOperands {
  uint64_t desc_a = 0, desc_b = 0;
};
OnesOperands PlaceOnes(unsigned char* shared, int index, int count, int n = 64) {
  const uint32_t base = emu::SharedAddress(shared);
  for (int e = index; e < 64 * 16; e += count) {
    StoreBf16(shared, KMajorAddress(base, e / 16, e % 16, kAtom), kBf16One);
  }
  for (int e = index; e < n * 16; e += count) {
    StoreBf16(shared, KMajorAddress(base + 8 * kAtom, e / 16, e % 16, kAtom), kBf16One);
  }
  return {IsaDescriptor(base, 16, kAtom), IsaDescriptor(base + 8 * kAtom, 16, kAtom)};
}
constexpr size_t kOnesSharedBytes = 16 * kAtom;

bool AllEqual(const float* d, int count, float value) {
  for (int j = 0; j < count; ++j) {
    if (d[j] != value) return false;
  }
  return true;
}

TEST(WarpgroupMmaEmulation, AccumulatorsChangeOnlyWhenTheirGroupIsWaitedFor) {
  std::vector<std::string> failures;
  RunGrid(dim3(1), kWarpgroup, kOnesSharedBytes, [&](unsigned char* shared) {
    const int tid = static_cast<int>(threadIdx.x);
    const OnesOperands ops = PlaceOnes(shared, tid, kWarpgroup);
    __syncthreads();
    auto expect = [&](bool ok, const char* what) {
      if (!ok) failures.push_back("thread " + std::to_string(tid) + ": " + what);
    };
    float d1[32], d2[32], d3[32];
    for (int j = 0; j < 32; ++j) d1[j] = d2[j] = d3[j] = 1.0f;
    kernel::WarpgroupFence();
    kernel::WarpgroupMmaSS64<false>(d1, ops.desc_a, ops.desc_b, true);
    expect(AllEqual(d1, 32, 1.0f), "d1 changed at issue");
    // wait_group waits only for committed groups: the uncommitted wgmma stays in flight.
    kernel::WarpgroupWait<0>();
    expect(AllEqual(d1, 32, 1.0f), "an uncommitted wgmma completed at wait_group 0");
    kernel::WarpgroupCommit();
    expect(AllEqual(d1, 32, 1.0f), "d1 changed at commit_group");
    kernel::WarpgroupWait<0>();
    expect(AllEqual(d1, 32, 17.0f), "d1 not written by wait_group 0");
    // Two groups: wait_group 1 completes only the older.
    kernel::WarpgroupFence();
    kernel::WarpgroupMmaSS64<false>(d2, ops.desc_a, ops.desc_b, true);
    kernel::WarpgroupCommit();
    kernel::WarpgroupMmaSS64<false>(d3, ops.desc_a, ops.desc_b, true);
    kernel::WarpgroupMmaSS64<false>(d3, ops.desc_a, ops.desc_b, true);  // chained in one group
    kernel::WarpgroupCommit();
    kernel::WarpgroupWait<2>();
    expect(AllEqual(d2, 32, 1.0f) && AllEqual(d3, 32, 1.0f), "wait_group 2 completed a group");
    kernel::WarpgroupWait<1>();
    expect(AllEqual(d2, 32, 17.0f), "wait_group 1 did not complete the older group");
    expect(AllEqual(d3, 32, 1.0f), "wait_group 1 completed the newer group");
    kernel::WarpgroupWait<0>();
    expect(AllEqual(d3, 32, 33.0f), "wait_group 0 did not complete both chained wgmmas");
  });
  EXPECT_TRUE(failures.empty()) << failures.size() << " failures, first: " << failures.front();
}

TEST(WarpgroupMmaEmulation, ModifyingInFlightRegistersIsAnError) {
  // The accumulators.
  ExpectErrorContaining(
      [] {
        RunGrid(dim3(1), kWarpgroup, kOnesSharedBytes, [](unsigned char* shared) {
          const OnesOperands ops = PlaceOnes(shared, static_cast<int>(threadIdx.x), kWarpgroup);
          __syncthreads();
          float d[32] = {};
          kernel::WarpgroupFence();
          kernel::WarpgroupMmaSS64<false>(d, ops.desc_a, ops.desc_b, true);
          kernel::WarpgroupCommit();
          if (threadIdx.x == 5) d[3] += 1.0f;
          kernel::WarpgroupWait<0>();
        });
      },
      {"thread 5 (warp 0, lane 5)", "registers of an in-flight wgmma were modified",
       "accumulator d[3]", "changed from 0 to 1"});
  // The A registers (the kernel reuses one array for two in-flight wgmmas).
  ExpectErrorContaining(
      [] {
        RunGrid(dim3(1), kWarpgroup, kOnesSharedBytes, [](unsigned char* shared) {
          const OnesOperands ops = PlaceOnes(shared, static_cast<int>(threadIdx.x), kWarpgroup);
          __syncthreads();
          uint32_t a[4] = {Pack(kBf16One, kBf16One), Pack(kBf16One, kBf16One),
                           Pack(kBf16One, kBf16One), Pack(kBf16One, kBf16One)};
          float d[32] = {};
          kernel::WarpgroupFence();
          kernel::WarpgroupMmaRS64<false>(d, a, ops.desc_b, true);
          a[2] = 0;
          kernel::WarpgroupMmaRS64<false>(d, a, ops.desc_b, true);
          kernel::WarpgroupCommit();
          kernel::WarpgroupWait<0>();
        });
      },
      {"thread 0 (warp 0, lane 0)", "registers of an in-flight wgmma were modified",
       "A register a[2] of wgmma.mma_async #1"});
  // The shared operands.
  ExpectErrorContaining(
      [] {
        RunGrid(dim3(1), kWarpgroup, kOnesSharedBytes, [](unsigned char* shared) {
          const OnesOperands ops = PlaceOnes(shared, static_cast<int>(threadIdx.x), kWarpgroup);
          __syncthreads();
          float d[32] = {};
          kernel::WarpgroupFence();
          kernel::WarpgroupMmaSS64<false>(d, ops.desc_a, ops.desc_b, true);
          kernel::WarpgroupCommit();
          if (threadIdx.x == 0) StoreBf16(shared, emu::SharedAddress(shared) + 8 * kAtom, 0);
          kernel::WarpgroupWait<0>();
        });
      },
      {"shared memory read by an in-flight wgmma was modified", "B[0][0]", "0x3f80 to 0x0000"});
}

TEST(WarpgroupMmaEmulation, ReturningWithPendingMmasIsAnError) {
  ExpectErrorContaining(
      [] {
        RunGrid(dim3(1), kWarpgroup, kOnesSharedBytes, [](unsigned char* shared) {
          const OnesOperands ops = PlaceOnes(shared, static_cast<int>(threadIdx.x), kWarpgroup);
          __syncthreads();
          float d[32] = {};
          kernel::WarpgroupFence();
          kernel::WarpgroupMmaSS64<false>(d, ops.desc_a, ops.desc_b, true);
          kernel::WarpgroupWait<0>();  // does not wait for the uncommitted wgmma
        });
      },
      {"returns with 1 wgmma.mma_async of its warpgroup still pending (1 uncommitted"});
  ExpectErrorContaining(
      [] {
        RunGrid(dim3(1), kWarpgroup, kOnesSharedBytes, [](unsigned char* shared) {
          const OnesOperands ops = PlaceOnes(shared, static_cast<int>(threadIdx.x), kWarpgroup);
          __syncthreads();
          float d[32] = {};
          kernel::WarpgroupFence();
          kernel::WarpgroupMmaSS64<false>(d, ops.desc_a, ops.desc_b, true);
          kernel::WarpgroupCommit();
          kernel::WarpgroupMmaSS64<false>(d, ops.desc_a, ops.desc_b, true);
          kernel::WarpgroupCommit();
          kernel::WarpgroupWait<1>();
        });
      },
      {"returns with 1 wgmma.mma_async", "0 uncommitted", "1 in committed group"});
}

// ---- fences -----------------------------------------------------------------------------------

TEST(WarpgroupMmaEmulation, FenceRulesAreChecked) {
  // No wgmma.fence before the first wgmma.
  ExpectErrorContaining(
      [] {
        RunGrid(dim3(1), kWarpgroup, kOnesSharedBytes, [](unsigned char* shared) {
          const OnesOperands ops = PlaceOnes(shared, static_cast<int>(threadIdx.x), kWarpgroup);
          __syncthreads();
          float d[32] = {};
          kernel::WarpgroupMmaSS64<false>(d, ops.desc_a, ops.desc_b, true);
          kernel::WarpgroupCommit();
          kernel::WarpgroupWait<0>();
        });
      },
      {"warpgroup 0", "before any wgmma.fence"});
  // Accumulators changed by the thread after a wgmma wrote them, then used without a fence; with
  // the fence the same kernel runs.
  for (bool fence : {false, true}) {
    auto run = [fence] {
      RunGrid(dim3(1), kWarpgroup, kOnesSharedBytes, [fence](unsigned char* shared) {
        const OnesOperands ops = PlaceOnes(shared, static_cast<int>(threadIdx.x), kWarpgroup);
        __syncthreads();
        float d[32] = {};
        kernel::WarpgroupFence();
        kernel::WarpgroupMmaSS64<false>(d, ops.desc_a, ops.desc_b, true);
        kernel::WarpgroupCommit();
        kernel::WarpgroupWait<0>();
        kernel::WarpgroupMmaSS64<false>(d, ops.desc_a, ops.desc_b, true);  // untouched: fine
        kernel::WarpgroupCommit();
        kernel::WarpgroupWait<0>();
        if (threadIdx.x == 3) d[0] *= 0.5f;
        if (fence) kernel::WarpgroupFence();
        kernel::WarpgroupMmaSS64<false>(d, ops.desc_a, ops.desc_b, true);
        kernel::WarpgroupCommit();
        kernel::WarpgroupWait<0>();
      });
    };
    if (fence) {
      EXPECT_NO_THROW(run());
    } else {
      ExpectErrorContaining(run, {"thread 3 (warp 0, lane 3)", "wgmma.mma_async #3",
                                  "d[0] was changed by the thread (from 32, written by wgmma #2, "
                                  "to 16) with no wgmma.fence"});
    }
  }
  // A thread's write after a wgmma.fence is seen too, though that fence ended the bookkeeping of
  // older wgmma writes: accumulators scaled after it, or an RS wgmma's A registers rewritten
  // after it, then used by a wgmma with no fence between.
  for (bool fence : {false, true}) {
    for (bool change_a : {false, true}) {
      auto run = [fence, change_a] {
        RunGrid(dim3(1), kWarpgroup, kOnesSharedBytes, [fence, change_a](unsigned char* shared) {
          const OnesOperands ops = PlaceOnes(shared, static_cast<int>(threadIdx.x), kWarpgroup);
          __syncthreads();
          float d[32] = {};
          constexpr uint32_t kOnes = kBf16One | (uint32_t{kBf16One} << 16);
          uint32_t a[4] = {kOnes, kOnes, kOnes, kOnes};
          kernel::WarpgroupFence();
          kernel::WarpgroupMmaRS64<false>(d, a, ops.desc_b, true);
          kernel::WarpgroupCommit();
          kernel::WarpgroupWait<0>();
          kernel::WarpgroupFence();
          if (threadIdx.x == 5) {
            if (change_a) {
              a[2] = 0;
            } else {
              d[1] *= 0.5f;
            }
          }
          if (fence) kernel::WarpgroupFence();
          kernel::WarpgroupMmaRS64<false>(d, a, ops.desc_b, true);
          kernel::WarpgroupCommit();
          kernel::WarpgroupWait<0>();
        });
      };
      if (fence) {
        EXPECT_NO_THROW(run());
      } else {
        ExpectErrorContaining(
            run, {"thread 5 (warp 0, lane 5)", "wgmma.mma_async #2",
                  change_a ? "its A register a[2] was written by the thread (0x3f803f80"
                           : "its accumulator d[1] was written by the thread",
                  "with no wgmma.fence"});
      }
    }
  }
  // Operands landed by cp.async are readable by wgmma only after the copying thread's
  // fence.proxy.async.
  struct alignas(16) Ones {
    uint16_t values[64 * 16];
  };
  auto ones = std::make_unique<Ones>();
  for (uint16_t& v : ones->values) v = kBf16One;
  for (bool proxy_fence : {false, true}) {
    auto run = [&ones, proxy_fence] {
      RunGrid(dim3(1), kWarpgroup, kOnesSharedBytes, [&ones, proxy_fence](unsigned char* shared) {
        const int tid = static_cast<int>(threadIdx.x);
        const uint32_t base = emu::SharedAddress(shared);
        // A by plain stores; B (all ones, so the swizzle does not matter) by cp.async.
        for (int e = tid; e < 64 * 16; e += kWarpgroup) {
          StoreBf16(shared, KMajorAddress(base, e / 16, e % 16, kAtom), kBf16One);
        }
        // B's 64 rows of 16 k: two 16-byte chunks each, at the rows' swizzled chunk positions.
        for (int chunk = tid; chunk < 128; chunk += kWarpgroup) {
          const int row = chunk / 2, half = chunk % 2;
          kernel::CopyAsync16(KMajorAddress(base + 8 * kAtom, row, 8 * half, kAtom),
                              ones->values + 8 * chunk, true);
        }
        kernel::CommitAsyncCopies();
        kernel::WaitAsyncCopies<0>();
        if (proxy_fence) kernel::FenceProxyAsyncShared();
        __syncthreads();
        float d[32] = {};
        kernel::WarpgroupFence();
        kernel::WarpgroupMmaSS64<false>(d, IsaDescriptor(base, 16, kAtom),
                                        IsaDescriptor(base + 8 * kAtom, 16, kAtom), false);
        kernel::WarpgroupCommit();
        kernel::WarpgroupWait<0>();
        if (!AllEqual(d, 32, 16.0f)) throw std::logic_error("wrong result");
      });
    };
    if (proxy_fence) {
      EXPECT_NO_THROW(run());
    } else {
      ExpectErrorContaining(run, {"B[0][0]", "was written by a cp.async of thread 0",
                                  "fence.proxy.async.shared::cta (FenceProxyAsyncShared)"});
    }
  }
}

// ---- misuse -----------------------------------------------------------------------------------

TEST(WarpgroupMmaEmulation, WarpgroupMisuseIsReported) {
  // A thread that returns while the rest of its warpgroup waits at a wgmma instruction.
  ExpectErrorContaining(
      [] {
        RunGrid(dim3(1), kWarpgroup, 0, [](unsigned char*) {
          if (threadIdx.x == 100) return;
          kernel::WarpgroupFence();
        });
      },
      {"thread 100 (warp 3, lane 4) returns while threads 0-99 of its warpgroup wait for it at "
       "wgmma.fence (WarpgroupFence)"});
  // Threads at different warpgroup instructions.
  ExpectErrorContaining(
      [] {
        RunGrid(dim3(1), kWarpgroup, 0, [](unsigned char*) {
          if (threadIdx.x < 64) {
            kernel::WarpgroupCommit();
          } else {
            kernel::WarpgroupWait<0>();
          }
        });
      },
      {"thread 64 (warp 2, lane 0) reaches wgmma.wait_group (WarpgroupWait) while threads 0-63 of "
       "its warpgroup wait at wgmma.commit_group (WarpgroupCommit): divergent warpgroup"});
  // A lane at __syncthreads while its warpgroup waits at a wgmma instruction.
  ExpectErrorContaining(
      [] {
        RunGrid(dim3(1), kWarpgroup, 0, [](unsigned char*) {
          if (threadIdx.x == 127) {
            __syncthreads();
          } else {
            kernel::WarpgroupFence();
          }
        });
      },
      {"thread 127 (warp 3, lane 31) reaches __syncthreads", "wait for it at wgmma.fence",
       "deadlock (divergent warpgroup)"});
  // A block whose last warpgroup is incomplete.
  ExpectErrorContaining(
      [] { RunGrid(dim3(1), 96, 0, [](unsigned char*) { kernel::WarpgroupFence(); }); },
      {"thread 0 (warp 0, lane 0) reaches wgmma.fence", "incomplete in a block of 96 threads"});
  // Threads disagreeing on a descriptor.
  ExpectErrorContaining(
      [] {
        RunGrid(dim3(1), kWarpgroup, kOnesSharedBytes, [](unsigned char* shared) {
          OnesOperands ops = PlaceOnes(shared, static_cast<int>(threadIdx.x), kWarpgroup);
          __syncthreads();
          if (threadIdx.x == 77) ops.desc_b += 2;  // 32 bytes further
          float d[32] = {};
          kernel::WarpgroupFence();
          kernel::WarpgroupMmaSS64<false>(d, ops.desc_a, ops.desc_b, true);
          kernel::WarpgroupCommit();
          kernel::WarpgroupWait<0>();
        });
      },
      {"warpgroup 0 (threads 0-127): wgmma.mma_async #1: threads disagree on the B descriptor",
       "thread 77"});
  // Unsupported descriptors, bad fields, bad shapes, operands outside shared memory, NaN.
  struct Case {
    uint64_t desc_b_override;  // 0: keep
    int n;
    bool poison_b;
    std::vector<std::string> parts;
  };
  const uint32_t b = 8 * kAtom;
  const std::vector<Case> cases = {
      {IsaDescriptor(b, 16, kAtom, 2),
       64,
       false,
       {"swizzle mode 2 (64-byte swizzle)", "B descriptor"}},
      {IsaDescriptor(b, 16, kAtom, 0), 64, false, {"swizzle mode 0", "only mode 1"}},
      {IsaDescriptor(b, 16, kAtom, 1, 3), 64, false, {"base offset 3", "not support"}},
      {IsaDescriptor(b, 16, kAtom) | (uint64_t{1} << 14), 64, false, {"outside the ISA's fields"}},
      {IsaDescriptor(15 * kAtom, 16, kAtom),
       64,
       false,
       {"B[", "outside the block's 16384 bytes of shared memory"}},
      {0, 76, false, {"m64n76k16 is not a wgmma shape"}},
      {0, 64, true, {"B[", "is NaN", "poison"}},
  };
  for (const Case& c : cases) {
    ExpectErrorContaining(
        [&c] {
          RunGrid(dim3(1), kWarpgroup, kOnesSharedBytes, [&c](unsigned char* shared) {
            OnesOperands ops = PlaceOnes(shared, static_cast<int>(threadIdx.x), kWarpgroup,
                                         c.poison_b ? 32 : 64);  // 32: half of B stays poison
            __syncthreads();
            if (c.desc_b_override != 0) ops.desc_b = c.desc_b_override;
            // (No heap objects here: the threads that the error abandons are never unwound.)
            float d[128] = {};
            emu::WarpgroupFence();
            emu::WarpgroupMmaSS(d, c.n, ops.desc_a, ops.desc_b, true, false);
            emu::WarpgroupCommit();
            emu::WarpgroupWait(0);
          });
        },
        c.parts);
  }
}

}  // namespace
}  // namespace pdpool::cuda_emulation
