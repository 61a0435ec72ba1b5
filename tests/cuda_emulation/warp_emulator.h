// A host-side emulator of CUDA thread blocks and of the warp-level primitives the cuda
// backend's kernels use (barriers, shuffles, ldmatrix, mma.sync m16n8k16 bf16, cp.async), so
// that kernel bodies compiled by g++ (with PDPOOL_CUDA_EMULATION) can run on a machine without a
// GPU and be checked against host references.
//
// Execution model
// ---------------
// pdpool::cuda_emulation::RunGrid runs the blocks of a grid one after another (blockIdx.x fastest),
// and the threads of a block as cooperative fibers on the calling OS thread: a thread runs until it
// reaches a barrier or a warp collective, then the next ready thread runs. A barrier or collective
// completes when its last participant arrives; the emulator then computes every lane's result at
// once and releases the waiters. Shared memory is one buffer per block, filled with 0xFF bytes
// (a NaN in bf16 and in fp32) when the block starts, so that reading bytes nothing wrote shows up.
//
// Strictness (each of these makes RunGrid throw std::runtime_error naming the block, the threads
// and what each waits on, instead of hanging or silently computing garbage):
//  - __syncthreads needs every thread of the block; a thread that has returned while others wait at
//    (or later reach) a barrier is an error.
//  - warp collectives (__syncwarp, shuffles, votes, ldmatrix, mma) need all 32 lanes of the warp at
//    the same kind of collective; a lane that has returned, lanes at different kinds, or lanes at a
//    collective while a lane of the same warp waits at __syncthreads are errors. Masks other than
//    0xffffffff are rejected (partial-warp collectives are not emulated).
//  - cp.async: misaligned or out-of-bounds addresses; a source outside every registered global
//    range (RegisterGlobal); a second copy into 16 bytes that an earlier copy has not yet landed
//    in; an ldmatrix that reads bytes a copy has not yet landed in; copies never waited for when
//    the thread returns.
//  - mma and wgmma inputs (A, B or C) that are NaN (normally: read from poisoned shared memory);
//    see SetTrapNaNInMma.
//  - wgmma (warpgroup_mma.cuh): the 128 threads of a warpgroup not all at the same warpgroup
//    instruction, or disagreeing on its operands (n, descriptors, scale-d, imm-trans-b, the wait
//    count); a warpgroup the block does not complete; a descriptor the emulator does not support;
//    operands outside shared memory, still in flight from a cp.async, or landed from a cp.async
//    whose thread has not executed fence.proxy.async since; a thread changing the accumulators or A
//    registers, or the shared operands changing, between a wgmma's issue and its completion
//    ("registers of an in-flight wgmma were modified"); a wgmma before any wgmma.fence, or on
//    accumulators or A registers the thread changed since the last wgmma.fence or wgmma write to
//    them; a thread returning while wgmmas of its warpgroup are pending (uncommitted or not waited for).
//  - any exception thrown by the kernel body in any thread.
//
// Semantics implemented (from NVIDIA's PTX ISA, restated)
// -------------------------------------------------------
// Notation: lane = %laneid (threadIdx.x % 32), g = lane / 4 ("groupID"), t = lane % 4
// ("threadID_in_group"). A 32-bit register holding two 16-bit elements keeps the first (lower
// index) element in bits 0-15 and the second in bits 16-31.
//
// ldmatrix.sync.aligned.m8n8.x4{.trans}.shared.b16 (LoadMatrixX4): four 8x8 matrices of 16-bit
// elements. Each lane supplies one shared address: lanes 8m..8m+7 give the start addresses of rows
// 0..7 of matrix m (m = 0..3). A row is 8 consecutive elements (16 bytes, 16-byte aligned); rows
// need not be contiguous. Destination register r[m] receives a fragment of matrix m:
//   without .trans: lane gets row g, columns 2t and 2t+1 (element 2t in the low half), i.e. the
//                   8x8 matrix is spread row-major, four lanes per row;
//   with .trans:    the matrix is delivered as if stored column-major: lane gets the elements at
//                   column g of rows 2t (low half) and 2t+1 (high half), where "row i" is the 16
//                   bytes at the address supplied by lane 8m+i and "column j" is element j of it.
//
// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 (MmaBf16): D (16x8) = A (16x16) * B (16x8)
// + C (16x8), C and D in the same four fp32 registers d[0..3] of each lane.
//   A, four registers a[0..3] of two bf16 each (elements a0..a7, two per register, low first):
//     a[0] = A[g][2t],   A[g][2t+1]          a[1] = A[g+8][2t],   A[g+8][2t+1]
//     a[2] = A[g][2t+8], A[g][2t+9]          a[3] = A[g+8][2t+8], A[g+8][2t+9]
//   B, two registers b0, b1 of two bf16 each (k is the row of B, n its column):
//     b0 = B[2t][g], B[2t+1][g]              b1 = B[2t+8][g], B[2t+9][g]
//   C/D, four fp32: d[0] = D[g][2t], d[1] = D[g][2t+1], d[2] = D[g+8][2t], d[3] = D[g+8][2t+1].
//   The emulator converts bf16 to float exactly (bf16 bits << 16), forms each product exactly in
//   float and accumulates in float: D[m][n] = (((C + p0) + p1) + ... + p15) for k = 0..15.
//   (Tensor cores add in a different, unspecified order; compare against a reference with a
//   tolerance, not bit for bit.)
//
// cp.async.cg.shared.global [dst], [src], 16, src-size (CopyAsync16): copies 16 bytes from global
// memory to shared memory asynchronously; src-size 0 (valid == false) writes 16 zero bytes and
// reads nothing. The copy joins the issuing thread's current (uncommitted) group.
// cp.async.commit_group (CommitAsyncCopies) closes the current group (possibly empty).
// cp.async.wait_group N (WaitAsyncCopies(N)) waits until at most the N most recently committed
// groups of this thread are pending: all its older committed groups are complete. Uncommitted
// copies are not waited for. The emulator reads the 16 source bytes when the copy is issued and
// writes them into shared memory only when a wait completes the copy's group, so a kernel that
// reads the destination before waiting sees the poison (or the stale previous tile), and ldmatrix
// on such bytes is reported as an error. Completion is per thread: other threads must still be
// ordered with __syncthreads (which the emulator cannot check; see SetScheduleSeed).
//
// wgmma (warpgroup_mma.cuh: WarpgroupFence, WarpgroupCommit, WarpgroupWait, WarpgroupMmaSS/RS,
// FenceProxyAsyncShared), from the PTX ISA 9.7.15. A warpgroup is the 128 threads of warps
// 4i .. 4i+3 (threads 128i .. 128i+127); w below is the warp within it (0..3).
//   wgmma.mma_async.sync.aligned.m64nNk16.f32.bf16.bf16 (N a multiple of 8 up to 256):
//   D (64xN) = A (64x16) * B (16xN) + D, or A * B when scale-d (accumulate) is false (D then
//   is not read). Thread i of the warpgroup holds:
//     A in registers (RS), four registers of two bf16: as mma.m16n8k16's A for rows 16w .. 16w+15:
//       a[0] = A[16w+g][2t, 2t+1]     a[1] = A[16w+g+8][2t, 2t+1]
//       a[2] = A[16w+g][2t+8, 2t+9]   a[3] = A[16w+g+8][2t+8, 2t+9]
//     D, N/2 floats: d[4q + 2h + c] = D[16w + g + 8h][8q + 2t + c], q < N/8, h, c in {0, 1}.
//   Shared operands are described by a 64-bit matrix descriptor: bits 0-13 start address >> 4,
//   16-29 leading dimension byte offset (LBO) >> 4, 32-45 stride dimension byte offset (SBO) >> 4,
//   49-51 base offset, 62-63 swizzle mode (0 none, 1 128-byte, 2 64-byte, 3 32-byte). Addresses
//   are SharedAddress values. Only the 128-byte swizzle with base offset 0 is emulated (anything
//   else is reported); the descriptor's other bits must be 0. A is always K-major; B is K-major
//   (B[k][n] stored as row n) or, with imm-trans-b (trans_b), N-major. With T = 8 bf16 (16
//   bytes), the ISA's canonical layouts (CuTe notation, strides in elements) give element (mn, k)
//   of the k16 slice at the descriptor's start address (mn: row of A or column of B) the byte
//   address, before the swizzle,
//     K-major  ((8,m),(T,2k)):((8T,SBO),(1,T)):
//       start + (mn%8)*128 + (mn/8)*SBO + (k/8)*16 + (k%8)*2          (LBO unused)
//     MN-major ((T,8,m),(8,k)):((1,T,LBO),(8T,SBO)):
//       start + (mn%8)*2 + ((mn/8)%8)*16 + (mn/64)*LBO + (k%8)*128 + (k/8)*SBO
//   and the 128-byte swizzle (Swizzle<3,4,3> on the byte address) XORs address bits 4-6 (the
//   16-byte chunk) with bits 7-9 (the 128-byte row within a 1024-byte atom). So a K-major tile is
//   rows of 64 elements (128 bytes), 8-row groups SBO apart, and the next k16 slice starts 32 bytes
//   further; an N-major B is rows of 64 n (one k each), 8-k groups SBO apart, the next 64 n LBO
//   further. The shared buffer and shared address 0 are 1024-byte aligned, so base offset 0 means
//   what it does on the GPU.
//   Numerics as MmaBf16: exact bf16 products, summed in float in k order onto C (or 0).
//   Asynchrony, as cp.async: a wgmma.mma_async joins its warpgroup's uncommitted wgmmas;
//   wgmma.commit_group (WarpgroupCommit) closes them into a wgmma-group (possibly empty);
//   wgmma.wait_group N (WarpgroupWait) completes every committed group but the newest N, oldest
//   first, each group's wgmmas in issue order; uncommitted wgmmas are not waited for. Only at
//   completion does the emulator compute and write d, so a kernel that reads d early sees stale
//   values. At issue it snapshots d, the A registers and the shared operands; at completion each
//   must be unchanged (except accumulators written by an earlier wgmma of the warpgroup: those
//   the ISA orders). wgmma.fence (WarpgroupFence) has no effect on the emulation; the emulator
//   checks that one precedes the warpgroup's first wgmma, and that no register a thread wrote
//   reaches a wgmma (as accumulator or A fragment) without a wgmma.fence after the write: it
//   remembers each thread's registers that wgmmas used, with their values at the last fence or
//   wgmma write, and a wgmma that finds one changed fails. Reads of registers are not tracked. fence.proxy.async.shared::cta
//   (FenceProxyAsyncShared) is per thread: wgmma may not read shared bytes that a thread's
//   cp.async landed in (at its wait_group) until that thread has executed it; st.shared writes
//   are not tracked, nor whether a __syncthreads published the fence to the issuing warpgroup.
//   All warpgroup instructions but fence.proxy.async are collectives of the whole warpgroup
//   (stricter than .sync, which synchronises a warp; .aligned requires all 128 threads anyway).
//   The kernel must keep d and the A registers alive (the same memory) until completion.
//
// Shuffles follow the CUDA programming guide: with width w (a power of two <= 32) the warp is split
// into segments of w lanes; __shfl_sync reads lane (segment start + srcLane % w); __shfl_up_sync
// reads lane - delta unless that falls before the segment (then the caller's own value);
// __shfl_down_sync reads lane + delta unless that falls past the segment end; __shfl_xor_sync reads
// lane ^ laneMask unless that lies beyond the end of the caller's segment.
//
// What the kernel author must know
// --------------------------------
//  - There is no __shared__ storage under g++: kernel bodies take their (dynamic) shared memory as
//    an `unsigned char*` argument and RunGrid passes each block's buffer. Shared addresses
//    (SharedAddress) are byte offsets into that buffer, which is 1024-byte aligned (the 128-byte
//    swizzle's atom), so a pointer and its shared address agree modulo 1024.
//  - blockDim is (threads_per_block, 1, 1); threadIdx.y/z and blockDim.y/z are 0/1.
//  - Each thread runs on its own fiber stack (256 KiB by default, SetFiberStackBytes); a 64 KiB
//    inaccessible guard region below it turns an overflow into a segfault rather than silent
//    corruption (a single stack frame larger than 64 KiB could still jump over it).
//  - Blocks run one after another, so a kernel that waits for another block (a spin on a global
//    flag) hangs. `static` and `thread_local` variables in a kernel body are shared by all threads.
//  - RunGrid calls from several OS threads are serialised by a mutex (they do not run in
//    parallel); RunGrid must not be called from inside a kernel body (it throws).
//  - Do not include device_launch_parameters.h: it declares threadIdx & co. differently.
//  - Thread switches use a few lines of x86-64 assembly; other architectures (or
//    -DPDPOOL_CUDA_EMULATION_UCONTEXT) use glibc's swapcontext, about 30 times slower.
//  - Not emulated (a kernel using them does not compile): partial-warp masks, __activemask,
//    __match_*_sync, __reduce_*_sync, atomics other than atomicMax on int, __ldg, cooperative
//    groups, other mma shapes and types, ldmatrix .x1/.x2, stmatrix, cp.async sizes other than
//    16 and .ca, TMA and mbarriers, setmaxnreg, wgmma other than m64nNk16 bf16 -> f32 with A
//    K-major and no negation or sparsity (descriptors with other swizzle modes or a non-zero base
//    offset do compile, and are refused at run time).
#pragma once

