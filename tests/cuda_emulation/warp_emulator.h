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
//  - mma inputs (A, B or C) that are NaN (normally: read from poisoned shared memory); see
//    SetTrapNaNInMma.
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
//    (SharedAddress) are byte offsets into that buffer, which is 128-byte aligned.
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
//    16 and .ca, TMA/wgmma.
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
  uint64_t collectives = 0;  // completed warp collectives
  uint64_t async_copies = 0;
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
// LoadMatrixX4, MmaBf16 in pdpool::agent::cuda::emulation) are declared by warp_mma.cuh, which
// calls them under PDPOOL_CUDA_EMULATION; warp_emulator.cc defines them.

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
