// The block scheduler (fibers), the warp collectives and the cp.async / ldmatrix / mma emulation.
// See warp_emulator.h for the semantics.
#include "tests/cuda_emulation/warp_emulator.h"

#include <pthread.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <atomic>
#include <cinttypes>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <iterator>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

// Declares the wgmma emulation functions defined at the end of this file (after
// warp_emulator.h, which brings cuda_bf16.h's __device__ & co.).
#include "agent/engine/cuda/warpgroup_mma.cuh"

#if defined(__SANITIZE_ADDRESS__)
#define PDPOOL_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PDPOOL_EMU_ASAN 1
#endif
#endif
#ifdef PDPOOL_EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

// The built-in variables.
uint3 threadIdx{0, 0, 0};
uint3 blockIdx{0, 0, 0};
dim3 blockDim;
dim3 gridDim;

// Context switching. glibc's swapcontext saves and restores the signal mask with a system call on
// every switch (over a microsecond here), and a kernel switches threads at every warp collective,
// so on x86-64 a few instructions of assembly switch stacks instead (callee-saved registers, the
// SSE and x87 control words; the System V ABI makes everything else caller-saved). Elsewhere, or
// with -DPDPOOL_CUDA_EMULATION_UCONTEXT, makecontext/swapcontext do it.
#if defined(__x86_64__) && !defined(PDPOOL_CUDA_EMULATION_UCONTEXT)
#define PDPOOL_EMU_ASM_SWITCH 1
extern "C" void pdpool_emu_switch(void** save_sp, void* load_sp);
extern "C" void pdpool_emu_trampoline();
asm(R"(
  .pushsection .text
  .globl pdpool_emu_switch
  .hidden pdpool_emu_switch
  .type pdpool_emu_switch, @function
  .p2align 4
pdpool_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size pdpool_emu_switch, .-pdpool_emu_switch

  .globl pdpool_emu_trampoline
  .hidden pdpool_emu_trampoline
  .type pdpool_emu_trampoline, @function
  .p2align 4
pdpool_emu_trampoline:
  .cfi_startproc
  .cfi_undefined rip
  movq %r12, %rdi
  callq *%r13
  ud2
  .cfi_endproc
  .size pdpool_emu_trampoline, .-pdpool_emu_trampoline
  .popsection
)");
#endif

namespace pdpool::cuda_emulation {
namespace {

using detail::WarpOp;

constexpr int kWarpSize = 32;
constexpr size_t kDefaultStackBytes = 256 * 1024;
// Below each stack; large, so that a big stack frame cannot jump over it into another stack
// (without -fstack-clash-protection nothing probes the pages in between).
constexpr size_t kGuardBytes = 64 * 1024;
// The block's shared buffer is 1024-byte aligned, as is shared address 0 (SharedAddress returns
// offsets into the buffer): the 128-byte swizzle of wgmma operands repeats every 1024 bytes of the
// shared address (its "swizzle atom"), and a kernel that aligns its tiles by their generic pointer
// gets shared addresses with the same alignment.
constexpr size_t kSharedAlignment = 1024;
constexpr int kWarpgroupSize = 128;  // warps 4i .. 4i+3 of the block
constexpr int kWarpsPerWarpgroup = kWarpgroupSize / kWarpSize;

// ---- errors ---------------------------------------------------------------------------------

// Thrown inside a fiber for an emulation error; caught by the fiber's entry function.
class EmulationError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

std::string Format(const char* format, ...) __attribute__((format(printf, 1, 2)));
std::string Format(const char* format, ...) {
  char buffer[1024];
  va_list args;
  va_start(args, format);
  std::vsnprintf(buffer, sizeof buffer, format, args);
  va_end(args);
  return buffer;
}

[[noreturn]] void Fail(const std::string& message) { throw EmulationError(message); }

std::string Who(int tid) {
  return Format("thread %d (warp %d, lane %d)", tid, tid / kWarpSize, tid % kWarpSize);
}

std::string Site(const CallSite& where) {
  if (where.file == nullptr) return "";
  return Format(" (%s:%u)", where.file, where.line);
}

const char* OpName(WarpOp op) {
  switch (op) {
    case WarpOp::kNone:
      return "(none)";
    case WarpOp::kSyncWarp:
      return "__syncwarp";
    case WarpOp::kShflIdx:
      return "__shfl_sync";
    case WarpOp::kShflUp:
      return "__shfl_up_sync";
    case WarpOp::kShflDown:
      return "__shfl_down_sync";
    case WarpOp::kShflXor:
      return "__shfl_xor_sync";
    case WarpOp::kBallot:
      return "__ballot_sync";
    case WarpOp::kAny:
      return "__any_sync";
    case WarpOp::kAll:
      return "__all_sync";
    case WarpOp::kLdMatrix:
      return "ldmatrix.x4 (LoadMatrixX4)";
    case WarpOp::kMma:
      return "mma.m16n8k16 (MmaBf16)";
  }
  return "?";
}

// The warpgroup-wide instructions (.sync.aligned: all 128 threads of the warpgroup execute each
// one together). fence.proxy.async is per thread and not among them.
enum class WarpgroupOp : uint8_t { kNone, kFence, kCommit, kWait, kMmaSS, kMmaRS };

const char* WarpgroupOpName(WarpgroupOp op) {
  switch (op) {
    case WarpgroupOp::kNone:
      return "(none)";
    case WarpgroupOp::kFence:
      return "wgmma.fence (WarpgroupFence)";
    case WarpgroupOp::kCommit:
      return "wgmma.commit_group (WarpgroupCommit)";
    case WarpgroupOp::kWait:
      return "wgmma.wait_group (WarpgroupWait)";
    case WarpgroupOp::kMmaSS:
      return "wgmma.mma_async with A in shared memory (WarpgroupMmaSS)";
    case WarpgroupOp::kMmaRS:
      return "wgmma.mma_async with A in registers (WarpgroupMmaRS)";
  }
  return "?";
}

std::string WarpgroupName(int group) {
  return Format("warpgroup %d (threads %d-%d)", group, group * kWarpgroupSize,
                group * kWarpgroupSize + kWarpgroupSize - 1);
}

// ---- contexts ---------------------------------------------------------------------------------

struct Context {
#ifdef PDPOOL_EMU_ASM_SWITCH
  void* sp = nullptr;
#else
  ucontext_t uc;
#endif
};

void FiberMain(int index);

#ifdef PDPOOL_EMU_ASM_SWITCH
void FiberEntryAsm(intptr_t index) { FiberMain(static_cast<int>(index)); }

uint32_t g_initial_mxcsr = 0x1f80;
uint16_t g_initial_fpcw = 0x037f;

void CaptureFloatingPointControl() {
  uint32_t mxcsr;
  uint16_t fpcw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpcw));
  g_initial_mxcsr = mxcsr;
  g_initial_fpcw = fpcw;
}
#else
void FiberEntryUcontext(int index) { FiberMain(index); }
#endif

// Prepares `context` so that switching to it runs FiberMain(index) on the given stack.
void InitContext(Context* context, char* stack_low, size_t stack_bytes, int index) {
#ifdef PDPOOL_EMU_ASM_SWITCH
  // The frame pdpool_emu_switch pops: control words, r15, r14, r13, r12, rbx, rbp, then the
  // return address (the trampoline, which calls r13(r12)). After that ret the stack pointer must
  // be 16-byte aligned, so that the trampoline's call enters FiberEntryAsm as the ABI requires.
  uintptr_t top = (reinterpret_cast<uintptr_t>(stack_low) + stack_bytes - 16) & ~uintptr_t{15};
  void** p = reinterpret_cast<void**>(top);
  p[-1] = reinterpret_cast<void*>(&pdpool_emu_trampoline);
  p[-2] = nullptr;                                          // rbp: end of the frame chain
  p[-3] = nullptr;                                          // rbx
  p[-4] = reinterpret_cast<void*>(intptr_t{index});         // r12
  p[-5] = reinterpret_cast<void*>(&FiberEntryAsm);          // r13
  p[-6] = nullptr;                                          // r14
  p[-7] = nullptr;                                          // r15
  uint32_t control[2] = {g_initial_mxcsr, g_initial_fpcw};  // at p[-8]
  std::memcpy(&p[-8], control, sizeof control);
  context->sp = &p[-8];
#else
  if (getcontext(&context->uc) != 0) throw std::runtime_error("getcontext failed");
  context->uc.uc_stack.ss_sp = stack_low;
  context->uc.uc_stack.ss_size = stack_bytes;
  context->uc.uc_link = nullptr;
  makecontext(&context->uc, reinterpret_cast<void (*)()>(&FiberEntryUcontext), 1, index);
#endif
}

// Switches from `from` (saved there) to `to`, whose stack is [to_stack, to_stack + to_bytes).
// `from_finished`: the current fiber never resumes (lets AddressSanitizer drop its fake stack).
void SwitchContext(Context* from, Context* to, const void* to_stack, size_t to_bytes,
                   bool from_finished) {
#ifdef PDPOOL_EMU_ASAN
  void* fake_stack = nullptr;
  __sanitizer_start_switch_fiber(from_finished ? nullptr : &fake_stack, to_stack, to_bytes);
#else
  (void)to_stack;
  (void)to_bytes;
  (void)from_finished;
#endif
#ifdef PDPOOL_EMU_ASM_SWITCH
  pdpool_emu_switch(&from->sp, to->sp);
#else
  swapcontext(&from->uc, &to->uc);
#endif
#ifdef PDPOOL_EMU_ASAN
  __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#endif
}

// ---- fiber stacks -----------------------------------------------------------------------------

// Stacks are mapped once (reserved, not committed: pages appear as a fiber touches them) and
// reused by every later RunGrid; below each is an inaccessible guard region.
class StackPool {
 public:
  ~StackPool() { Release(); }

  void SetBytes(size_t bytes) {
    size_t page = PageSize();
    bytes = (bytes + page - 1) / page * page;
    if (bytes != bytes_) {
      Release();
      bytes_ = bytes;
    }
  }

