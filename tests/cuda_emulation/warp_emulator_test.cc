// Self-test of the CUDA warp emulator: the PTX fragment layouts of mma.m16n8k16 and
// ldmatrix.m8n8.x4{.trans} (written here from the PTX ISA's per-element formulas, independently of
// the emulator's register-wise code), shuffles and votes, __syncthreads, cp.async group ordering,
// the errors it must report, a small ldmatrix + mma GEMM end to end, and its speed.
// The kernels include these under g++ too: they must coexist with the emulator's built-ins.
#include "tests/cuda_emulation/warp_emulator.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "tests/cuda_emulation/emulator_test_support.h"

namespace pdpool::cuda_emulation {
namespace {

namespace emu = pdpool::agent::cuda::emulation;
using testing::Bf16ToDouble;
using testing::ExpectErrorContaining;
using testing::Pack;
using testing::RandomBf16;

// ---- mma --------------------------------------------------------------------------------------

// The PTX ISA's fragment formulas for mma.m16n8k16 with .bf16 A/B and .f32 C/D, element by element.
// A: elements a0..a7 (a_{2j}, a_{2j+1} in register j, low half first).
int ARow(int lane, int i) { return lane / 4 + ((i < 2 || (i >= 4 && i < 6)) ? 0 : 8); }
int ACol(int lane, int i) { return (lane % 4) * 2 + (i & 1) + (i >= 4 ? 8 : 0); }
// B: b0..b3 (b0, b1 in register 0; b2, b3 in register 1). Row is k, column is n.
int BRow(int lane, int i) { return (lane % 4) * 2 + (i & 1) + (i >= 2 ? 8 : 0); }
int BCol(int lane, int /*i*/) { return lane / 4; }
// C/D: c0..c3.
int CRow(int lane, int i) { return lane / 4 + (i >= 2 ? 8 : 0); }
int CCol(int lane, int i) { return (lane % 4) * 2 + (i & 1); }

TEST(WarpEmulatorMma, MatchesDoubleReferenceWithPtxFragmentLayout) {
  std::mt19937 rng(1234);
  constexpr int kWarps = 4;  // each warp multiplies its own matrices
  std::vector<std::array<std::array<uint16_t, 16>, 16>> a(kWarps);
  std::vector<std::array<std::array<uint16_t, 8>, 16>> b(kWarps);
  std::vector<std::array<std::array<float, 8>, 16>> c(kWarps), d(kWarps);
  std::uniform_real_distribution<float> cdist(-4.0f, 4.0f);
  for (int w = 0; w < kWarps; ++w) {
    for (auto& row : a[w]) {
      for (auto& v : row) v = RandomBf16(rng);
    }
    for (auto& row : b[w]) {
      for (auto& v : row) v = RandomBf16(rng);
    }
    for (auto& row : c[w]) {
      for (auto& v : row) v = cdist(rng);
    }
  }

  RunGrid(dim3(1), 32 * kWarps, 0, [&](unsigned char*) {
    int w = static_cast<int>(threadIdx.x) / 32;
    int lane = static_cast<int>(threadIdx.x) % 32;
    uint16_t ae[8], be[4];
    for (int i = 0; i < 8; ++i) ae[i] = a[w][ARow(lane, i)][ACol(lane, i)];
    for (int i = 0; i < 4; ++i) be[i] = b[w][BRow(lane, i)][BCol(lane, i)];
    uint32_t ar[4] = {Pack(ae[0], ae[1]), Pack(ae[2], ae[3]), Pack(ae[4], ae[5]),
                      Pack(ae[6], ae[7])};
    float acc[4];
    for (int i = 0; i < 4; ++i) acc[i] = c[w][CRow(lane, i)][CCol(lane, i)];
    emu::MmaBf16(acc, ar, Pack(be[0], be[1]), Pack(be[2], be[3]));
    for (int i = 0; i < 4; ++i) d[w][CRow(lane, i)][CCol(lane, i)] = acc[i];
  });

  for (int w = 0; w < kWarps; ++w) {
    for (int m = 0; m < 16; ++m) {
      for (int n = 0; n < 8; ++n) {
        double expected = c[w][m][n];
        double magnitude = std::fabs(c[w][m][n]);
        for (int k = 0; k < 16; ++k) {
          double product = Bf16ToDouble(a[w][m][k]) * Bf16ToDouble(b[w][k][n]);
          expected += product;
          magnitude += std::fabs(product);
        }
        EXPECT_NEAR(d[w][m][n], expected, 1e-6 * magnitude + 1e-7)
            << "warp " << w << " D[" << m << "][" << n << "]";
      }
    }
  }
}

// Single non-zero entries make any misplaced fragment element visible exactly.
TEST(WarpEmulatorMma, EveryAAndBElementLandsWhereThePtxLayoutSays) {
  const uint16_t kOne = 0x3f80;  // bf16 1.0
  for (int am = 0; am < 16; ++am) {
    for (int ak = 0; ak < 16; ++ak) {
      // A = E(am, ak) (a single 1) and B[k][n] = (k == ak) ? 2^n : 0, so D[am][n] = 2^n and
      // every other D entry is 0.
      std::array<std::array<float, 8>, 16> out{};
      RunGrid(dim3(1), 32, 0, [&](unsigned char*) {
        int lane = static_cast<int>(threadIdx.x);
        uint16_t ae[8], be[4];
        for (int i = 0; i < 8; ++i) ae[i] = (ARow(lane, i) == am && ACol(lane, i) == ak) ? kOne : 0;
        for (int i = 0; i < 4; ++i) {
          int k = BRow(lane, i), n = BCol(lane, i);
          float value = k == ak ? std::ldexp(1.0f, n) : 0.0f;
          uint32_t bits;
          std::memcpy(&bits, &value, sizeof bits);
          be[i] = static_cast<uint16_t>(bits >> 16);
        }
        uint32_t ar[4] = {Pack(ae[0], ae[1]), Pack(ae[2], ae[3]), Pack(ae[4], ae[5]),
                          Pack(ae[6], ae[7])};
        float acc[4] = {0, 0, 0, 0};
        emu::MmaBf16(acc, ar, Pack(be[0], be[1]), Pack(be[2], be[3]));
        for (int i = 0; i < 4; ++i) out[CRow(lane, i)][CCol(lane, i)] = acc[i];
      });
      for (int m = 0; m < 16; ++m) {
        for (int n = 0; n < 8; ++n) {
          float expected = m == am ? std::ldexp(1.0f, n) : 0.0f;
          ASSERT_EQ(out[m][n], expected)
              << "A element (" << am << "," << ak << "), D[" << m << "][" << n << "]";
        }
      }
    }
  }
}

// The kernels pack bf16 pairs with cuda_bf16.h: __floats2bfloat162_rn(x, y) must put x in the low
// half, i.e. make x the lower-indexed element of the fragment register.
TEST(WarpEmulatorMma, CudaBf16PairsPackTheFirstElementLow) {
  __nv_bfloat162 pair = __floats2bfloat162_rn(1.5f, -2.0f);
  uint32_t bits;
  std::memcpy(&bits, &pair, sizeof bits);
  EXPECT_EQ(bits, Pack(0x3fc0, 0xc000));
  // A row of ones times B = (k + 1 in column n): D[m][n] = sum over k of (k + 1) = 136.
  float got = 0;
  RunGrid(dim3(1), 32, 0, [&](unsigned char*) {
    int lane = static_cast<int>(threadIdx.x);
    uint32_t a[4], b[2];
    for (uint32_t& r : a) {
      __nv_bfloat162 ones = __floats2bfloat162_rn(1.0f, 1.0f);
      std::memcpy(&r, &ones, sizeof r);
    }
    for (int reg = 0; reg < 2; ++reg) {
      __nv_bfloat162 v = __floats2bfloat162_rn(static_cast<float>(BRow(lane, 2 * reg) + 1),
                                               static_cast<float>(BRow(lane, 2 * reg + 1) + 1));
      std::memcpy(&b[reg], &v, sizeof b[reg]);
    }
    float d[4] = {0, 0, 0, 0};
    emu::MmaBf16(d, a, b[0], b[1]);
    float2 check = __bfloat1622float2(__floats2bfloat162_rn(d[0] / 136.0f, d[3] / 136.0f));
    if (lane == 9) got = check.x + check.y;
  });
  EXPECT_EQ(got, 2.0f);
}

// ---- ldmatrix ---------------------------------------------------------------------------------

// Shared memory holds four 8x8 matrices of 16-bit values at scattered, padded row addresses:
// row r of matrix m starts at RowOffset(m, r) and element j of it is Value(m, r, j).
uint32_t RowOffset(int m, int r) {
  return static_cast<uint32_t>(((7 - r) * 4 + (m ^ 2)) * 32 + 16);
}
uint16_t Value(int m, int r, int j) { return static_cast<uint16_t>(1000 * m + 10 * r + j); }

void CheckLoadMatrix(bool transposed) {
  constexpr size_t kShared = 32 * 32 + 64;
  std::array<std::array<uint32_t, 4>, 32> got{};
  RunGrid(dim3(1), 64, kShared, [&](unsigned char* shared) {
    int tid = static_cast<int>(threadIdx.x);
    if (tid == 0) {
      for (int m = 0; m < 4; ++m) {
        for (int r = 0; r < 8; ++r) {
          for (int j = 0; j < 8; ++j) {
            uint16_t v = Value(m, r, j);
            std::memcpy(shared + RowOffset(m, r) + 2 * j, &v, 2);
          }
        }
      }
    }
    __syncthreads();
    int lane = tid % 32;
    // Lanes 8m..8m+7 supply the addresses of rows 0..7 of matrix m.
    uint32_t address = RowOffset(lane / 8, lane % 8);
    EXPECT_EQ(emu::SharedAddress(shared + address), address);
    uint32_t r[4];
    emu::LoadMatrixX4(r, emu::SharedAddress(shared + address), transposed);
    if (tid < 32) {
      for (int m = 0; m < 4; ++m) got[static_cast<size_t>(lane)][static_cast<size_t>(m)] = r[m];
    }
  });
  for (int lane = 0; lane < 32; ++lane) {
    int g = lane / 4, t = lane % 4;
    for (int m = 0; m < 4; ++m) {
      // PTX: four consecutive lanes hold a row (two elements each); with .trans the matrix is
      // delivered column-major: lane holds column g of rows 2t and 2t+1.
      uint32_t expected = transposed ? Pack(Value(m, 2 * t, g), Value(m, 2 * t + 1, g))
                                     : Pack(Value(m, g, 2 * t), Value(m, g, 2 * t + 1));
      EXPECT_EQ(got[static_cast<size_t>(lane)][static_cast<size_t>(m)], expected)
          << "lane " << lane << " matrix " << m << (transposed ? " (trans)" : "");
    }
  }
}

TEST(WarpEmulatorLdMatrix, PlainFollowsPtxLayout) { CheckLoadMatrix(false); }
TEST(WarpEmulatorLdMatrix, TransposedFollowsPtxLayout) { CheckLoadMatrix(true); }

TEST(WarpEmulatorLdMatrix, MisalignedOrOutOfBoundsRowAddressesAreErrors) {
  ExpectErrorContaining(
      [] {
        RunGrid(dim3(1), 32, 1024, [](unsigned char*) {
          uint32_t r[4];
          emu::LoadMatrixX4(r, threadIdx.x == 5 ? 40u : 0u, false);
        });
      },
      {"ldmatrix", "lane 5", "0x28", "not 16-byte aligned"});
  ExpectErrorContaining(
      [] {
        RunGrid(dim3(1), 32, 1024, [](unsigned char*) {
          uint32_t r[4];
          emu::LoadMatrixX4(r, threadIdx.x == 9 ? 1024u : 0u, true);
        });
      },
      {"ldmatrix", "lane 9", "outside the block's 1024 bytes"});
}

// ---- shuffles, votes, barriers ----------------------------------------------------------------

TEST(WarpEmulatorShuffle, XorReductionsAndSegments) {
  constexpr int kThreads = 128;
  std::vector<float> sums(kThreads);
  std::vector<int> maxima(kThreads);
  std::vector<unsigned> broadcast(kThreads), up(kThreads), down(kThreads), xor_w8(kThreads);
  std::vector<unsigned> ballots(kThreads);
  std::vector<int> any(kThreads), all(kThreads);
  std::vector<double> doubles(kThreads);
  RunGrid(dim3(1), kThreads, 0, [&](unsigned char*) {
    int tid = static_cast<int>(threadIdx.x);
    int lane = tid % 32;
    float v = static_cast<float>(tid);
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    sums[static_cast<size_t>(tid)] = v;
    int m = (lane * 7) % 32 + 100 * (tid / 32);
    for (int offset = 1; offset < 32; offset *= 2)
      m = max(m, __shfl_xor_sync(0xffffffffu, m, offset));
    maxima[static_cast<size_t>(tid)] = m;
    unsigned u = static_cast<unsigned>(tid);
    broadcast[static_cast<size_t>(tid)] = __shfl_sync(0xffffffffu, u, 5);
    up[static_cast<size_t>(tid)] = __shfl_up_sync(0xffffffffu, u, 3, 8);
    down[static_cast<size_t>(tid)] = __shfl_down_sync(0xffffffffu, u, 2, 16);
    xor_w8[static_cast<size_t>(tid)] = __shfl_xor_sync(0xffffffffu, u, 9, 8);
    ballots[static_cast<size_t>(tid)] = __ballot_sync(0xffffffffu, lane % 3 == 0);
    any[static_cast<size_t>(tid)] = __any_sync(0xffffffffu, tid == 70);
    all[static_cast<size_t>(tid)] = __all_sync(0xffffffffu, tid / 32 != 1 || lane != 4);
    doubles[static_cast<size_t>(tid)] = __shfl_sync(0xffffffffu, tid * 0.5, 31 - lane);
    __syncwarp();
  });
  unsigned expected_ballot = 0;
  for (int lane = 0; lane < 32; lane += 3) expected_ballot |= 1u << lane;
  for (int tid = 0; tid < kThreads; ++tid) {
    int warp = tid / 32, lane = tid % 32;
    size_t i = static_cast<size_t>(tid);
    float warp_sum = static_cast<float>(32 * 32 * warp + 31 * 32 / 2);
    EXPECT_EQ(sums[i], warp_sum) << tid;
    EXPECT_EQ(maxima[i], 31 + 100 * warp) << tid;
    EXPECT_EQ(broadcast[i], static_cast<unsigned>(warp * 32 + 5)) << tid;
    // width 8: lanes below segment start + 3 keep their own value.
    EXPECT_EQ(up[i], static_cast<unsigned>(lane % 8 >= 3 ? tid - 3 : tid)) << tid;
    EXPECT_EQ(down[i], static_cast<unsigned>(lane % 16 < 14 ? tid + 2 : tid)) << tid;
    // width 8, lane mask 9: lane ^ 9 lies in the next segment for lanes of even segments (kept),
    // in the previous one for odd segments (allowed: earlier segments may be read).
    int source = lane ^ 9;
    int segment_end = (lane & ~7) + 7;
    EXPECT_EQ(xor_w8[i], static_cast<unsigned>(warp * 32 + (source <= segment_end ? source : lane)))
        << tid;
    EXPECT_EQ(ballots[i], expected_ballot) << tid;
    EXPECT_EQ(any[i], warp == 2 ? 1 : 0) << tid;
    EXPECT_EQ(all[i], warp == 1 ? 0 : 1) << tid;
    EXPECT_EQ(doubles[i], (warp * 32 + 31 - lane) * 0.5) << tid;
  }
}

TEST(WarpEmulatorBarrier, WritesBeforeSyncthreadsAreSeenAfterItAcrossWarps) {
  for (uint64_t seed : {uint64_t{0}, uint64_t{7}, uint64_t{12345}}) {
    SetScheduleSeed(seed);
    constexpr int kThreads = 128;
    std::vector<int> seen(kThreads * 3);
    RunGrid(dim3(2), kThreads, kThreads * sizeof(int), [&](unsigned char* shared) {
      int* values = reinterpret_cast<int*>(shared);
      int tid = static_cast<int>(threadIdx.x);
      for (int round = 0; round < 3; ++round) {
        values[tid] = tid * 3 + round + 1000 * static_cast<int>(blockIdx.x);
        __syncthreads();
        int partner = (tid + 37 * (round + 1)) % kThreads;
        if (blockIdx.x == 1) seen[static_cast<size_t>(round * kThreads + tid)] = values[partner];
        __syncthreads();  // nobody overwrites before everyone has read
      }
    });
    for (int round = 0; round < 3; ++round) {
      for (int tid = 0; tid < kThreads; ++tid) {
        int partner = (tid + 37 * (round + 1)) % kThreads;
        EXPECT_EQ(seen[static_cast<size_t>(round * kThreads + tid)], partner * 3 + round + 1000)
            << "seed " << seed << " round " << round << " thread " << tid;
      }
    }
  }
  SetScheduleSeed(0);
}

// The same exchange without the second __syncthreads, with a warp-level step after the read: a
// warp that runs ahead overwrites its value for the next round before a partner in another warp
// has read this round's. Shuffling alone never lets a warp get that far ahead (every thread
// released by the barrier reads before any warp step completes); with a schedule seed one warp
// at a time runs ahead, so some seeds must show the stale read.
TEST(WarpEmulatorBarrier, ScheduleSeedsExposeAMissingSyncthreads) {
  constexpr int kThreads = 128;
  int seeds_with_a_race = 0;
  for (uint64_t seed = 1; seed <= 16; ++seed) {
    SetScheduleSeed(seed);
    bool raced = false;
    RunGrid(dim3(1), kThreads, kThreads * sizeof(int), [&](unsigned char* shared) {
      int* values = reinterpret_cast<int*>(shared);
      const int tid = static_cast<int>(threadIdx.x);
      for (int round = 0; round < 3; ++round) {
        values[tid] = tid * 3 + round;
        __syncthreads();
        const int partner = (tid + 37 * (round + 1)) % kThreads;
        if (values[partner] != partner * 3 + round) raced = true;
        __syncwarp();  // a warp-level step, as a kernel's ldmatrix or mma would be
        // (missing: __syncthreads before the next round's write)
      }
    });
    seeds_with_a_race += raced ? 1 : 0;
  }
  SetScheduleSeed(0);
  EXPECT_GT(seeds_with_a_race, 0);
}

TEST(WarpEmulatorGrid, BuiltinsDescribeEveryBlockAndThread) {
  std::set<std::tuple<unsigned, unsigned, unsigned, unsigned>> visited;
  std::vector<std::tuple<unsigned, unsigned, unsigned>> block_order;
  bool dims_ok = true;
  RunGrid(dim3(3, 2, 2), 64, 16, [&](unsigned char* shared) {
    dims_ok = dims_ok && blockDim.x == 64 && blockDim.y == 1 && blockDim.z == 1 && gridDim.x == 3 &&
              gridDim.y == 2 && gridDim.z == 2 && threadIdx.y == 0 && threadIdx.z == 0;
    // Poisoned at block start even though the previous block wrote to it.
    dims_ok = dims_ok && shared[threadIdx.x % 16] == 0xff;
    __syncthreads();
    if (threadIdx.x == 0) {
      shared[3] = 0;
      block_order.emplace_back(blockIdx.x, blockIdx.y, blockIdx.z);
    }
    unsigned before = threadIdx.x;
    __syncwarp();
    dims_ok = dims_ok && threadIdx.x == before;  // the scheduler restored this thread's index
    visited.emplace(blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x);
  });
  EXPECT_TRUE(dims_ok);
  EXPECT_EQ(visited.size(), 12u * 64u);
  ASSERT_EQ(block_order.size(), 12u);
  EXPECT_EQ(block_order[0], std::make_tuple(0u, 0u, 0u));
  EXPECT_EQ(block_order[1], std::make_tuple(1u, 0u, 0u));  // x fastest
  EXPECT_EQ(block_order[3], std::make_tuple(0u, 1u, 0u));
  EXPECT_EQ(block_order[6], std::make_tuple(0u, 0u, 1u));
  EXPECT_EQ(LastRunStats().blocks, 12u);
}

// ---- cp.async ---------------------------------------------------------------------------------

TEST(WarpEmulatorCpAsync, DataLandsOnlyWhenItsGroupIsWaitedFor) {
  struct alignas(16) Source {
    unsigned char bytes[64];
  };
  auto source = std::make_unique<Source>();
  for (int i = 0; i < 64; ++i) source->bytes[i] = static_cast<unsigned char>(i + 1);
  RegisterGlobal(source->bytes, sizeof source->bytes);
  bool ok = true;
  std::string trace;
  auto check = [&](const unsigned char* shared, int chunk, int expected_fill, const char* when) {
    for (int i = 0; i < 16; ++i) {
      int expected =
          expected_fill >= 0 ? expected_fill : source->bytes[16 * (-expected_fill - 1) + i];
      if (shared[16 * chunk + i] != expected) {
        ok = false;
        trace += std::string(when) + ": chunk " + std::to_string(chunk) + " byte " +
                 std::to_string(i) + " is " + std::to_string(shared[16 * chunk + i]) + "\n";
        return;
      }
    }
  };
  RunGrid(dim3(1), 32, 128, [&](unsigned char* shared) {
    if (threadIdx.x != 0) return;  // no barriers or collectives below: other threads may leave
    uint32_t base = emu::SharedAddress(shared);
    emu::CopyAsync16(base + 0, source->bytes + 0, true);
    emu::CopyAsync16(base + 16, source->bytes + 16, true);
    emu::CommitAsyncCopies();  // group 1: chunks 0, 1
    emu::CopyAsync16(base + 32, source->bytes + 32, true);
    emu::CopyAsync16(base + 48, nullptr, false);            // zero fill, source not read
    emu::CommitAsyncCopies();                               // group 2: chunks 2, 3
    emu::CopyAsync16(base + 64, source->bytes + 48, true);  // uncommitted
    check(shared, 0, 0xff, "before any wait");
    check(shared, 3, 0xff, "before any wait");
    emu::WaitAsyncCopies(1);
    check(shared, 0, -1, "after wait_group 1");
    check(shared, 1, -2, "after wait_group 1");
    check(shared, 2, 0xff, "after wait_group 1");
    check(shared, 3, 0xff, "after wait_group 1");
    emu::WaitAsyncCopies(0);
    check(shared, 2, -3, "after wait_group 0");
    check(shared, 3, 0, "after wait_group 0");
    check(shared, 4, 0xff, "uncommitted after wait_group 0");
    emu::CommitAsyncCopies();
    emu::WaitAsyncCopies(0);
    check(shared, 4, -4, "after committing and waiting");
  });
  ClearGlobals();
  EXPECT_TRUE(ok) << trace;
  EXPECT_EQ(LastRunStats().async_copies, 5u);
}

TEST(WarpEmulatorCpAsync, BadCopiesAreErrors) {
  struct alignas(16) Source {
    unsigned char bytes[64];
  };
  auto source = std::make_unique<Source>();
  RegisterGlobal(source->bytes, 32);
  // Reads past the registered range.
  ExpectErrorContaining(
      [&] {
        RunGrid(dim3(1), 32, 64, [&](unsigned char*) {
          if (threadIdx.x == 3) emu::CopyAsync16(0, source->bytes + 32, true);
          emu::WaitAsyncCopies(0);
        });
      },
      {"thread 3", "not inside any registered global range"});
  // A zero fill is not checked against the ranges, even with a wild source.
  RunGrid(dim3(1), 32, 64, [&](unsigned char*) {
    if (threadIdx.x == 0) {
      emu::CopyAsync16(0, source->bytes + 48, false);
      emu::CommitAsyncCopies();
      emu::WaitAsyncCopies(0);
    }
  });
  ClearGlobals();
  ExpectErrorContaining(
      [&] {
        RunGrid(dim3(1), 32, 64, [&](unsigned char*) {
          if (threadIdx.x == 1) emu::CopyAsync16(8, source->bytes, true);
        });
      },
      {"thread 1", "shared destination 0x8 is not 16-byte aligned"});
  ExpectErrorContaining(
      [&] {
        RunGrid(dim3(1), 32, 64, [&](unsigned char*) {
          if (threadIdx.x == 1) emu::CopyAsync16(0, source->bytes + 4, true);
        });
      },
      {"thread 1", "not 16-byte aligned"});
  ExpectErrorContaining(
      [&] {
        RunGrid(dim3(1), 32, 64, [&](unsigned char*) {
          if (threadIdx.x == 2) emu::CopyAsync16(64, source->bytes, true);
        });
      },
      {"thread 2", "outside the block's 64 bytes"});
  // Never waited for.
  ExpectErrorContaining(
      [&] {
        RunGrid(dim3(1), 32, 64, [&](unsigned char*) {
          if (threadIdx.x == 4) {
            emu::CopyAsync16(16, source->bytes, true);
            emu::CommitAsyncCopies();
          }
        });
      },
      {"block (0,0,0)", "thread 4", "still in flight", "1 committed group"});
  // Two copies in flight into the same bytes.
  ExpectErrorContaining(
      [&] {
        RunGrid(dim3(1), 32, 64, [&](unsigned char*) {
          emu::CopyAsync16(16 * (threadIdx.x % 2), source->bytes, true);
          emu::CommitAsyncCopies();
          __syncthreads();  // every thread issues its copy before any waits
          emu::WaitAsyncCopies(0);
        });
      },
      {"thread 2", "earlier cp.async into the same bytes", "thread 0"});
  // SharedAddress of something that is not shared memory.
  ExpectErrorContaining(
      [&] { RunGrid(dim3(1), 32, 64, [&](unsigned char*) { emu::SharedAddress(source->bytes); }); },
      {"SharedAddress", "not inside this block's shared memory"});
}

TEST(WarpEmulatorCpAsync, LdMatrixOfBytesStillInFlightIsAnError) {
  struct alignas(16) Source {
    unsigned char bytes[512];
  };
  auto source = std::make_unique<Source>();
  ExpectErrorContaining(
      [&] {
        RunGrid(dim3(1), 32, 512, [&](unsigned char*) {
          uint32_t lane = threadIdx.x;
          emu::CopyAsync16(16 * lane, source->bytes + 16 * lane, true);
          emu::CommitAsyncCopies();
          // Missing: emu::WaitAsyncCopies(0); __syncthreads();
          uint32_t r[4];
          emu::LoadMatrixX4(r, 16 * lane, false);
          emu::WaitAsyncCopies(0);
        });
      },
      {"ldmatrix", "lane 0", "destination of a cp.async by thread 0",
       "no cp.async.wait_group has completed"});
}

// ---- errors -----------------------------------------------------------------------------------

TEST(WarpEmulatorErrors, DivergentSyncthreadsIsReported) {
  // Threads return while others wait at the barrier.
  ExpectErrorContaining(
      [] {
        RunGrid(dim3(2), 128, 0, [](unsigned char*) {
          if (blockIdx.x == 1 && threadIdx.x >= 64) return;
          __syncthreads();
        });
      },
      {"block (1,0,0) of grid (2,1,1), 128 threads",
       "thread 64 (warp 2, lane 0) returns while 64 thread(s) wait for it at __syncthreads",
       "threads 0-63 (warps 0-1): waiting at __syncthreads (", "warp_emulator_test.cc:"});
  // Threads reach the barrier after others have returned.
  ExpectErrorContaining(
      [] {
        RunGrid(dim3(1), 128, 0, [](unsigned char*) {
          if (threadIdx.x >= 64) return;
          __syncwarp();
          __syncwarp();
          __syncthreads();
        });
      },
      {"block (0,0,0)", "reaches __syncthreads", "warp_emulator_test.cc:",
       "64 thread(s) of the block have returned", "threads 64-127 (warps 2-3): returned (exited)"});
  // The same with the early return after the others are already waiting.
  ExpectErrorContaining(
      [] {
        RunGrid(dim3(1), 64, 0, [](unsigned char*) {
          if (threadIdx.x == 40) {
            __syncwarp();  // lets the other lanes of warp 1 and all of warp 0 reach the barrier
            return;
          }
          if (threadIdx.x >= 32) __syncwarp();
          __syncthreads();
        });
      },
      {"thread 40 (warp 1, lane 8) returns while", "wait for it at __syncthreads",
       "waiting at __syncthreads (", "warp_emulator_test.cc"});
}

TEST(WarpEmulatorErrors, CollectiveMissingALaneIsReported) {
  ExpectErrorContaining(
      [] {
        RunGrid(dim3(1), 64, 0, [](unsigned char*) {
          if (threadIdx.x == 39) return;
          float v = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
          (void)v;
        });
      },
      {"thread 39 (warp 1, lane 7) returns while lanes 0,1,2,3,4,5,6 of its warp wait for it at "
       "__shfl_xor_sync",
       "threads 32-38 (warp 1): waiting at warp collective __shfl_xor_sync (",
       "warp_emulator_test.cc:"});
  // The lane returns before the others arrive.
  ExpectErrorContaining(
      [] {
        RunGrid(dim3(1), 32, 0, [](unsigned char*) {
          if (threadIdx.x == 0) return;
          (void)__shfl_xor_sync(0xffffffffu, 1.0f, 1);
        });
      },
      {"thread 1 (warp 0, lane 1) reaches __shfl_xor_sync (",
       "but lanes 0 of its warp have returned", "a warp collective needs all 32 lanes"});
  // Lanes at different collectives.
  ExpectErrorContaining(
      [] {
        RunGrid(dim3(1), 32, 0, [](unsigned char*) {
          if (threadIdx.x % 2 == 0) {
            __syncwarp();
          } else {
            (void)__shfl_sync(0xffffffffu, 1, 0);
          }
        });
      },
      {"thread 1 (warp 0, lane 1) reaches __shfl_sync (",
       "while lanes 0 of its warp wait at __syncwarp: divergent warp collectives"});
  // A lane at __syncthreads while the rest of its warp waits at a collective.
  ExpectErrorContaining(
      [] {
        RunGrid(dim3(1), 32, 0, [](unsigned char*) {
          if (threadIdx.x == 31) {
            __syncthreads();
          } else {
            __syncwarp();
          }
        });
      },
      {"reaches __syncthreads", "wait for it at __syncwarp", "divergent warp"});
  // Partial masks are not emulated.
  ExpectErrorContaining(
      [] { RunGrid(dim3(1), 32, 0, [](unsigned char*) { (void)__shfl_xor_sync(0xffffu, 1, 1); }); },
      {"only full-warp masks", "0x0000ffff"});
}

TEST(WarpEmulatorErrors, MmaOnPoisonedSharedMemoryIsReported) {
  ExpectErrorContaining(
      [] {
        RunGrid(dim3(1), 32, 512, [](unsigned char* shared) {
          int lane = static_cast<int>(threadIdx.x);
          // Only rows 0..3 of the 16x16 tile are written; the rest is poison.
          for (int i = 0; i < 8; ++i) {
            if (lane < 8) reinterpret_cast<uint16_t*>(shared)[lane * 8 + i] = 0x3f80;
          }
          __syncwarp();
          uint32_t a[4];
          emu::LoadMatrixX4(a, static_cast<uint32_t>(lane * 16), false);
          float d[4] = {0, 0, 0, 0};
          emu::MmaBf16(d, a, 0, 0);
        });
      },
      {"mma: A[", "is NaN", "poison"});
  SetTrapNaNInMma(false);
  float result = 0;
  RunGrid(dim3(1), 32, 512, [&](unsigned char*) {
    uint32_t a[4] = {0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu};
    float d[4] = {0, 0, 0, 0};
    emu::MmaBf16(d, a, 0x3f803f80u, 0x3f803f80u);
    if (threadIdx.x == 0) result = d[0];
  });
  SetTrapNaNInMma(true);
  EXPECT_TRUE(std::isnan(result));
}

TEST(WarpEmulatorErrors, KernelExceptionsAndMisuseAreReported) {
  ExpectErrorContaining(
      [] {
        RunGrid(dim3(1), 32, 0, [](unsigned char*) {
          if (threadIdx.x == 17) throw std::out_of_range("index 99");
        });
      },
      {"thread 17", "kernel body threw", "index 99"});
  EXPECT_THROW(RunGrid(dim3(1), 48, 0, [](unsigned char*) {}), std::invalid_argument);
  EXPECT_THROW(RunGrid(dim3(1), 2048, 0, [](unsigned char*) {}), std::invalid_argument);
  EXPECT_THROW(RunGrid(dim3(0), 32, 0, [](unsigned char*) {}), std::invalid_argument);
  EXPECT_THROW(__syncthreads(), std::logic_error);
  EXPECT_THROW(emu::CommitAsyncCopies(), std::logic_error);
  bool nested_refused = false;
  RunGrid(dim3(1), 32, 0, [&](unsigned char*) {
    if (threadIdx.x != 0) return;
    try {
      RunGrid(dim3(1), 32, 0, [](unsigned char*) {});
    } catch (const std::logic_error&) {
      nested_refused = true;
    }
  });
  EXPECT_TRUE(nested_refused);
  // And the emulator still works after all those failures.
  int sum = 0;
  RunGrid(dim3(1), 64, 0, [&](unsigned char*) {
    int v = __shfl_xor_sync(0xffffffffu, 1, 16);
    __syncthreads();
    if (threadIdx.x == 63) sum = v;
  });
  EXPECT_EQ(sum, 1);
}

int Recurse(int depth) {
  volatile char frame[1024];
  frame[0] = static_cast<char>(depth);
  return depth <= 0 ? frame[0] : Recurse(depth - 1) + frame[0];
}

TEST(WarpEmulatorFibersDeathTest, StackOverflowCrashesInsteadOfCorrupting) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(RunGrid(dim3(1), 32, 0, [](unsigned char*) { std::printf("%d", Recurse(1 << 20)); }),
               "");
}

TEST(WarpEmulatorFibers, StackSizeIsConfigurable) {
  SetFiberStackBytes(2 << 20);
  int result = 0;
  RunGrid(dim3(1), 32, 0, [&](unsigned char*) {
    int r = Recurse(1000);  // about 1 MiB of frames: too much for the default 256 KiB
    __syncwarp();
    if (threadIdx.x == 0) result = r;
  });
  SetFiberStackBytes(256 * 1024);
  int expected = 0;
  for (int depth = 1; depth <= 1000; ++depth) expected += static_cast<char>(depth);
  EXPECT_EQ(result, expected);
}

TEST(WarpEmulatorFibers, LargeStackFramesFit) {
  float total = 0;
  RunGrid(dim3(1), 64, 0, [&](unsigned char*) {
    float registers[32][256];  // 32 KiB of "registers", far more than a kernel would use
    for (int i = 0; i < 32; ++i) {
      for (int j = 0; j < 256; ++j) registers[i][j] = static_cast<float>(i + j + threadIdx.x);
    }
    __syncthreads();
    float v = registers[31][255];
    v = __shfl_xor_sync(0xffffffffu, v, 1);
    if (threadIdx.x == 1) total = v;
  });
  EXPECT_EQ(total, 31 + 255 + 0);
}

// ---- end to end: a 2-warp GEMM with cp.async, ldmatrix and mma -------------------------------

// C[32][16] (fp32) = A[32][32] (bf16, row-major) * B[32][16] (bf16, row-major [k][n]) for block
// blockIdx.x of a batch; rows of A at or past `valid_rows` are zero-filled instead of loaded.
// Warp w computes rows 16w..16w+15. Shared rows are padded (A: 40 elements, B: 24) so ldmatrix
// row addresses are not contiguous.
constexpr int kM = 32, kN = 16, kK = 32;
constexpr int kAStride = 40, kBStride = 24;  // elements
constexpr size_t kGemmShared = (kM * kAStride + kK * kBStride) * 2;

void GemmKernel(const uint16_t* a_batch, const uint16_t* b_batch, float* c_batch,
                const int* valid_rows, unsigned char* shared) {
  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / 32, lane = tid % 32;
  const uint16_t* a = a_batch + blockIdx.x * kM * kK;
  const uint16_t* b = b_batch + blockIdx.x * kK * kN;
  float* c = c_batch + blockIdx.x * kM * kN;
  uint16_t* a_shared = reinterpret_cast<uint16_t*>(shared);
  uint16_t* b_shared = a_shared + kM * kAStride;
  const uint32_t a_base = emu::SharedAddress(a_shared);
  const uint32_t b_base = emu::SharedAddress(b_shared);

  // A: 32 rows x 4 chunks of 8 elements; B: 32 rows x 2 chunks. 64 threads.
  for (int chunk = tid; chunk < kM * 4; chunk += 64) {
    int row = chunk / 4, col = (chunk % 4) * 8;
    bool valid = row < valid_rows[blockIdx.x];
    emu::CopyAsync16(a_base + static_cast<uint32_t>((row * kAStride + col) * 2),
                     valid ? a + row * kK + col : a, valid);
  }
  emu::CommitAsyncCopies();
  for (int chunk = tid; chunk < kK * 2; chunk += 64) {
    int row = chunk / 2, col = (chunk % 2) * 8;
    emu::CopyAsync16(b_base + static_cast<uint32_t>((row * kBStride + col) * 2), b + row * kN + col,
                     true);
  }
  emu::CommitAsyncCopies();

  float acc[2][4] = {};
  emu::WaitAsyncCopies(1);  // A has landed (B may not have)
  __syncthreads();
  uint32_t a_frag[2][4];
  for (int ks = 0; ks < 2; ++ks) {
    // Matrices 0..3 of the 16x16 tile: (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15),
    // (rows 8-15, k 8-15): exactly a[0..3] of the mma A fragment.
    int m = lane / 8, r = lane % 8;
    int row = warp * 16 + r + (m & 1) * 8;
    int col = ks * 16 + (m >> 1) * 8;
    emu::LoadMatrixX4(a_frag[ks], a_base + static_cast<uint32_t>((row * kAStride + col) * 2),
                      false);
  }
  emu::WaitAsyncCopies(0);
  __syncthreads();
  for (int ks = 0; ks < 2; ++ks) {
    // B is [k][n] in shared: .trans delivers it k-major per lane, as the mma B fragment wants.
    // Matrices: (k 0-7, n 0-7), (k 8-15, n 0-7), (k 0-7, n 8-15), (k 8-15, n 8-15).
    int m = lane / 8, r = lane % 8;
    int k = ks * 16 + r + (m & 1) * 8;
    int n = (m >> 1) * 8;
    uint32_t b_frag[4];
    emu::LoadMatrixX4(b_frag, b_base + static_cast<uint32_t>((k * kBStride + n) * 2), true);
    emu::MmaBf16(acc[0], a_frag[ks], b_frag[0], b_frag[1]);
    emu::MmaBf16(acc[1], a_frag[ks], b_frag[2], b_frag[3]);
  }
  const int g = lane / 4, t = lane % 4;
  for (int nt = 0; nt < 2; ++nt) {
    for (int i = 0; i < 4; ++i) {
      int row = warp * 16 + g + (i >= 2 ? 8 : 0);
      int col = nt * 8 + 2 * t + (i & 1);
      c[row * kN + col] = acc[nt][i];
    }
  }
}

TEST(WarpEmulatorEndToEnd, TwoWarpGemmWithCpAsyncLdMatrixAndMma) {
  constexpr int kBatch = 3;
  struct alignas(64) Inputs {
    uint16_t a[kBatch * kM * kK];
    uint16_t b[kBatch * kK * kN];
  };
  auto in = std::make_unique<Inputs>();
  std::mt19937 rng(99);
  for (auto& v : in->a) v = RandomBf16(rng);
  for (auto& v : in->b) v = RandomBf16(rng);
  const int valid_rows[kBatch] = {30, 32, 17};
  std::vector<float> c(kBatch * kM * kN, -1.0f);
  RegisterGlobal(in->a, sizeof in->a);
  RegisterGlobal(in->b, sizeof in->b);
  auto start = std::chrono::steady_clock::now();
  RunGrid(dim3(kBatch), 64, kGemmShared,
          [&](unsigned char* shared) { GemmKernel(in->a, in->b, c.data(), valid_rows, shared); });
  double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  ClearGlobals();
  for (int batch = 0; batch < kBatch; ++batch) {
    for (int m = 0; m < kM; ++m) {
      for (int n = 0; n < kN; ++n) {
        double expected = 0, magnitude = 0;
        if (m < valid_rows[batch]) {
          for (int k = 0; k < kK; ++k) {
            double p = Bf16ToDouble(in->a[(batch * kM + m) * kK + k]) *
                       Bf16ToDouble(in->b[(batch * kK + k) * kN + n]);
            expected += p;
            magnitude += std::fabs(p);
          }
        }
        EXPECT_NEAR(c[static_cast<size_t>((batch * kM + m) * kN + n)], expected,
                    1e-6 * magnitude + 1e-7)
            << "batch " << batch << " C[" << m << "][" << n << "]";
      }
    }
  }
  RunStats stats = LastRunStats();
  EXPECT_EQ(stats.blocks, 3u);
  EXPECT_EQ(stats.async_copies, 3u * (128 + 64));
  EXPECT_EQ(stats.collectives, 3u * 2 * (2 + 2 + 4));  // per warp: 2 + 2 ldmatrix, 4 mma
  std::printf("[ info     ] GEMM: %.2f ms for %d blocks\n", ms, kBatch);
}

// ---- speed ------------------------------------------------------------------------------------

TEST(WarpEmulatorSpeed, ThousandsOfCollectivesPerBlockAreFast) {
  constexpr int kThreads = 128, kSteps = 1000;  // 5 collectives + 1 barrier per step
  std::vector<float> out(kThreads);
  auto start = std::chrono::steady_clock::now();
  RunGrid(dim3(1), kThreads, 4096, [&](unsigned char* shared) {
    int lane = static_cast<int>(threadIdx.x % 32);
    for (int i = 0; i < 8; ++i) {
      reinterpret_cast<uint16_t*>(shared)[threadIdx.x * 8 + i] = 0x3f80;  // bf16 1.0
    }
    __syncthreads();
    float acc[4] = {0, 0, 0, 0};
    float v = 1.0f;
    for (int step = 0; step < kSteps; ++step) {
      uint32_t a[4], b[4];
      emu::LoadMatrixX4(a, static_cast<uint32_t>(lane * 16), false);
      emu::LoadMatrixX4(b, static_cast<uint32_t>(lane * 16), true);
      emu::MmaBf16(acc, a, b[0], b[1]);
      v += __shfl_xor_sync(0xffffffffu, v, 1) * 0.0f;
      v = __shfl_sync(0xffffffffu, v, 0);
      if (step % 8 == 0) __syncthreads();
    }
    out[threadIdx.x] = acc[0] + v;
  });
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  RunStats stats = LastRunStats();
  EXPECT_EQ(stats.collectives, uint64_t{kThreads / 32} * kSteps * 5);
  EXPECT_EQ(out[0], 16.0f * kSteps + 1.0f);
  std::printf("[ info     ] %llu collectives, %llu barriers, %llu context switches: %.3f s\n",
              static_cast<unsigned long long>(stats.collectives),
              static_cast<unsigned long long>(stats.barriers),
              static_cast<unsigned long long>(stats.context_switches), seconds);
  EXPECT_LT(seconds, 2.0);  // typically a few tens of milliseconds
}

}  // namespace
}  // namespace pdpool::cuda_emulation