#include <math.h>
#include <vector_types.h>  // uint3, dim3 (CUDA's include directory)

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <type_traits>

#if !defined(PDPOOL_CUDA_EMULATION)
#error "build the warp emulator and its users with -DPDPOOL_CUDA_EMULATION"
#endif
#include "agent/engine/cuda/warp_mma.cuh"

namespace pdpool::cuda_emulation {

// Runs every block of `grid` (blockIdx.x fastest, then y, then z) with `threads_per_block` threads
// (a multiple of 32, at most 1024) as fibers on the calling thread, each block with `shared_bytes`
// bytes of shared memory filled with 0xFF; `body` is every thread's kernel body. Throws
// std::runtime_error (message: block, threads, what went wrong) on the errors listed above, and
// std::invalid_argument on a bad launch configuration.
void RunGrid(dim3 grid, int threads_per_block, size_t shared_bytes,
             const std::function<void(unsigned char* shared)>& body);

// Global memory ranges that CopyAsync16 may read: once any range is registered, a valid
// (src-size 16) copy whose 16 source bytes are not inside one registered range is an error.
// Zero-fill copies never read their source and are not checked. With no range registered no
// check is made. Thread-safe; ranges stay until ClearGlobals.
void RegisterGlobal(const void* begin, size_t bytes);
void ClearGlobals();

// Whether MmaBf16 reports NaN in A, B or C as an error (default: true).
void SetTrapNaNInMma(bool trap);

// 0 (default): deterministic round-robin scheduling. Otherwise a PRNG with this seed shuffles
// the order in which released threads run and lets one warp at a time run ahead until it waits
// at a __syncthreads, to shake out missing __syncthreads.
void SetScheduleSeed(uint64_t seed);

// Stack size of each fiber (default 256 KiB, rounded up to pages). Call outside RunGrid.
void SetFiberStackBytes(size_t bytes);

// Counters for the most recent RunGrid call (for tests and performance notes).
struct RunStats {
  uint64_t blocks = 0;
  uint64_t context_switches = 0;
  uint64_t barriers = 0;     // completed __syncthreads
  uint64_t collectives = 0;  // completed warp and warpgroup collectives
  uint64_t async_copies = 0;
  uint64_t warpgroup_mmas = 0;  // issued wgmma.mma_async
};
RunStats LastRunStats();

// Where a built-in was called from (the defaults are evaluated at the caller), for error messages.
// __builtin_FILE/__builtin_LINE rather than std::source_location, which clang < 15 lacks.
struct CallSite {
  const char* file;
  unsigned line;
  constexpr CallSite(const char* file_name = __builtin_FILE(),
                     unsigned line_number = __builtin_LINE())
      : file(file_name), line(line_number) {}
};

namespace detail {
enum class WarpOp : uint8_t {
  kNone,
  kSyncWarp,
  kShflIdx,
  kShflUp,
  kShflDown,
  kShflXor,
  kBallot,
  kAny,
  kAll,
  kLdMatrix,
  kMma,
};
void SyncThreads(const CallSite& where);
void SyncWarp(unsigned mask, const CallSite& where);
uint64_t Shuffle(WarpOp op, unsigned mask, uint64_t bits, int arg, int width,
                 const CallSite& where);
unsigned Vote(WarpOp op, unsigned mask, int predicate, const CallSite& where);
}  // namespace detail

}  // namespace pdpool::cuda_emulation