  void Ensure(size_t count) {
    size_t guard = GuardBytes();
    while (stacks_.size() < count) {
      void* memory = mmap(nullptr, bytes_ + guard, PROT_READ | PROT_WRITE,
                          MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
      if (memory == MAP_FAILED) {
        throw std::runtime_error("cuda_emulation: mmap of a fiber stack failed");
      }
      if (mprotect(memory, guard, PROT_NONE) != 0) {
        munmap(memory, bytes_ + guard);
        throw std::runtime_error("cuda_emulation: mprotect of a stack guard region failed");
      }
      stacks_.push_back(static_cast<char*>(memory) + guard);
    }
  }

  char* Stack(size_t index) const { return stacks_[index]; }
  size_t bytes() const { return bytes_; }

 private:
  static size_t PageSize() { return static_cast<size_t>(sysconf(_SC_PAGESIZE)); }
  static size_t GuardBytes() {
    size_t page = PageSize();
    return (kGuardBytes + page - 1) / page * page;
  }

  void Release() {
    size_t guard = GuardBytes();
    for (char* stack : stacks_) munmap(stack - guard, bytes_ + guard);
    stacks_.clear();
  }

  size_t bytes_ = kDefaultStackBytes;
  std::vector<char*> stacks_;
};

// ---- global configuration ---------------------------------------------------------------------

std::mutex g_run_mutex;  // one RunGrid at a time (guards everything below)
StackPool g_stacks;
std::atomic<bool> g_trap_nan{true};
std::atomic<uint64_t> g_schedule_seed{0};
RunStats g_last_stats;

std::mutex g_globals_mutex;
std::vector<std::pair<uintptr_t, uintptr_t>> g_globals;  // [begin, end)

bool GlobalReadable(const void* source, size_t bytes, bool* any_registered) {
  std::lock_guard<std::mutex> lock(g_globals_mutex);
  *any_registered = !g_globals.empty();
  if (g_globals.empty()) return true;
  uintptr_t begin = reinterpret_cast<uintptr_t>(source);
  for (const auto& [low, high] : g_globals) {
    if (begin >= low && begin <= high && high - begin >= bytes) return true;
  }
  return false;
}

// ---- the block runtime ------------------------------------------------------------------------

enum class State : uint8_t { kReady, kRunning, kAtBarrier, kAtWarp, kAtWarpgroup, kExited };

struct AsyncCopy {
  uint32_t dst;
  unsigned char bytes[16];
};

struct Fiber {
  Context context;
  State state = State::kReady;
  WarpOp op = WarpOp::kNone;
  WarpgroupOp warpgroup_op = WarpgroupOp::kNone;
  CallSite where{nullptr, 0};
  std::vector<AsyncCopy> open_group;             // issued, not yet committed
  std::deque<std::vector<AsyncCopy>> committed;  // oldest first
  // 16-byte shared chunks this thread's cp.async copies landed in (at its wait_group) that may
  // still lack its fence.proxy.async (see Runtime::chunk_unfenced).
  std::vector<uint32_t> unfenced_chunks;
};

// The per-warp rendezvous: each lane deposits its operands and waits; the last lane to arrive
// computes every lane's result.
struct WarpSlot {
  WarpOp op = WarpOp::kNone;
  int arrived = 0;
  int exited = 0;      // lanes that have returned
  int at_barrier = 0;  // lanes waiting at __syncthreads
  int at_warpgroup = 0;  // lanes waiting at a warpgroup instruction (wgmma.*)
  uint64_t value[kWarpSize];
  int arg[kWarpSize];
  int width[kWarpSize];
  uint64_t result[kWarpSize];
  uint32_t address[kWarpSize];
  bool transposed[kWarpSize];
  uint32_t* matrix_out[kWarpSize];
  const uint32_t* mma_a[kWarpSize];
  uint32_t mma_b0[kWarpSize];
  uint32_t mma_b1[kWarpSize];
  float* mma_d[kWarpSize];
};

// ---- wgmma operands (PTX ISA 9.7.15.5.1, restated in warp_emulator.h) ---------------------------

// A shared-memory matrix descriptor, decoded ("Matrix Descriptor Format"): bits 0-13 start
// address, 16-29 leading dimension byte offset, 32-45 stride dimension byte offset (each the byte
// value >> 4), 49-51 base offset, 62-63 swizzle mode (0 none, 1 128-byte, 2 64-byte, 3 32-byte).
struct MatrixDescriptor {
  uint32_t start = 0;
  uint32_t lbo = 0;
  uint32_t sbo = 0;
  unsigned base_offset = 0;
  unsigned swizzle = 0;
};

constexpr uint64_t kDescriptorFields =
    0x3FFFull | (0x3FFFull << 16) | (0x3FFFull << 32) | (0x7ull << 49) | (0x3ull << 62);

MatrixDescriptor DecodeDescriptor(uint64_t bits) {
  MatrixDescriptor desc;
  desc.start = static_cast<uint32_t>(bits & 0x3FFF) << 4;
  desc.lbo = static_cast<uint32_t>((bits >> 16) & 0x3FFF) << 4;
  desc.sbo = static_cast<uint32_t>((bits >> 32) & 0x3FFF) << 4;
  desc.base_offset = static_cast<unsigned>((bits >> 49) & 0x7);
  desc.swizzle = static_cast<unsigned>(bits >> 62);
  return desc;
}

const char* SwizzleName(unsigned mode) {
  switch (mode) {
    case 0:
      return "no swizzle / interleaved";
    case 1:
      return "128-byte swizzle";
    case 2:
      return "64-byte swizzle";
    default:
      return "32-byte swizzle";
  }
}

// Swizzle<3,4,3> on a shared byte address: the 16-byte chunk index (bits 4-6) is XORed with the
// 128-byte row index within the 1024-byte swizzle atom (bits 7-9). Applied to the whole shared
// address, so with base offset 0 the pattern starts at every 1024-byte boundary.
uint32_t Swizzle128B(uint32_t address) { return address ^ (((address >> 7) & 7u) << 4); }

// The canonical 128-byte-swizzled layouts for 16-bit elements (T = 128 / 16 = 8 elements = 16
// bytes), from the ISA's table in CuTe notation (strides in elements), for element (mn, k) of the
// k16 slice the descriptor's start address points at (mn is the row of A or the column of B):
//   K-major:  ((8,m),(T,2k)):((8T,SBO),(1,T))   mn = (mn%8) + 8*(mn/8), k = (k%8) + T*(k/8)
//   MN-major: ((T,8,m),(8,k)):((1,T,LBO),(8T,SBO))  mn = (mn%8) + T*((mn/8)%8) + 64*(mn/64),
//                                                   k = (k%8) + 8*(k/8)
// With the swizzle, K-major does not use LBO ("not used, assumed to be 1").
uint32_t KMajorAddress(const MatrixDescriptor& desc, int mn, int k) {
  uint32_t offset = static_cast<uint32_t>(mn % 8) * 128 + static_cast<uint32_t>(mn / 8) * desc.sbo +
                    static_cast<uint32_t>(k % 8) * 2 + static_cast<uint32_t>(k / 8) * 16;
  return Swizzle128B(desc.start + offset);
}
uint32_t MnMajorAddress(const MatrixDescriptor& desc, int mn, int k) {
  uint32_t offset = static_cast<uint32_t>(mn % 8) * 2 + static_cast<uint32_t>((mn / 8) % 8) * 16 +
                    static_cast<uint32_t>(mn / 64) * desc.lbo + static_cast<uint32_t>(k % 8) * 128 +
                    static_cast<uint32_t>(k / 8) * desc.sbo;
  return Swizzle128B(desc.start + offset);
}

// The fragment element that register index j (< n/2) of thread i (< 128) of a warpgroup holds in
// an m64nN accumulator: d[4q + 2h + c] = (row 16w + g + 8h, column 8q + 2t + c), w = i / 32.
void AccumulatorElement(int i, int j, int* row, int* col) {
  int w = i / kWarpSize, lane = i % kWarpSize, g = lane / 4, t = lane % 4;
  int q = j / 4, h = (j / 2) % 2, c = j % 2;
  *row = 16 * w + g + 8 * h;
  *col = 8 * q + 2 * t + c;
}

uint32_t FloatBits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}
float BitsFloat(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

// Calls fn(index in p, index in q) for every float that both [p, p + p_count) and
// [q, q + q_count) cover (the same register of a thread named by two wgmmas).
template <typename Fn>
void ForEachShared(const float* p, int p_count, const float* q, int q_count, Fn fn) {
  uintptr_t p0 = reinterpret_cast<uintptr_t>(p), q0 = reinterpret_cast<uintptr_t>(q);
  uintptr_t low = std::max(p0, q0);
  uintptr_t high = std::min(p0 + sizeof(float) * static_cast<size_t>(p_count),
                            q0 + sizeof(float) * static_cast<size_t>(q_count));
  if ((p0 - q0) % sizeof(float) != 0) return;
  for (uintptr_t x = low; x < high; x += sizeof(float)) {
    fn(static_cast<int>((x - p0) / sizeof(float)), static_cast<int>((x - q0) / sizeof(float)));
  }
}

// One issued wgmma.mma_async.m64nNk16.f32.bf16.bf16: what the warpgroup passed, and what its
// registers and shared operands held at issue. Computed when a wgmma.wait_group completes its
// group.
struct Wgmma {
  uint64_t serial = 0;  // 1 for the warpgroup's first wgmma.mma_async in the block, 2, ...
  int n = 0;
  bool accumulate = false;  // scale-d
  bool trans_b = false;     // imm-trans-b: B is N-major
  bool a_in_registers = false;
  uint64_t desc_a = 0, desc_b = 0;
  float* d[kWarpgroupSize];
  const uint32_t* a[kWarpgroupSize];
  uint32_t a_issued[kWarpgroupSize][4];
  // The bits each thread's n/2 accumulators must hold at completion ([i * n/2 + j]): their
  // contents at issue, updated as earlier wgmmas of the warpgroup write the same registers.
  std::vector<uint32_t> d_expected;
  std::vector<uint32_t> a_address;  // A in shared memory: [m * 16 + k]
  std::vector<uint16_t> a_bits;
  std::vector<uint32_t> b_address;  // [n * 16 + k]
  std::vector<uint16_t> b_bits;
};

// What a completed wgmma wrote into the accumulators, kept until the next wgmma.fence.
struct AccumulatorWrite {
  uint64_t serial = 0;
  int n = 0;
  float* d[kWarpgroupSize];
  std::vector<uint32_t> bits;  // [i * n/2 + j]
};

// One thread's registers that the warpgroup's wgmmas have used (an accumulator array, or the
// four A-fragment registers of an RS wgmma), with the bits each held at the last wgmma.fence or
// the last wgmma write to it. A later wgmma that finds one of them different was preceded by the
// thread's write with no wgmma.fence since: the ISA requires one between a thread's register
// access and a wgmma.mma_async that accesses the register.
struct TrackedRegisters {
  const uint32_t* p = nullptr;
  int count = 0;
  std::vector<uint32_t> bits;
  std::vector<uint8_t> known;  // bits[j] holds a value from a fence or a wgmma write
};

// Reads tracked registers at a wgmma.fence. They may belong to a loop body's array whose
// iteration has ended (its storage is reused at the next one): AddressSanitizer must not report
// that read, and volatile keeps the compiler from making it a memcpy call that it would check.
__attribute__((no_sanitize_address)) void ReadRegisterBits(const uint32_t* p, int count,
                                                           uint32_t* out) {
  const volatile uint32_t* v = p;
  for (int j = 0; j < count; ++j) out[j] = v[j];
}

// The per-warpgroup rendezvous and wgmma state.
struct WarpgroupSlot {
  WarpgroupOp op = WarpgroupOp::kNone;
  int arrived = 0;
  int exited = 0;       // threads of the warpgroup that have returned
  bool fenced = false;  // a wgmma.fence has completed since the block started
  uint64_t issued = 0;  // wgmma.mma_async issued so far
  // Operands, deposited by thread (tid % 128).
  int pending[kWarpgroupSize];
  int n[kWarpgroupSize];
  float* d[kWarpgroupSize];
  const uint32_t* a[kWarpgroupSize];
  uint64_t desc_a[kWarpgroupSize];
  uint64_t desc_b[kWarpgroupSize];
  bool accumulate[kWarpgroupSize];
  bool trans_b[kWarpgroupSize];
  std::vector<Wgmma> open;                   // issued, not yet committed
  std::deque<std::vector<Wgmma>> committed;  // wgmma-groups, oldest first
  std::vector<AccumulatorWrite> written_since_fence;
  std::vector<TrackedRegisters> tracked[kWarpgroupSize];  // per thread (tid % 128)
};

class Runtime {
 public:
  // Set by RunGrid for its duration.
  const std::function<void(unsigned char*)>* body = nullptr;
  unsigned char* shared = nullptr;
  size_t shared_bytes = 0;
  int threads = 0;
  std::vector<Fiber> fibers;
  std::vector<WarpSlot> warps;
  std::vector<WarpgroupSlot> warpgroups;  // ceil(threads / 128); a partial last one is unusable
  std::vector<int16_t> chunk_owner;  // per 16 shared bytes: thread of an in-flight cp.async, or -1
  // Per 16 shared bytes: the thread whose cp.async landed there (at its wait_group) and that has
  // not executed fence.proxy.async since, or -1. wgmma (the async proxy) must not read such bytes.
  std::vector<int16_t> chunk_unfenced;
  Context main_context;
  const void* main_stack = nullptr;
  size_t main_stack_bytes = 0;
  RunStats stats;

  // Per block.
  int current = -1;
  int exited = 0;
  int barrier_arrived = 0;
  bool failed = false;
  std::string error;

  void StartBlock() {
    std::memset(shared, 0xff, shared_bytes);
    std::fill(chunk_owner.begin(), chunk_owner.end(), int16_t{-1});
    std::fill(chunk_unfenced.begin(), chunk_unfenced.end(), int16_t{-1});
    for (WarpSlot& warp : warps) {
      warp.op = WarpOp::kNone;
      warp.arrived = warp.exited = warp.at_barrier = warp.at_warpgroup = 0;
    }
    for (WarpgroupSlot& group : warpgroups) {
      group.op = WarpgroupOp::kNone;
      group.arrived = group.exited = 0;
      group.fenced = false;
      group.issued = 0;
      group.open.clear();
      group.committed.clear();
      group.written_since_fence.clear();
      for (auto& per_thread : group.tracked) per_thread.clear();
    }
    current = -1;
    exited = barrier_arrived = 0;
    failed = false;
    error.clear();
    queue_.assign(static_cast<size_t>(threads), 0);
    head_ = count_ = 0;
    warp_ready_.assign(static_cast<size_t>((threads + 31) / 32), {});
    favored_warp_ = -1;
    std::vector<int> order;
    for (int tid = 0; tid < threads; ++tid) {
      Fiber& fiber = fibers[static_cast<size_t>(tid)];
      fiber.state = State::kReady;
      fiber.op = WarpOp::kNone;
      fiber.warpgroup_op = WarpgroupOp::kNone;
      fiber.where = CallSite(nullptr, 0);
      fiber.open_group.clear();
      fiber.committed.clear();
      fiber.unfenced_chunks.clear();
      char* stack = g_stacks.Stack(static_cast<size_t>(tid));
#ifdef PDPOOL_EMU_ASAN
      __asan_unpoison_memory_region(stack, g_stacks.bytes());
#endif
      InitContext(&fiber.context, stack, g_stacks.bytes(), tid);
      order.push_back(tid);
    }
    Release(&order);
  }

  // Runs the block's threads until all have returned, or an error or a deadlock stops them.
  void RunBlock() {
    int first = PopReady();
    EnterFiber(first);
    SwitchContext(&main_context, &fibers[static_cast<size_t>(first)].context,
                  g_stacks.Stack(static_cast<size_t>(first)), g_stacks.bytes(), false);
    // Back on the RunGrid stack: every thread has returned, or nothing can progress.
    if (failed) throw std::runtime_error(error);
    if (exited != threads) {
      throw std::runtime_error("deadlock: no thread can make progress.\n" + DescribeThreads());
    }
  }

  // ---- scheduling ----

  void Push(int tid) {
    if (g_schedule_seed != 0) {
      warp_ready_[static_cast<size_t>(tid / 32)].push_back(tid);
    } else {
      queue_[(head_ + count_) % queue_.size()] = tid;
    }
    ++count_;
  }

  int PopReady() {
    if (count_ == 0) return -1;
    if (g_schedule_seed != 0) return PopReadyFavoringOneWarp();
    int tid = queue_[head_];
    head_ = (head_ + 1) % queue_.size();
    --count_;
    return tid;
  }

  // With a schedule seed: one warp runs ahead as far as it can (until it waits at a
  // __syncthreads or returns), then another chosen at random, so that a missing __syncthreads
  // between warps shows up as a race (stale or unlanded shared memory).
  int PopReadyFavoringOneWarp() {
    if (favored_warp_ < 0 || warp_ready_[static_cast<size_t>(favored_warp_)].empty()) {
      int candidates[32];
      int n = 0;
      for (size_t w = 0; w < warp_ready_.size(); ++w) {
        if (!warp_ready_[w].empty()) candidates[n++] = static_cast<int>(w);
      }
      favored_warp_ = candidates[Random() % static_cast<uint64_t>(n)];
    }
    std::deque<int>& ready = warp_ready_[static_cast<size_t>(favored_warp_)];
    const int tid = ready.front();
    ready.pop_front();
    --count_;
    return tid;
  }

  // Makes `tids` ready, in order or (with a schedule seed) shuffled.
  void Release(std::vector<int>* tids) {
    if (g_schedule_seed != 0) {
      for (size_t i = tids->size(); i > 1; --i) std::swap((*tids)[i - 1], (*tids)[Random() % i]);
    }
    for (int tid : *tids) {
      fibers[static_cast<size_t>(tid)].state = State::kReady;
      Push(tid);
    }
  }

  void EnterFiber(int tid) {
    current = tid;
    fibers[static_cast<size_t>(tid)].state = State::kRunning;
    threadIdx.x = static_cast<unsigned>(tid);
    ++stats.context_switches;
  }

  // The current fiber waits (its state already says for what) until a release makes it ready.
  void Block() {
    int self = current;
    int next = PopReady();
    if (next < 0) {
      // Nobody can run: RunBlock reports the deadlock, and this fiber is abandoned.
      current = -1;
      SwitchContext(&fibers[static_cast<size_t>(self)].context, &main_context, main_stack,
                    main_stack_bytes, true);
      std::abort();  // never resumed
    }
    EnterFiber(next);
    SwitchContext(&fibers[static_cast<size_t>(self)].context,
                  &fibers[static_cast<size_t>(next)].context,
                  g_stacks.Stack(static_cast<size_t>(next)), g_stacks.bytes(), false);
    // Resumed: whoever switched here has set current and threadIdx.
  }

  // With a schedule seed, the thread that completed a barrier or collective does not always go
  // first.
  void MaybeYield() {
    if (g_schedule_seed == 0 || count_ == 0 || Random() % 2 == 0) return;
    fibers[static_cast<size_t>(current)].state = State::kReady;
    Push(current);
    Block();
  }

  // The current fiber has returned (or failed): switch away for good.
  [[noreturn]] void LeaveFinishedFiber() {
    int self = current;
    int next = failed ? -1 : PopReady();
    Context* to = &main_context;
    const void* stack = main_stack;
    size_t bytes = main_stack_bytes;
    if (next >= 0) {
      EnterFiber(next);
      to = &fibers[static_cast<size_t>(next)].context;
      stack = g_stacks.Stack(static_cast<size_t>(next));
      bytes = g_stacks.bytes();
    } else {
      current = -1;
    }
    SwitchContext(&fibers[static_cast<size_t>(self)].context, to, stack, bytes, true);
    std::abort();
  }

  uint64_t Random() {  // splitmix64
    uint64_t z = (rng_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  void SeedRandom(uint64_t seed) { rng_ = seed; }

  // ---- diagnostics ----

  std::string DescribeThread(int tid) const {
    const Fiber& fiber = fibers[static_cast<size_t>(tid)];
    switch (fiber.state) {
      case State::kReady:
        return "ready to run (not at a barrier)";
      case State::kRunning:
        return "running";
      case State::kAtBarrier:
        return "waiting at __syncthreads" + Site(fiber.where);
      case State::kAtWarp:
        return std::string("waiting at warp collective ") + OpName(fiber.op) + Site(fiber.where);
      case State::kAtWarpgroup:
        return std::string("waiting at warpgroup instruction ") +
               WarpgroupOpName(fiber.warpgroup_op);
      case State::kExited:
        return "returned (exited)";
    }
    return "?";
  }

  // One line per run of consecutive threads in the same state.
  std::string DescribeThreads() const {
    std::string out = "thread states:";
    int start = 0;
    std::string state = DescribeThread(0);
    for (int tid = 1; tid <= threads; ++tid) {
      std::string next = tid < threads ? DescribeThread(tid) : std::string();
      if (tid < threads && next == state) continue;
      if (start == tid - 1) {
        out += Format("\n  thread %d (warp %d): ", start, start / kWarpSize);
      } else if (start / kWarpSize == (tid - 1) / kWarpSize) {
        out += Format("\n  threads %d-%d (warp %d): ", start, tid - 1, start / kWarpSize);
      } else {
        out += Format("\n  threads %d-%d (warps %d-%d): ", start, tid - 1, start / kWarpSize,
                      (tid - 1) / kWarpSize);
      }
      out += state;
      start = tid;
      state = next;
    }
    return out;
  }

  // The lanes of `warp` other than the current thread that are in `state`.
  std::string LanesOf(int warp, State state) const {
    std::string out;
    for (int lane = 0; lane < kWarpSize; ++lane) {
      int tid = warp * kWarpSize + lane;
      if (tid == current || fibers[static_cast<size_t>(tid)].state != state) continue;
      out += (out.empty() ? "" : ",") + std::to_string(lane);
    }
    return out;
  }

  // The threads of (complete) warpgroup `group` other than the current thread that are in
  // `state`, as ranges ("0-31,33").
  std::string ThreadsOf(int group, State state) const {
    std::string out;
    int first = -1;
    int end = group * kWarpgroupSize + kWarpgroupSize;
    for (int tid = group * kWarpgroupSize; tid <= end; ++tid) {
      bool in = tid < end && tid != current && fibers[static_cast<size_t>(tid)].state == state;
      if (in && first < 0) first = tid;
      if (!in && first >= 0) {
        out += (out.empty() ? "" : ",") +
               (first == tid - 1 ? std::to_string(first) : Format("%d-%d", first, tid - 1));
        first = -1;
      }
    }
    return out;
  }

  // ---- barriers and collectives ----

  void SyncThreads(const CallSite& where) {
    int tid = current;
    Fiber& fiber = fibers[static_cast<size_t>(tid)];
    fiber.state = State::kAtBarrier;
    fiber.where = where;
    WarpSlot& warp = warps[static_cast<size_t>(tid / kWarpSize)];
    if (exited > 0) {
      Fail(Who(tid) + " reaches __syncthreads" + Site(where) + " but " + std::to_string(exited) +
           " thread(s) of the block have returned, so the barrier can never complete.\n" +
           DescribeThreads());
    }
    if (warp.arrived > 0) {
      Fail(Who(tid) + " reaches __syncthreads" + Site(where) + " while lanes " +
           LanesOf(tid / kWarpSize, State::kAtWarp) + " of its warp wait for it at " +
           OpName(warp.op) + ": deadlock (divergent warp).\n" + DescribeThreads());
    }
    const WarpgroupSlot& group = warpgroups[static_cast<size_t>(tid / kWarpgroupSize)];
    if (group.arrived > 0) {
      Fail(Who(tid) + " reaches __syncthreads" + Site(where) + " while threads " +
           ThreadsOf(tid / kWarpgroupSize, State::kAtWarpgroup) +
           " of its warpgroup wait for it at " + WarpgroupOpName(group.op) +
           ": deadlock (divergent warpgroup).\n" + DescribeThreads());
    }
    ++warp.at_barrier;
    if (++barrier_arrived < threads) {
      Block();
      return;
    }
    barrier_arrived = 0;
    for (WarpSlot& slot : warps) slot.at_barrier = 0;
    ++stats.barriers;
    ReleaseOthersAndRun(&fiber, tid, 0, threads);
  }

  // The current lane has deposited its operands in its warp's slot; returns once all 32 lanes
  // have arrived and the results are in place.
  void WarpCollective(WarpOp op, const CallSite& where) {
    int tid = current;
    int warp_index = tid / kWarpSize;
    Fiber& fiber = fibers[static_cast<size_t>(tid)];
    fiber.state = State::kAtWarp;
    fiber.op = op;
    fiber.where = where;
    WarpSlot& warp = warps[static_cast<size_t>(warp_index)];
    if (warp.exited > 0) {
      Fail(Who(tid) + " reaches " + OpName(op) + Site(where) + " but lanes " +
           LanesOf(warp_index, State::kExited) +
           " of its warp have returned: a warp collective needs all 32 lanes.\n" +
           DescribeThreads());
    }
    if (warp.at_barrier > 0) {
      Fail(Who(tid) + " reaches " + OpName(op) + Site(where) + " while lanes " +
           LanesOf(warp_index, State::kAtBarrier) +
           " of its warp wait at __syncthreads: deadlock (divergent warp).\n" + DescribeThreads());
    }
    if (warp.at_warpgroup > 0) {
      Fail(Who(tid) + " reaches " + OpName(op) + Site(where) + " while lanes " +
           LanesOf(warp_index, State::kAtWarpgroup) + " of its warp wait at " +
           WarpgroupOpName(warpgroups[static_cast<size_t>(tid / kWarpgroupSize)].op) +
           ": deadlock (divergent warp).\n" + DescribeThreads());
    }
    if (warp.arrived > 0 && warp.op != op) {
      Fail(Who(tid) + " reaches " + OpName(op) + Site(where) + " while lanes " +
           LanesOf(warp_index, State::kAtWarp) + " of its warp wait at " + OpName(warp.op) +
           ": divergent warp collectives.\n" + DescribeThreads());
    }
    warp.op = op;
    if (++warp.arrived < kWarpSize) {
      Block();
      return;
    }
    warp.arrived = 0;
    warp.op = WarpOp::kNone;
    ++stats.collectives;
    Complete(op, warp_index);
    ReleaseOthersAndRun(&fiber, tid, warp_index * kWarpSize, kWarpSize);
  }

  // The last thread to arrive at a barrier or collective (tid, running on `fiber`): releases the
  // other threads [first, first + count) that waited at it, and keeps running.
  void ReleaseOthersAndRun(Fiber* fiber, int tid, int first, int count) {
    fiber->state = State::kRunning;
    release_.clear();
    for (int other = first; other < first + count; ++other) {
      if (other != tid) release_.push_back(other);
    }
    Release(&release_);
    MaybeYield();
  }

  void OnExit() {
    int tid = current;
    Fiber& fiber = fibers[static_cast<size_t>(tid)];
    fiber.state = State::kExited;
    size_t in_flight = fiber.open_group.size();
    for (const auto& group : fiber.committed) in_flight += group.size();
    if (in_flight > 0) {
      Fail(
          Format("%s returns with %zu cp.async copies still in flight (%zu uncommitted; %zu "
                 "committed group(s) never waited for with cp.async.wait_group)",
                 Who(tid).c_str(), in_flight, fiber.open_group.size(), fiber.committed.size()));
    }
    int warp_index = tid / kWarpSize;
    WarpSlot& warp = warps[static_cast<size_t>(warp_index)];
    if (warp.arrived > 0) {
      Fail(Who(tid) + " returns while lanes " + LanesOf(warp_index, State::kAtWarp) +
           " of its warp wait for it at " + OpName(warp.op) + ".\n" + DescribeThreads());
    }
    if (barrier_arrived > 0) {
      Fail(Who(tid) + " returns while " + std::to_string(barrier_arrived) +
           " thread(s) wait for it at __syncthreads.\n" + DescribeThreads());
    }
    WarpgroupSlot& group = warpgroups[static_cast<size_t>(tid / kWarpgroupSize)];
    if (group.arrived > 0) {
      Fail(Who(tid) + " returns while threads " +
           ThreadsOf(tid / kWarpgroupSize, State::kAtWarpgroup) +
           " of its warpgroup wait for it at " + WarpgroupOpName(group.op) + ".\n" +
           DescribeThreads());
    }
    size_t in_committed = 0;
    for (const auto& batch : group.committed) in_committed += batch.size();
    if (!group.open.empty() || in_committed > 0) {
      Fail(Format(
          "%s returns with %zu wgmma.mma_async of its warpgroup still pending (%zu "
          "uncommitted, never closed into a group by wgmma.commit_group; %zu in committed "
          "group(s) that no wgmma.wait_group has completed): its accumulators would be "
          "written after it exited",
          Who(tid).c_str(), group.open.size() + in_committed, group.open.size(), in_committed));
    }
    ++group.exited;
    ++warp.exited;
    ++exited;
  }

  // ---- collective results ----

  void Complete(WarpOp op, int warp_index) {
    WarpSlot& warp = warps[static_cast<size_t>(warp_index)];
    switch (op) {
      case WarpOp::kNone:
      case WarpOp::kSyncWarp:
        return;
      case WarpOp::kShflIdx:
      case WarpOp::kShflUp:
      case WarpOp::kShflDown:
      case WarpOp::kShflXor:
        return CompleteShuffle(op, warp_index, &warp);
      case WarpOp::kBallot:
      case WarpOp::kAny:
      case WarpOp::kAll: {
        unsigned ballot = 0;
        for (int lane = 0; lane < kWarpSize; ++lane) {
          if (warp.arg[lane] != 0) ballot |= 1u << lane;
        }
        uint64_t result = op == WarpOp::kBallot ? ballot
                          : op == WarpOp::kAny  ? (ballot != 0 ? 1 : 0)
                                                : (ballot == 0xffffffffu ? 1 : 0);
        for (uint64_t& r : warp.result) r = result;
        return;
      }
      case WarpOp::kLdMatrix:
        return CompleteLoadMatrix(warp_index, &warp);
      case WarpOp::kMma:
        return CompleteMma(warp_index, &warp);
    }
  }

  void CompleteShuffle(WarpOp op, int warp_index, WarpSlot* warp) {
    int width = warp->width[0];
    for (int lane = 0; lane < kWarpSize; ++lane) {
      if (warp->width[lane] != width) {
        Fail(Format("warp %d: %s: lanes pass different widths (lane 0: %d, lane %d: %d)",
                    warp_index, OpName(op), width, lane, warp->width[lane]));
      }
    }
    if (width < 1 || width > kWarpSize || (width & (width - 1)) != 0) {
      Fail(Format("warp %d: %s: width %d is not a power of two in [1, 32]", warp_index, OpName(op),
                  width));
    }
    for (int lane = 0; lane < kWarpSize; ++lane) {
      int segment_start = lane & ~(width - 1);
      int segment_end = segment_start + width - 1;
      int arg = warp->arg[lane];
      int source = lane;
      switch (op) {
        case WarpOp::kShflIdx:
          source = segment_start + (arg & (width - 1));
          break;
        case WarpOp::kShflUp:
          source = lane - arg >= segment_start ? lane - arg : lane;
          break;
        case WarpOp::kShflDown:
          source = lane + arg <= segment_end ? lane + arg : lane;
          break;
        case WarpOp::kShflXor:
          source = (lane ^ arg) <= segment_end ? (lane ^ arg) : lane;
          break;
        default:
          break;
      }
      warp->result[lane] = warp->value[source];
    }
  }

  void CheckSharedRead(int warp_index, int lane, uint32_t address, const char* what) {
    if (address % 16 != 0) {
      Fail(Format("warp %d: %s: lane %d's row address 0x%x is not 16-byte aligned", warp_index,
                  what, lane, address));
    }
    if (uint64_t{address} + 16 > shared_bytes) {
      Fail(
          Format("warp %d: %s: lane %d's row [0x%x, 0x%x) is outside the block's %zu bytes of "
                 "shared memory",
                 warp_index, what, lane, address, address + 16, shared_bytes));
    }
    int owner = chunk_owner[address / 16];
    if (owner >= 0) {
      Fail(
          Format("warp %d: %s: lane %d's row [0x%x, 0x%x) is the destination of a cp.async by "
                 "%s that no cp.async.wait_group has completed yet",
                 warp_index, what, lane, address, address + 16, Who(owner).c_str()));
    }
  }

  uint16_t SharedHalf(uint32_t row_address, int element) const {
    uint16_t value;
    std::memcpy(&value, shared + row_address + 2 * element, sizeof value);
    return value;
  }

  void CompleteLoadMatrix(int warp_index, WarpSlot* warp) {
    bool transposed = warp->transposed[0];
    for (int lane = 0; lane < kWarpSize; ++lane) {
      if (warp->transposed[lane] != transposed) {
        Fail(Format("warp %d: ldmatrix: lanes disagree on .trans (lane 0: %d, lane %d: %d)",
                    warp_index, transposed, lane, warp->transposed[lane]));
      }
      CheckSharedRead(warp_index, lane, warp->address[lane], "ldmatrix");
    }
    for (int lane = 0; lane < kWarpSize; ++lane) {
      int g = lane / 4;
      int t = lane % 4;
      for (int m = 0; m < 4; ++m) {
        uint16_t low, high;
        if (!transposed) {
          uint32_t row = warp->address[8 * m + g];
          low = SharedHalf(row, 2 * t);
          high = SharedHalf(row, 2 * t + 1);
        } else {
          low = SharedHalf(warp->address[8 * m + 2 * t], g);
          high = SharedHalf(warp->address[8 * m + 2 * t + 1], g);
        }
        warp->matrix_out[lane][m] = uint32_t{low} | (uint32_t{high} << 16);
      }
    }
  }

  static float Bf16ToFloat(uint16_t bits) {
    uint32_t word = uint32_t{bits} << 16;
    float value;
    std::memcpy(&value, &word, sizeof value);
    return value;
  }

  void CompleteMma(int warp_index, WarpSlot* warp) {
    float a[16][16], b[16][8], c[16][8];
    for (int lane = 0; lane < kWarpSize; ++lane) {
      int g = lane / 4;
      int t = lane % 4;
      const uint32_t* ra = warp->mma_a[lane];
      for (int reg = 0; reg < 4; ++reg) {
        int row = g + ((reg & 1) ? 8 : 0);
        int col = 2 * t + ((reg & 2) ? 8 : 0);
        a[row][col] = Bf16ToFloat(static_cast<uint16_t>(ra[reg] & 0xffff));
        a[row][col + 1] = Bf16ToFloat(static_cast<uint16_t>(ra[reg] >> 16));
      }
      uint32_t rb[2] = {warp->mma_b0[lane], warp->mma_b1[lane]};
      for (int reg = 0; reg < 2; ++reg) {
        int k = 2 * t + 8 * reg;
        b[k][g] = Bf16ToFloat(static_cast<uint16_t>(rb[reg] & 0xffff));
        b[k + 1][g] = Bf16ToFloat(static_cast<uint16_t>(rb[reg] >> 16));
      }
      const float* rd = warp->mma_d[lane];
      c[g][2 * t] = rd[0];
      c[g][2 * t + 1] = rd[1];
      c[g + 8][2 * t] = rd[2];
      c[g + 8][2 * t + 1] = rd[3];
    }
    if (g_trap_nan) CheckMmaNaN(warp_index, a, b, c);
    float d[16][8];
    for (int m = 0; m < 16; ++m) {
      for (int n = 0; n < 8; ++n) {
        float sum = c[m][n];
        for (int k = 0; k < 16; ++k) sum += a[m][k] * b[k][n];
        d[m][n] = sum;
      }
    }
    for (int lane = 0; lane < kWarpSize; ++lane) {
      int g = lane / 4;
      int t = lane % 4;
      float* rd = warp->mma_d[lane];
      rd[0] = d[g][2 * t];
      rd[1] = d[g][2 * t + 1];
      rd[2] = d[g + 8][2 * t];
      rd[3] = d[g + 8][2 * t + 1];
    }
  }

  static void CheckMmaNaN(int warp_index, const float (&a)[16][16], const float (&b)[16][8],
                          const float (&c)[16][8]) {
    const char* hint =
        " (read from shared memory nothing wrote, i.e. the 0xFF poison, or NaN data; "
        "SetTrapNaNInMma(false) turns this check off)";
    for (int m = 0; m < 16; ++m) {
      for (int k = 0; k < 16; ++k) {
        if (std::isnan(a[m][k])) {
          int lane = (m % 8) * 4 + (k % 8) / 2;
          int reg = (m >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0);
          Fail(Format("warp %d: mma: A[%d][%d] (lane %d, a[%d] %s half) is NaN%s", warp_index, m, k,
                      lane, reg, k % 2 ? "high" : "low", hint));
        }
      }
    }
    for (int k = 0; k < 16; ++k) {
      for (int n = 0; n < 8; ++n) {
        if (std::isnan(b[k][n])) {
          int lane = n * 4 + (k % 8) / 2;
          Fail(Format("warp %d: mma: B[%d][%d] (lane %d, b%d %s half) is NaN%s", warp_index, k, n,
                      lane, k >= 8 ? 1 : 0, k % 2 ? "high" : "low", hint));
        }
      }
    }
    for (int m = 0; m < 16; ++m) {
      for (int n = 0; n < 8; ++n) {
        if (std::isnan(c[m][n])) {
          int lane = (m % 8) * 4 + n / 2;
          Fail(Format("warp %d: mma: accumulator C[%d][%d] (lane %d, d[%d]) is NaN%s", warp_index,
                      m, n, lane, (m >= 8 ? 2 : 0) + n % 2, hint));
        }
      }
    }
  }

  // ---- cp.async ----

  void CopyAsync(uint32_t dst, const void* src, bool valid) {
    int tid = current;
    if (dst % 16 != 0) {
      Fail(Format("%s: cp.async: shared destination 0x%x is not 16-byte aligned", Who(tid).c_str(),
                  dst));
    }
    if (uint64_t{dst} + 16 > shared_bytes) {
      Fail(
          Format("%s: cp.async: shared destination [0x%x, 0x%x) is outside the block's %zu bytes "
                 "of shared memory",
                 Who(tid).c_str(), dst, dst + 16, shared_bytes));
    }
    AsyncCopy copy;
    copy.dst = dst;
    if (valid) {
      if (reinterpret_cast<uintptr_t>(src) % 16 != 0) {
        Fail(
            Format("%s: cp.async: global source %p is not 16-byte aligned", Who(tid).c_str(), src));
      }
      if (src == nullptr) {
        Fail(Format("%s: cp.async: null global source with src-size 16", Who(tid).c_str()));
      }
      bool any_registered = false;
      if (!GlobalReadable(src, 16, &any_registered)) {
        Fail(
            Format("%s: cp.async: global source [%p, +16) is not inside any registered global "
                   "range (out-of-bounds read)",
                   Who(tid).c_str(), src));
      }
      std::memcpy(copy.bytes, src, 16);
    } else {
      std::memset(copy.bytes, 0, 16);
    }
    int16_t& owner = chunk_owner[dst / 16];
    if (owner >= 0) {
      Fail(
          Format("%s: cp.async into shared [0x%x, 0x%x) while an earlier cp.async into the same "
                 "bytes by %s has not been completed by a cp.async.wait_group",
                 Who(tid).c_str(), dst, dst + 16, Who(owner).c_str()));
    }
    owner = static_cast<int16_t>(tid);
    fibers[static_cast<size_t>(tid)].open_group.push_back(copy);
    ++stats.async_copies;
  }

  void CommitAsyncCopies() {
    Fiber& fiber = fibers[static_cast<size_t>(current)];
    fiber.committed.push_back(std::move(fiber.open_group));
    fiber.open_group.clear();
  }

  void WaitAsyncCopies(int pending) {
    Fiber& fiber = fibers[static_cast<size_t>(current)];
    if (pending < 0) {
      Fail(Format("%s: cp.async.wait_group %d: the count must be >= 0", Who(current).c_str(),
                  pending));
    }
    while (fiber.committed.size() > static_cast<size_t>(pending)) {
      for (const AsyncCopy& copy : fiber.committed.front()) {
        std::memcpy(shared + copy.dst, copy.bytes, 16);
        chunk_owner[copy.dst / 16] = -1;
        // cp.async writes through the generic proxy: wgmma may read these bytes only after this
        // thread's fence.proxy.async.
        int16_t& writer = chunk_unfenced[copy.dst / 16];
        if (writer != current) {
          writer = static_cast<int16_t>(current);
          fiber.unfenced_chunks.push_back(copy.dst / 16);
        }
      }
      fiber.committed.pop_front();
    }
  }

  // fence.proxy.async.shared::cta: this thread's landed cp.async writes become readable by wgmma.
  void FenceProxyAsyncShared() {
    Fiber& fiber = fibers[static_cast<size_t>(current)];
    for (uint32_t chunk : fiber.unfenced_chunks) {
      if (chunk_unfenced[chunk] == current) chunk_unfenced[chunk] = -1;
    }
    fiber.unfenced_chunks.clear();
  }

  // ---- warpgroup instructions (wgmma) ----

  // The current thread has deposited its operands in its warpgroup's slot; returns once all 128
  // threads have arrived at the same instruction and it has taken effect.
  void WarpgroupCollective(WarpgroupOp op) {
    int tid = current;
    int group = tid / kWarpgroupSize;
    const char* name = WarpgroupOpName(op);
    if ((group + 1) * kWarpgroupSize > threads) {
      Fail(
          Format("%s reaches %s, but its warpgroup %d (warps %d-%d) is incomplete in a block of %d "
                 "threads: warpgroup instructions need all 128 threads of warps 4i .. 4i+3",
                 Who(tid).c_str(), name, group, group * kWarpsPerWarpgroup,
                 group * kWarpsPerWarpgroup + kWarpsPerWarpgroup - 1, threads));
    }
    Fiber& fiber = fibers[static_cast<size_t>(tid)];
    fiber.state = State::kAtWarpgroup;
    fiber.warpgroup_op = op;
    fiber.where = CallSite(nullptr, 0);
    WarpgroupSlot& slot = warpgroups[static_cast<size_t>(group)];
    int warp_index = tid / kWarpSize;
    WarpSlot& warp = warps[static_cast<size_t>(warp_index)];
    if (slot.exited > 0) {
      Fail(Who(tid) + " reaches " + name + " but threads " + ThreadsOf(group, State::kExited) +
           " of its warpgroup have returned: a warpgroup instruction needs all 128 threads.\n" +
           DescribeThreads());
    }
    for (int w = group * kWarpsPerWarpgroup; w < (group + 1) * kWarpsPerWarpgroup; ++w) {
      if (warps[static_cast<size_t>(w)].at_barrier > 0) {
        Fail(Who(tid) + " reaches " + name + " while threads " +
             ThreadsOf(group, State::kAtBarrier) +
             " of its warpgroup wait at __syncthreads: deadlock (divergent warpgroup).\n" +
             DescribeThreads());
      }
    }
    if (warp.arrived > 0) {
      Fail(Who(tid) + " reaches " + name + " while lanes " + LanesOf(warp_index, State::kAtWarp) +
           " of its warp wait at " + OpName(warp.op) + ": deadlock (divergent warp).\n" +
           DescribeThreads());
    }
    if (slot.arrived > 0 && slot.op != op) {
      Fail(Who(tid) + " reaches " + name + " while threads " +
           ThreadsOf(group, State::kAtWarpgroup) + " of its warpgroup wait at " +
           WarpgroupOpName(slot.op) + ": divergent warpgroup instructions.\n" + DescribeThreads());
    }
    slot.op = op;
    ++warp.at_warpgroup;
    if (++slot.arrived < kWarpgroupSize) {
      Block();
      return;
    }
    slot.arrived = 0;
    slot.op = WarpgroupOp::kNone;
    for (int w = group * kWarpsPerWarpgroup; w < (group + 1) * kWarpsPerWarpgroup; ++w) {
      warps[static_cast<size_t>(w)].at_warpgroup = 0;
    }
    ++stats.collectives;
    CompleteWarpgroup(op, group, &slot);
    ReleaseOthersAndRun(&fiber, tid, group * kWarpgroupSize, kWarpgroupSize);
  }

  void CompleteWarpgroup(WarpgroupOp op, int group, WarpgroupSlot* slot) {
    switch (op) {
      case WarpgroupOp::kNone:
        return;
      case WarpgroupOp::kFence:
        // Orders the threads' register accesses before later wgmmas: the emulator's wgmmas read
        // registers at completion anyway; it only remembers that the fence happened.
        slot->fenced = true;
        slot->written_since_fence.clear();
        for (auto& per_thread : slot->tracked) {
          for (TrackedRegisters& t : per_thread) {
            ReadRegisterBits(t.p, t.count, t.bits.data());
            std::fill(t.known.begin(), t.known.end(), uint8_t{1});
          }
        }
        return;
      case WarpgroupOp::kCommit:
        slot->committed.push_back(std::move(slot->open));
        slot->open.clear();
        return;
      case WarpgroupOp::kWait:
        return CompleteWarpgroupWait(group, slot);
      case WarpgroupOp::kMmaSS:
        return IssueWgmma(group, slot, false);
      case WarpgroupOp::kMmaRS:
        return IssueWgmma(group, slot, true);
    }
  }

  // wgmma.wait_group N: every committed wgmma-group but the newest N completes, oldest first and
  // each group's wgmmas in issue order. Uncommitted wgmmas are not waited for.
  void CompleteWarpgroupWait(int group, WarpgroupSlot* slot) {
    const int base = group * kWarpgroupSize;
    const int pending = slot->pending[0];
    for (int i = 1; i < kWarpgroupSize; ++i) {
      if (slot->pending[i] != pending) {
        Fail(Format("%s: wgmma.wait_group: threads disagree on N (thread %d: %d, thread %d: %d)",
                    WarpgroupName(group).c_str(), base, pending, base + i, slot->pending[i]));
      }
    }
    if (pending < 0) {
      Fail(
          Format("%s: wgmma.wait_group %d: N must be >= 0", WarpgroupName(group).c_str(), pending));
    }
    while (slot->committed.size() > static_cast<size_t>(pending)) {
      std::vector<Wgmma> batch = std::move(slot->committed.front());
      slot->committed.pop_front();
      for (size_t i = 0; i < batch.size(); ++i) {
        std::vector<uint32_t> result = ExecuteWgmma(group, batch[i]);
        // Later wgmmas that name the same accumulator registers see this result (the ISA orders
        // accumulator accesses across wgmma.mma_async of the same shape).
        for (size_t j = i + 1; j < batch.size(); ++j) ForwardResult(batch[i], result, &batch[j]);
        for (auto& later_batch : slot->committed) {
          for (Wgmma& later : later_batch) ForwardResult(batch[i], result, &later);
        }
        for (Wgmma& later : slot->open) ForwardResult(batch[i], result, &later);
        UpdateTrackedRegisters(batch[i], result, slot);
        RecordAccumulatorWrite(batch[i], std::move(result), slot);
      }
    }
  }

  static void ForwardResult(const Wgmma& done, const std::vector<uint32_t>& result, Wgmma* later) {
    const int done_half = done.n / 2, later_half = later->n / 2;
    for (int i = 0; i < kWarpgroupSize; ++i) {
      ForEachShared(later->d[i], later_half, done.d[i], done_half, [&](int j_later, int j_done) {
        later->d_expected[static_cast<size_t>(i * later_half + j_later)] =
            result[static_cast<size_t>(i * done_half + j_done)];
      });
    }
  }

  static void RecordAccumulatorWrite(const Wgmma& done, std::vector<uint32_t> result,
                                     WarpgroupSlot* slot) {
    AccumulatorWrite write;
    write.serial = done.serial;
    write.n = done.n;
    std::copy(std::begin(done.d), std::end(done.d), std::begin(write.d));
    write.bits = std::move(result);
    const int half = write.n / 2;
    auto& writes = slot->written_since_fence;
    for (AccumulatorWrite& earlier : writes) {
      const int earlier_half = earlier.n / 2;
      for (int i = 0; i < kWarpgroupSize; ++i) {
        ForEachShared(earlier.d[i], earlier_half, write.d[i], half, [&](int j_earlier, int j) {
          earlier.bits[static_cast<size_t>(i * earlier_half + j_earlier)] =
              write.bits[static_cast<size_t>(i * half + j)];
        });
      }
    }
    // An earlier write to exactly the same registers is superseded.
    std::erase_if(writes, [&](const AccumulatorWrite& earlier) {
      return earlier.n == write.n &&
             std::equal(std::begin(earlier.d), std::end(earlier.d), std::begin(write.d));
    });
    writes.push_back(std::move(write));
  }

  MatrixDescriptor CheckDescriptor(int group, uint64_t serial, const char* which, uint64_t bits) {
    if ((bits & ~kDescriptorFields) != 0) {
      Fail(
          Format("%s: wgmma.mma_async #%llu: the %s descriptor 0x%016llx sets bits outside the "
                 "ISA's fields (0-13, 16-29, 32-45, 49-51, 62-63)",
                 WarpgroupName(group).c_str(), static_cast<unsigned long long>(serial), which,
                 static_cast<unsigned long long>(bits)));
    }
    MatrixDescriptor desc = DecodeDescriptor(bits);
    if (desc.swizzle != 1) {
      Fail(
          Format("%s: wgmma.mma_async #%llu: the %s descriptor 0x%016llx has swizzle mode %u (%s), "
                 "which the emulator does not support: only mode 1 (128-byte swizzle) is "
                 "emulated",
                 WarpgroupName(group).c_str(), static_cast<unsigned long long>(serial), which,
                 static_cast<unsigned long long>(bits), desc.swizzle, SwizzleName(desc.swizzle)));
    }
    if (desc.base_offset != 0) {
      Fail(
          Format("%s: wgmma.mma_async #%llu: the %s descriptor 0x%016llx has base offset %u, which "
                 "the emulator does not support: only 0 (swizzle atoms start at 1024-byte "
                 "boundaries of the shared address) is emulated",
                 WarpgroupName(group).c_str(), static_cast<unsigned long long>(serial), which,
                 static_cast<unsigned long long>(bits), desc.base_offset));
    }
    return desc;
  }

  // "A[m][k]" for index m * 16 + k of A's addresses, "B[k][n]" for index n * 16 + k of B's.
  static std::string OperandElement(bool is_a, size_t index) {
    int outer = static_cast<int>(index / 16), k = static_cast<int>(index % 16);
    return is_a ? Format("A[%d][%d]", outer, k) : Format("B[%d][%d]", k, outer);
  }

  // Reads a wgmma operand's elements from shared memory at issue, checking that every byte is
  // inside the block's shared memory, not the destination of a cp.async still in flight, and not
  // written by a cp.async whose thread has not executed fence.proxy.async since.
  void ReadOperand(int group, uint64_t serial, bool is_a, const std::vector<uint32_t>& addresses,
                   std::vector<uint16_t>* bits) {
    bits->resize(addresses.size());
    for (size_t i = 0; i < addresses.size(); ++i) {
      const uint32_t address = addresses[i];
      if (uint64_t{address} + 2 > shared_bytes) {
        Fail(
            Format("%s: wgmma.mma_async #%llu: %s at shared address 0x%x is outside the block's "
                   "%zu bytes of shared memory",
                   WarpgroupName(group).c_str(), static_cast<unsigned long long>(serial),
                   OperandElement(is_a, i).c_str(), address, shared_bytes));
      }
      const size_t chunk = address / 16;
      if (chunk < chunk_owner.size() && chunk_owner[chunk] >= 0) {
        Fail(
            Format("%s: wgmma.mma_async #%llu: %s at shared address 0x%x is the destination of a "
                   "cp.async by %s that no cp.async.wait_group has completed yet",
                   WarpgroupName(group).c_str(), static_cast<unsigned long long>(serial),
                   OperandElement(is_a, i).c_str(), address, Who(chunk_owner[chunk]).c_str()));
      }
      if (chunk < chunk_unfenced.size() && chunk_unfenced[chunk] >= 0) {
        Fail(
            Format("%s: wgmma.mma_async #%llu: %s at shared address 0x%x was written by a cp.async "
                   "of %s that has not executed fence.proxy.async.shared::cta "
                   "(FenceProxyAsyncShared) since it landed: wgmma reads through the async proxy "
                   "and sees generic-proxy writes only after such a fence",
                   WarpgroupName(group).c_str(), static_cast<unsigned long long>(serial),
                   OperandElement(is_a, i).c_str(), address, Who(chunk_unfenced[chunk]).c_str()));
      }
      std::memcpy(&(*bits)[i], shared + address, sizeof(uint16_t));
    }
  }

  // At completion: the operand's shared bytes must still hold what they held at issue (wgmma
  // may read them any time in between).
  void RecheckOperand(int group, const Wgmma& op, bool is_a, const std::vector<uint32_t>& addresses,
                      const std::vector<uint16_t>& bits) {
    for (size_t i = 0; i < addresses.size(); ++i) {
      const uint32_t address = addresses[i];
      const size_t chunk = address / 16;
      uint16_t now;
      std::memcpy(&now, shared + address, sizeof now);
      const bool copy_in_flight = chunk < chunk_owner.size() && chunk_owner[chunk] >= 0;
      if (now != bits[i] || copy_in_flight) {
        Fail(
            Format("%s: shared memory read by an in-flight wgmma was modified: %s (shared address "
                   "0x%x) of wgmma.mma_async #%llu %s between its issue and the "
                   "wgmma.wait_group that completes it",
                   WarpgroupName(group).c_str(), OperandElement(is_a, i).c_str(), address,
                   static_cast<unsigned long long>(op.serial),
                   copy_in_flight ? Format("became the destination of a cp.async by %s",
                                           Who(chunk_owner[chunk]).c_str())
                                        .c_str()
                                  : Format("changed from 0x%04x to 0x%04x", bits[i], now).c_str()));
      }
    }
  }

  // wgmma.mma_async, once all 128 threads have arrived: checks that they issued the same
  // instruction, decodes the descriptors, snapshots registers and operands, and appends it to the
  // warpgroup's uncommitted wgmmas.
  void IssueWgmma(int group, WarpgroupSlot* slot, bool a_in_registers) {
    const int base = group * kWarpgroupSize;
    const uint64_t serial = slot->issued + 1;
    auto disagree = [&](int i, const char* what, const std::string& first,
                        const std::string& mine) {
      Fail(
          Format("%s: wgmma.mma_async #%llu: threads disagree on %s (thread %d: %s, thread %d: "
                 "%s): every thread of the warpgroup must issue the same instruction with the "
                 "same descriptors",
                 WarpgroupName(group).c_str(), static_cast<unsigned long long>(serial), what, base,
                 first.c_str(), base + i, mine.c_str()));
    };
    auto hex = [](uint64_t v) { return Format("0x%016llx", static_cast<unsigned long long>(v)); };
    for (int i = 1; i < kWarpgroupSize; ++i) {
      if (slot->n[i] != slot->n[0]) {
        disagree(i, "the shape's n", std::to_string(slot->n[0]), std::to_string(slot->n[i]));
      }
      if (!a_in_registers && slot->desc_a[i] != slot->desc_a[0]) {
        disagree(i, "the A descriptor", hex(slot->desc_a[0]), hex(slot->desc_a[i]));
      }
      if (slot->desc_b[i] != slot->desc_b[0]) {
        disagree(i, "the B descriptor", hex(slot->desc_b[0]), hex(slot->desc_b[i]));
      }
      if (slot->accumulate[i] != slot->accumulate[0]) {
        disagree(i, "scale-d (accumulate)", std::to_string(slot->accumulate[0]),
                 std::to_string(slot->accumulate[i]));
      }
      if (slot->trans_b[i] != slot->trans_b[0]) {
        disagree(i, "imm-trans-b", std::to_string(slot->trans_b[0]),
                 std::to_string(slot->trans_b[i]));
      }
    }
    const int n = slot->n[0];
    if (n < 8 || n > 256 || n % 8 != 0) {
      Fail(
          Format("%s: wgmma.mma_async #%llu: m64n%dk16 is not a wgmma shape (n must be a multiple "
                 "of 8 in [8, 256])",
                 WarpgroupName(group).c_str(), static_cast<unsigned long long>(serial), n));
    }
    if (!slot->fenced) {
      Fail(
          Format("%s: wgmma.mma_async #%llu is issued before any wgmma.fence (WarpgroupFence) of "
                 "the warpgroup: the ISA requires one before the first wgmma.mma_async",
                 WarpgroupName(group).c_str(), static_cast<unsigned long long>(serial)));
    }
    Wgmma op;
    op.serial = serial;
    op.n = n;
    op.accumulate = slot->accumulate[0];
    op.trans_b = slot->trans_b[0];
    op.a_in_registers = a_in_registers;
    op.desc_a = a_in_registers ? 0 : slot->desc_a[0];
    op.desc_b = slot->desc_b[0];
    const int half = n / 2;
    op.d_expected.resize(static_cast<size_t>(kWarpgroupSize * half));
    for (int i = 0; i < kWarpgroupSize; ++i) {
      if (slot->d[i] == nullptr || (a_in_registers && slot->a[i] == nullptr)) {
        Fail(Format("%s: wgmma.mma_async #%llu: null %s", Who(base + i).c_str(),
                    static_cast<unsigned long long>(serial),
                    slot->d[i] == nullptr ? "accumulator pointer d" : "A register pointer a"));
      }
      op.d[i] = slot->d[i];
      op.a[i] = a_in_registers ? slot->a[i] : nullptr;
      if (a_in_registers) std::memcpy(op.a_issued[i], slot->a[i], sizeof op.a_issued[i]);
      std::memcpy(&op.d_expected[static_cast<size_t>(i * half)], slot->d[i],
                  sizeof(float) * static_cast<size_t>(half));
    }
    if (!a_in_registers) {
      MatrixDescriptor desc = CheckDescriptor(group, serial, "A", op.desc_a);
      op.a_address.resize(64 * 16);
      for (int m = 0; m < 64; ++m) {
        for (int k = 0; k < 16; ++k)
          op.a_address[static_cast<size_t>(m * 16 + k)] = KMajorAddress(desc, m, k);
      }
      ReadOperand(group, serial, true, op.a_address, &op.a_bits);
    }
    MatrixDescriptor desc_b = CheckDescriptor(group, serial, "B", op.desc_b);
    op.b_address.resize(static_cast<size_t>(n * 16));
    for (int col = 0; col < n; ++col) {
      for (int k = 0; k < 16; ++k) {
        op.b_address[static_cast<size_t>(col * 16 + k)] =
            op.trans_b ? MnMajorAddress(desc_b, col, k) : KMajorAddress(desc_b, col, k);
      }
    }
    ReadOperand(group, serial, false, op.b_address, &op.b_bits);
    CheckAccumulatorsFenced(group, *slot, op);
    CheckTrackedRegisters(group, *slot, op);
    TrackRegisters(op, slot);
    slot->issued = serial;
    slot->open.push_back(std::move(op));
    ++stats.warpgroup_mmas;
  }

  // Calls fn(j_tracked, j_op) for each register of `t` that is also one of the `count` registers
  // at `registers`.
  template <typename Fn>
  static void ForEachTracked(const TrackedRegisters& t, const void* registers, int count, Fn fn) {
    ForEachShared(reinterpret_cast<const float*>(t.p), t.count,
                  static_cast<const float*>(registers), count, fn);
  }

  // A wgmma's registers that a thread wrote after the last wgmma.fence, and after the last wgmma
  // that wrote them: the values differ from the tracked ones.
  void CheckTrackedRegisters(int group, const WarpgroupSlot& slot, const Wgmma& op) {
    const int half = op.n / 2;
    for (int i = 0; i < kWarpgroupSize; ++i) {
      for (const TrackedRegisters& t : slot.tracked[i]) {
        auto check = [&](const uint32_t* registers, int count, const char* what) {
          ForEachTracked(t, registers, count, [&](int j_tracked, int j) {
            const auto jt = static_cast<size_t>(j_tracked);
            if (t.known[jt] == 0 || registers[j] == t.bits[jt]) return;
            Fail(Format(
                "%s: wgmma.mma_async #%llu: its %s[%d] was written by the thread (0x%08x at the "
                "last wgmma.fence or wgmma write, now 0x%08x) with no wgmma.fence "
                "(WarpgroupFence) since: the ISA requires a wgmma.fence between a register "
                "access and a wgmma.mma_async that accesses the same register",
                Who(group * kWarpgroupSize + i).c_str(), static_cast<unsigned long long>(op.serial),
                what, j, t.bits[jt], registers[j]));
          });
        };
        check(reinterpret_cast<const uint32_t*>(op.d[i]), half, "accumulator d");
        if (op.a_in_registers) check(op.a[i], 4, "A register a");
      }
    }
  }

  // Starts tracking the registers of a wgmma just issued (their values become known at its
  // completion or at the next wgmma.fence).
  static void TrackRegisters(const Wgmma& op, WarpgroupSlot* slot) {
    for (int i = 0; i < kWarpgroupSize; ++i) {
      auto track = [&](const uint32_t* p, int count) {
        for (const TrackedRegisters& t : slot->tracked[i]) {
          if (t.p == p && t.count == count) return;
        }
        TrackedRegisters t;
        t.p = p;
        t.count = count;
        t.bits.assign(static_cast<size_t>(count), 0);
        t.known.assign(static_cast<size_t>(count), 0);
        slot->tracked[i].push_back(std::move(t));
      };
      track(reinterpret_cast<const uint32_t*>(op.d[i]), op.n / 2);
      if (op.a_in_registers) track(op.a[i], 4);
    }
  }

  // A completed wgmma's accumulator values are what the tracked registers now hold.
  static void UpdateTrackedRegisters(const Wgmma& done, const std::vector<uint32_t>& result,
                                     WarpgroupSlot* slot) {
    const int half = done.n / 2;
    for (int i = 0; i < kWarpgroupSize; ++i) {
      for (TrackedRegisters& t : slot->tracked[i]) {
        ForEachTracked(t, done.d[i], half, [&](int j_tracked, int j) {
          t.bits[static_cast<size_t>(j_tracked)] = result[static_cast<size_t>(i * half + j)];
          t.known[static_cast<size_t>(j_tracked)] = 1;
        });
      }
    }
  }

  // The ISA requires a wgmma.fence between a thread's access to a register and a wgmma.mma_async
  // that accesses it (except accumulator accesses by earlier wgmmas of the same shape). The
  // emulator sees only writes: accumulators a thread changed after a wgmma wrote them, with no
  // wgmma.fence since.
  void CheckAccumulatorsFenced(int group, const WarpgroupSlot& slot, const Wgmma& op) {
    const int half = op.n / 2;
    for (const AccumulatorWrite& write : slot.written_since_fence) {
      const int write_half = write.n / 2;
      for (int i = 0; i < kWarpgroupSize; ++i) {
        ForEachShared(op.d[i], half, write.d[i], write_half, [&](int j, int j_write) {
          uint32_t expected = write.bits[static_cast<size_t>(i * write_half + j_write)];
          uint32_t now = FloatBits(op.d[i][j]);
          if (now != expected) {
            Fail(Format(
                "%s: wgmma.mma_async #%llu: its accumulator d[%d] was changed by the thread "
                "(from %g, written by wgmma #%llu, to %g) with no wgmma.fence "
                "(WarpgroupFence) since: the ISA requires a wgmma.fence between a "
                "register access and a wgmma.mma_async that accesses the same register",
                Who(group * kWarpgroupSize + i).c_str(), static_cast<unsigned long long>(op.serial),
                j, static_cast<double>(BitsFloat(expected)),
                static_cast<unsigned long long>(write.serial),
                static_cast<double>(BitsFloat(now))));
          }
        });
      }
    }
  }

  // Completes one wgmma: checks that its registers and shared operands are as they were at issue,
  // computes D = A * B (+ D) and writes each thread's accumulators. Returns what it wrote.
  std::vector<uint32_t> ExecuteWgmma(int group, const Wgmma& op) {
    const int base = group * kWarpgroupSize;
    const int n = op.n, half = n / 2;
    const unsigned long long serial = op.serial;
    for (int i = 0; i < kWarpgroupSize; ++i) {
      for (int j = 0; j < half; ++j) {
        uint32_t expected = op.d_expected[static_cast<size_t>(i * half + j)];
        uint32_t now = FloatBits(op.d[i][j]);
        if (now != expected) {
          Fail(
              Format("%s: registers of an in-flight wgmma were modified: accumulator d[%d] of "
                     "wgmma.mma_async #%llu (m64n%dk16) changed from %g to %g between its issue "
                     "and the wgmma.wait_group that completes it",
                     Who(base + i).c_str(), j, serial, n, static_cast<double>(BitsFloat(expected)),
                     static_cast<double>(BitsFloat(now))));
        }
      }
      if (op.a_in_registers) {
        for (int r = 0; r < 4; ++r) {
          if (op.a[i][r] != op.a_issued[i][r]) {
            Fail(
                Format("%s: registers of an in-flight wgmma were modified: A register a[%d] of "
                       "wgmma.mma_async #%llu changed from 0x%08x to 0x%08x between its issue and "
                       "the wgmma.wait_group that completes it",
                       Who(base + i).c_str(), r, serial, op.a_issued[i][r], op.a[i][r]));
          }
        }
      }
    }
    if (!op.a_in_registers) RecheckOperand(group, op, true, op.a_address, op.a_bits);
    RecheckOperand(group, op, false, op.b_address, op.b_bits);

    // A (64 x 16) and B (16 x n, [k][n]) as floats (bf16 -> float is exact), C (64 x n).
    std::vector<float> a(64 * 16), b(static_cast<size_t>(16 * n)),
        c(static_cast<size_t>(64 * n), 0.0f);
    if (op.a_in_registers) {
      // Register r of thread i holds (row 16w + g + 8(r%2), columns 2t + 8(r/2) + {0, 1}).
      for (int i = 0; i < kWarpgroupSize; ++i) {
        int w = i / kWarpSize, lane = i % kWarpSize, g = lane / 4, t = lane % 4;
        for (int r = 0; r < 4; ++r) {
          int m = 16 * w + g + 8 * (r % 2), k = 2 * t + 8 * (r / 2);
          a[static_cast<size_t>(m * 16 + k)] =
              Bf16ToFloat(static_cast<uint16_t>(op.a_issued[i][r] & 0xffff));
          a[static_cast<size_t>(m * 16 + k + 1)] =
              Bf16ToFloat(static_cast<uint16_t>(op.a_issued[i][r] >> 16));
        }
      }
    } else {
      for (size_t index = 0; index < a.size(); ++index) a[index] = Bf16ToFloat(op.a_bits[index]);
    }
    for (int col = 0; col < n; ++col) {
      for (int k = 0; k < 16; ++k) {
        b[static_cast<size_t>(k * n + col)] =
            Bf16ToFloat(op.b_bits[static_cast<size_t>(col * 16 + k)]);
      }
    }
    if (op.accumulate) {
      for (int i = 0; i < kWarpgroupSize; ++i) {
        for (int j = 0; j < half; ++j) {
          int row, col;
          AccumulatorElement(i, j, &row, &col);
          c[static_cast<size_t>(row * n + col)] = op.d[i][j];
        }
      }
    }
    if (g_trap_nan) CheckWgmmaNaN(group, op, a, b, c);
    // Each product is exact in float; the sum runs in float, k = 0 .. 15 in order, like MmaBf16:
    // D = (((C + p0) + p1) + ... + p15), with C = 0 when scale-d is false (d is not read).
    std::vector<float> d(static_cast<size_t>(64 * n));
    for (int m = 0; m < 64; ++m) {
      for (int col = 0; col < n; ++col) {
        float sum = c[static_cast<size_t>(m * n + col)];
        for (int k = 0; k < 16; ++k) {
          sum += a[static_cast<size_t>(m * 16 + k)] * b[static_cast<size_t>(k * n + col)];
        }
        d[static_cast<size_t>(m * n + col)] = sum;
      }
    }
    std::vector<uint32_t> written(static_cast<size_t>(kWarpgroupSize * half));
    for (int i = 0; i < kWarpgroupSize; ++i) {
      for (int j = 0; j < half; ++j) {
        int row, col;
        AccumulatorElement(i, j, &row, &col);
        float value = d[static_cast<size_t>(row * n + col)];
        op.d[i][j] = value;
        written[static_cast<size_t>(i * half + j)] = FloatBits(value);
      }
    }
    return written;
  }

  void CheckWgmmaNaN(int group, const Wgmma& op, const std::vector<float>& a,
                     const std::vector<float>& b, const std::vector<float>& c) {
    const char* hint =
        " (read from shared memory nothing wrote, i.e. the 0xFF poison, or NaN data; "
        "SetTrapNaNInMma(false) turns this check off)";
    const std::string who = WarpgroupName(group);
    const unsigned long long serial = op.serial;
    const int n = op.n;
    for (int m = 0; m < 64; ++m) {
      for (int k = 0; k < 16; ++k) {
        if (!std::isnan(a[static_cast<size_t>(m * 16 + k)])) continue;
        if (op.a_in_registers) {
          int lane = (m % 8) * 4 + (k % 8) / 2;
          int reg = (m % 16 >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0);
          Fail(Format("%s: wgmma.mma_async #%llu: A[%d][%d] (%s, a[%d] %s half) is NaN%s",
                      who.c_str(), serial, m, k,
                      Who(group * kWarpgroupSize + (m / 16) * kWarpSize + lane).c_str(), reg,
                      k % 2 ? "high" : "low", hint));
        }
        Fail(Format("%s: wgmma.mma_async #%llu: A[%d][%d] (shared address 0x%x) is NaN%s",
                    who.c_str(), serial, m, k, op.a_address[static_cast<size_t>(m * 16 + k)],
                    hint));
      }
    }
    for (int k = 0; k < 16; ++k) {
      for (int col = 0; col < n; ++col) {
        if (std::isnan(b[static_cast<size_t>(k * n + col)])) {
          Fail(Format("%s: wgmma.mma_async #%llu: B[%d][%d] (shared address 0x%x) is NaN%s",
                      who.c_str(), serial, k, col, op.b_address[static_cast<size_t>(col * 16 + k)],
                      hint));
        }
      }
    }
    if (!op.accumulate) return;
    for (int i = 0; i < kWarpgroupSize; ++i) {
      for (int j = 0; j < n / 2; ++j) {
        int row, col;
        AccumulatorElement(i, j, &row, &col);
        if (std::isnan(c[static_cast<size_t>(row * n + col)])) {
          Fail(Format("%s: wgmma.mma_async #%llu: accumulator D[%d][%d] (%s, d[%d]) is NaN%s",
                      who.c_str(), serial, row, col, Who(group * kWarpgroupSize + i).c_str(), j,
                      hint));
        }
      }
    }
  }

 private:
  std::vector<int> queue_;    // ring buffer of ready threads
  std::vector<int> release_;  // scratch: threads a barrier or collective releases
  size_t head_ = 0;
  std::vector<std::deque<int>> warp_ready_;  // with a schedule seed: ready threads by warp
  int favored_warp_ = -1;                    // with a schedule seed: the warp that runs ahead
  size_t count_ = 0;
  uint64_t rng_ = 0;
};

Runtime g_runtime;
// Non-null on the OS thread inside RunGrid, for its duration.
thread_local Runtime* t_active = nullptr;

Runtime& Active(const char* what) {
  if (t_active == nullptr || t_active->current < 0) {
    throw std::logic_error(std::string("cuda_emulation: ") + what +
                           " called outside a kernel body run by RunGrid");
  }
  return *t_active;
}

void FiberMain(int index) {
#ifdef PDPOOL_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
  Runtime& runtime = g_runtime;
  try {
    (*runtime.body)(runtime.shared);
    runtime.OnExit();
  } catch (const EmulationError& e) {
    runtime.failed = true;
    runtime.error = e.what();
  } catch (const std::exception& e) {
    runtime.failed = true;
    runtime.error = Who(index) + ": the kernel body threw: " + e.what();
  } catch (...) {
    runtime.failed = true;
    runtime.error = Who(index) + ": the kernel body threw a non-std::exception";
  }
  runtime.fibers[static_cast<size_t>(index)].state = State::kExited;
  runtime.LeaveFinishedFiber();
}

void MainStackBounds(const void** low, size_t* bytes) {
  *low = nullptr;
  *bytes = 0;
#ifdef PDPOOL_EMU_ASAN
  pthread_attr_t attributes;
  if (pthread_getattr_np(pthread_self(), &attributes) == 0) {
    void* address = nullptr;
    size_t size = 0;
    if (pthread_attr_getstack(&attributes, &address, &size) == 0) {
      *low = address;
      *bytes = size;
    }
    pthread_attr_destroy(&attributes);
  }
#endif
}

void CheckNotInsideKernel(const char* what) {
  if (t_active != nullptr) {
    throw std::logic_error(std::string("cuda_emulation: ") + what +
                           " called from inside a kernel body");
  }
}

struct FreeDeleter {
  void operator()(unsigned char* p) const { std::free(p); }
};

}  // namespace

// ---- public API -------------------------------------------------------------------------------

void RunGrid(dim3 grid, int threads_per_block, size_t shared_bytes,
             const std::function<void(unsigned char* shared)>& body) {
  CheckNotInsideKernel("RunGrid");
  if (threads_per_block <= 0 || threads_per_block % kWarpSize != 0 || threads_per_block > 1024) {
    throw std::invalid_argument(Format(
        "cuda_emulation: threads_per_block %d must be a positive multiple of 32, at most 1024",
        threads_per_block));
  }
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) {
    throw std::invalid_argument("cuda_emulation: every grid dimension must be at least 1");
  }
  if (shared_bytes > (size_t{1} << 30)) {
    throw std::invalid_argument("cuda_emulation: shared_bytes is unreasonably large");
  }
  if (!body) throw std::invalid_argument("cuda_emulation: empty kernel body");

  std::lock_guard<std::mutex> lock(g_run_mutex);
  Runtime& runtime = g_runtime;
  size_t threads = static_cast<size_t>(threads_per_block);
  g_stacks.Ensure(threads);
#ifdef PDPOOL_EMU_ASM_SWITCH
  CaptureFloatingPointControl();
#endif
  size_t allocation = (std::max<size_t>(shared_bytes, 16) + kSharedAlignment - 1) /
                      kSharedAlignment * kSharedAlignment;
  std::unique_ptr<unsigned char, FreeDeleter> shared(
      static_cast<unsigned char*>(std::aligned_alloc(kSharedAlignment, allocation)));
  if (!shared) throw std::bad_alloc();

  runtime.body = &body;
  runtime.shared = shared.get();
  runtime.shared_bytes = shared_bytes;
  runtime.threads = threads_per_block;
  if (runtime.fibers.size() < threads) runtime.fibers.resize(threads);
  runtime.warps.assign(threads / kWarpSize, WarpSlot{});
  runtime.warpgroups.clear();
  runtime.warpgroups.resize((threads + kWarpgroupSize - 1) / kWarpgroupSize);
  runtime.chunk_owner.assign(shared_bytes / 16, int16_t{-1});
  runtime.chunk_unfenced.assign(shared_bytes / 16, int16_t{-1});
  runtime.stats = RunStats{};
  runtime.SeedRandom(g_schedule_seed);
  MainStackBounds(&runtime.main_stack, &runtime.main_stack_bytes);

  struct Deactivate {
    Runtime* runtime;
    ~Deactivate() {
      g_last_stats = runtime->stats;
      t_active = nullptr;
      runtime->body = nullptr;
      runtime->shared = nullptr;
      runtime->current = -1;
    }
  } deactivate{&runtime};
  t_active = &runtime;

  gridDim = grid;
  blockDim = dim3(static_cast<unsigned>(threads_per_block), 1, 1);
  threadIdx = uint3{0, 0, 0};
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) {
        blockIdx = uint3{x, y, z};
        runtime.StartBlock();
        try {
          runtime.RunBlock();
        } catch (const std::runtime_error& e) {
          throw std::runtime_error(Format("cuda_emulation: block (%u,%u,%u) of grid (%u,%u,%u), "
                                          "%d threads: ",
                                          x, y, z, grid.x, grid.y, grid.z, threads_per_block) +
                                   e.what());
        }
        ++runtime.stats.blocks;
      }
    }
  }
}

void RegisterGlobal(const void* begin, size_t bytes) {
  std::lock_guard<std::mutex> lock(g_globals_mutex);
  uintptr_t low = reinterpret_cast<uintptr_t>(begin);
  g_globals.emplace_back(low, low + bytes);
}

void ClearGlobals() {
  std::lock_guard<std::mutex> lock(g_globals_mutex);
  g_globals.clear();
}

void SetTrapNaNInMma(bool trap) { g_trap_nan = trap; }

void SetScheduleSeed(uint64_t seed) { g_schedule_seed = seed; }

void SetFiberStackBytes(size_t bytes) {
  CheckNotInsideKernel("SetFiberStackBytes");
  if (bytes < 16 * 1024) throw std::invalid_argument("cuda_emulation: fiber stacks need >= 16 KiB");
  std::lock_guard<std::mutex> lock(g_run_mutex);
  g_stacks.SetBytes(bytes);
}

RunStats LastRunStats() {
  CheckNotInsideKernel("LastRunStats");
  std::lock_guard<std::mutex> lock(g_run_mutex);
  return g_last_stats;
}

namespace detail {

namespace {
void CheckFullMask(unsigned mask, WarpOp op, const CallSite& where) {
  if (mask != 0xffffffffu) {
    Fail(Format("%s: %s%s with mask 0x%08x: only full-warp masks (0xffffffff) are emulated",
                Who(t_active->current).c_str(), OpName(op), Site(where).c_str(), mask));
  }
}
}  // namespace

void SyncThreads(const CallSite& where) { Active("__syncthreads").SyncThreads(where); }

void SyncWarp(unsigned mask, const CallSite& where) {
  Runtime& runtime = Active("__syncwarp");
  CheckFullMask(mask, WarpOp::kSyncWarp, where);
  runtime.WarpCollective(WarpOp::kSyncWarp, where);
}

uint64_t Shuffle(WarpOp op, unsigned mask, uint64_t bits, int arg, int width,
                 const CallSite& where) {
  Runtime& runtime = Active(OpName(op));
  CheckFullMask(mask, op, where);
  int tid = runtime.current;
  int lane = tid % kWarpSize;
  WarpSlot& warp = runtime.warps[static_cast<size_t>(tid / kWarpSize)];
  warp.value[lane] = bits;
  warp.arg[lane] = arg;
  warp.width[lane] = width;
  runtime.WarpCollective(op, where);
  return warp.result[lane];
}

unsigned Vote(WarpOp op, unsigned mask, int predicate, const CallSite& where) {
  Runtime& runtime = Active(OpName(op));
  CheckFullMask(mask, op, where);
  int tid = runtime.current;
  int lane = tid % kWarpSize;
  WarpSlot& warp = runtime.warps[static_cast<size_t>(tid / kWarpSize)];
  warp.arg[lane] = predicate;
  runtime.WarpCollective(op, where);
  return static_cast<unsigned>(warp.result[lane]);
}

}  // namespace detail
}  // namespace pdpool::cuda_emulation