// The device primitives (SharedAddress, CopyAsync16, CommitAsyncCopies, WaitAsyncCopies,
// LoadMatrixX4, MmaBf16 in pdpool::agent::cuda::emulation) are declared by warp_mma.cuh, and
// the wgmma ones (WarpgroupFence, WarpgroupCommit, WarpgroupWait, FenceProxyAsyncShared,
// WarpgroupMmaSS, WarpgroupMmaRS) by warpgroup_mma.cuh (include it after this header), which call
// them under PDPOOL_CUDA_EMULATION; warp_emulator.cc defines them.

// ---- CUDA built-ins, in the global namespace as nvcc provides them ----------------------------

// Set by the scheduler whenever it switches to a thread.
extern uint3 threadIdx;
extern uint3 blockIdx;
extern dim3 blockDim;
extern dim3 gridDim;
inline constexpr int warpSize = 32;

using std::max;
using std::min;

#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif

inline void __syncthreads(pdpool::cuda_emulation::CallSite where = {}) {
  pdpool::cuda_emulation::detail::SyncThreads(where);
}
inline void __syncwarp(unsigned mask = 0xffffffffu, pdpool::cuda_emulation::CallSite where = {}) {
  pdpool::cuda_emulation::detail::SyncWarp(mask, where);
}
// Fibers see each other's writes at once; fences have nothing to do.
inline void __threadfence_block() {}
inline void __threadfence() {}
// Threads are fibers on one OS thread that switch only at barriers and collectives, so a plain
// read-modify-write is atomic.
inline int atomicMax(int* address, int value) {
  const int old = *address;
  if (value > old) *address = value;
  return old;
}