namespace pdpool::agent::cuda::emulation {

using pdpool::cuda_emulation::CallSite;
using pdpool::cuda_emulation::detail::WarpOp;

uint32_t SharedAddress(const void* pointer) {
  auto& runtime = pdpool::cuda_emulation::Active("SharedAddress");
  uintptr_t base = reinterpret_cast<uintptr_t>(runtime.shared);
  uintptr_t address = reinterpret_cast<uintptr_t>(pointer);
  if (address < base || address > base + runtime.shared_bytes) {
    pdpool::cuda_emulation::Fail(pdpool::cuda_emulation::Format(
        "%s: SharedAddress(%p): not inside this block's shared memory [%p, %p)",
        pdpool::cuda_emulation::Who(runtime.current).c_str(), pointer,
        static_cast<void*>(runtime.shared),
        static_cast<void*>(runtime.shared + runtime.shared_bytes)));
  }
  return static_cast<uint32_t>(address - base);
}

void CopyAsync16(uint32_t dst, const void* src, bool valid) {
  pdpool::cuda_emulation::Active("CopyAsync16").CopyAsync(dst, src, valid);
}

void CommitAsyncCopies() {
  pdpool::cuda_emulation::Active("CommitAsyncCopies").CommitAsyncCopies();
}

void WaitAsyncCopies(int pending) {
  pdpool::cuda_emulation::Active("WaitAsyncCopies").WaitAsyncCopies(pending);
}

void LoadMatrixX4(uint32_t (&r)[4], uint32_t address, bool transposed) {
  auto& runtime = pdpool::cuda_emulation::Active("LoadMatrixX4");
  int tid = runtime.current;
  int lane = tid % 32;
  auto& warp = runtime.warps[static_cast<size_t>(tid / 32)];
  warp.address[lane] = address;
  warp.transposed[lane] = transposed;
  warp.matrix_out[lane] = r;
  runtime.WarpCollective(WarpOp::kLdMatrix, CallSite(nullptr, 0));
}

void MmaBf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  auto& runtime = pdpool::cuda_emulation::Active("MmaBf16");
  int tid = runtime.current;
  int lane = tid % 32;
  auto& warp = runtime.warps[static_cast<size_t>(tid / 32)];
  warp.mma_a[lane] = a;
  warp.mma_b0[lane] = b0;
  warp.mma_b1[lane] = b1;
  warp.mma_d[lane] = d;
  runtime.WarpCollective(WarpOp::kMma, CallSite(nullptr, 0));
}