namespace pdpool::cuda_emulation::detail {
template <typename T>
concept Shuffleable = std::is_trivially_copyable_v<T> && sizeof(T) <= 8;

template <Shuffleable T>
T ShuffleValue(WarpOp op, unsigned mask, T value, int arg, int width, const CallSite& where) {
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  bits = Shuffle(op, mask, bits, arg, width, where);
  T result;
  std::memcpy(&result, &bits, sizeof(T));
  return result;
}
}  // namespace pdpool::cuda_emulation::detail

// Shuffles of any trivially copyable type of at most 8 bytes (float, int, unsigned, double, ...).
template <pdpool::cuda_emulation::detail::Shuffleable T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32,
              pdpool::cuda_emulation::CallSite where = {}) {
  using pdpool::cuda_emulation::detail::WarpOp;
  return pdpool::cuda_emulation::detail::ShuffleValue(WarpOp::kShflIdx, mask, var, src_lane, width,
                                                      where);
}
template <pdpool::cuda_emulation::detail::Shuffleable T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32,
                 pdpool::cuda_emulation::CallSite where = {}) {
  using pdpool::cuda_emulation::detail::WarpOp;
  return pdpool::cuda_emulation::detail::ShuffleValue(WarpOp::kShflUp, mask, var,
                                                      static_cast<int>(delta), width, where);
}
template <pdpool::cuda_emulation::detail::Shuffleable T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32,
                   pdpool::cuda_emulation::CallSite where = {}) {
  using pdpool::cuda_emulation::detail::WarpOp;
  return pdpool::cuda_emulation::detail::ShuffleValue(WarpOp::kShflDown, mask, var,
                                                      static_cast<int>(delta), width, where);
}
template <pdpool::cuda_emulation::detail::Shuffleable T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32,
                  pdpool::cuda_emulation::CallSite where = {}) {
  using pdpool::cuda_emulation::detail::WarpOp;
  return pdpool::cuda_emulation::detail::ShuffleValue(WarpOp::kShflXor, mask, var, lane_mask, width,
                                                      where);
}