// ---- warpgroup_mma.cuh (wgmma); semantics in warp_emulator.h ----

using pdpool::cuda_emulation::WarpgroupOp;

void WarpgroupFence() {
  pdpool::cuda_emulation::Active("WarpgroupFence").WarpgroupCollective(WarpgroupOp::kFence);
}

void WarpgroupCommit() {
  pdpool::cuda_emulation::Active("WarpgroupCommit").WarpgroupCollective(WarpgroupOp::kCommit);
}

void WarpgroupWait(int pending) {
  auto& runtime = pdpool::cuda_emulation::Active("WarpgroupWait");
  int tid = runtime.current;
  auto& group = runtime.warpgroups[static_cast<size_t>(tid / 128)];
  group.pending[tid % 128] = pending;
  runtime.WarpgroupCollective(WarpgroupOp::kWait);
}

void FenceProxyAsyncShared() {
  pdpool::cuda_emulation::Active("FenceProxyAsyncShared").FenceProxyAsyncShared();
}

namespace {
void IssueWarpgroupMma(WarpgroupOp op, const char* what, float* d, int n, const uint32_t* a,
                       uint64_t desc_a, uint64_t desc_b, bool accumulate, bool trans_b) {
  auto& runtime = pdpool::cuda_emulation::Active(what);
  int tid = runtime.current;
  auto& group = runtime.warpgroups[static_cast<size_t>(tid / 128)];
  int i = tid % 128;
  group.d[i] = d;
  group.n[i] = n;
  group.a[i] = a;
  group.desc_a[i] = desc_a;
  group.desc_b[i] = desc_b;
  group.accumulate[i] = accumulate;
  group.trans_b[i] = trans_b;
  runtime.WarpgroupCollective(op);
}
}  // namespace

void WarpgroupMmaSS(float* d, int n, uint64_t desc_a, uint64_t desc_b, bool accumulate,
                    bool trans_b) {
  IssueWarpgroupMma(WarpgroupOp::kMmaSS, "WarpgroupMmaSS", d, n, nullptr, desc_a, desc_b,
                    accumulate, trans_b);
}

void WarpgroupMmaRS(float* d, int n, const uint32_t* a, uint64_t desc_b, bool accumulate,
                    bool trans_b) {
  IssueWarpgroupMma(WarpgroupOp::kMmaRS, "WarpgroupMmaRS", d, n, a, 0, desc_b, accumulate, trans_b);
}

}  // namespace pdpool::agent::cuda::emulation