inline unsigned __ballot_sync(unsigned mask, int predicate,
                              pdpool::cuda_emulation::CallSite where = {}) {
  using pdpool::cuda_emulation::detail::WarpOp;
  return pdpool::cuda_emulation::detail::Vote(WarpOp::kBallot, mask, predicate, where);
}
inline int __any_sync(unsigned mask, int predicate, pdpool::cuda_emulation::CallSite where = {}) {
  using pdpool::cuda_emulation::detail::WarpOp;
  return static_cast<int>(
      pdpool::cuda_emulation::detail::Vote(WarpOp::kAny, mask, predicate, where));
}
inline int __all_sync(unsigned mask, int predicate, pdpool::cuda_emulation::CallSite where = {}) {
  using pdpool::cuda_emulation::detail::WarpOp;
  return static_cast<int>(
      pdpool::cuda_emulation::detail::Vote(WarpOp::kAll, mask, predicate, where));
}

// A few device math intrinsics that cuda headers do not declare for g++ (define
// PDPOOL_CUDA_EMULATION_NO_MATH_INTRINSICS to leave them out). The fast-math ones are computed
// exactly, which is at least as accurate as the hardware approximations.
#ifndef PDPOOL_CUDA_EMULATION_NO_MATH_INTRINSICS
// glibc's <math.h> declares (but does not export) __expf and __logf: these define them, with the
// same C linkage and noexcept.
inline float __expf(float x) noexcept { return ::expf(x); }
inline float __logf(float x) noexcept { return ::logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float rsqrtf(float x) { return 1.0f / ::sqrtf(x); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline float __fmaf_rn(float a, float b, float c) { return ::fmaf(a, b, c); }
// Correctly rounded double add and multiply, never fused (x86-64 without -mfma has no FMA).
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline float __int_as_float(int v) {
  float f;
  std::memcpy(&f, &v, sizeof f);
  return f;
}
inline int __float_as_int(float f) {
  int v;
  std::memcpy(&v, &f, sizeof v);
  return v;
}
inline float __uint_as_float(unsigned v) {
  float f;
  std::memcpy(&f, &v, sizeof f);
  return f;
}
inline unsigned __float_as_uint(float f) {
  unsigned v;
  std::memcpy(&v, &f, sizeof v);
  return v;
}
#endif
