// GPU tests of the KV transports (ctest label `gpu`), run on a machine with an NVIDIA GPU:
//   (a) cuda-ipc between two processes on one GPU: this process is the decode worker (its KV
//       region cudaMalloc'ed and exported, the cuda-ipc receiver on a loopback port); a child
//       process (this binary again, --cuda-ipc-child) is the prefill worker, which fills its own
//       region with random bytes and pushes blocks through the real CudaIpcKvSender
//       (cudaIpcOpenMemHandle, cudaMemcpyAsync device to device, event); the blocks are then
//       checked byte for byte here. The child is this test binary again, running only
//       CudaIpcGpuTest.PrefillChildProcess with $PDPOOL_CUDA_IPC_CHILD set (skipped otherwise);
//   (b) the real NCCL communicator with one rank sending to itself (two ranks cannot share a
//       GPU), grouped sends and receives of blocks in a permuted order, checked byte for byte.
// Without a GPU (cudaGetDeviceCount reports none or fails) every test skips and the binary
// exits 0. Part of pdpool_gpu_tests (tests/CMakeLists.txt globs tests/gpu/*_test.cc).
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "agent/engine/cuda/cuda_ipc.h"
#include "agent/engine/cuda/gpu_uuid.h"
#include "agent/engine/cuda/nccl_communicator.h"
#include "agent/transport/cuda_ipc_kv_transport.h"
#include "agent/transport/tcp_kv_transport.h"
#include "tests/fakes/fake_kv_transports.h"
#include "tests/gpu/gpu_test_support.h"

extern char** environ;

namespace pdpool::agent {
namespace {

constexpr int64_t kBlockBytes = 256 << 10;  // a small model's block
constexpr int32_t kBlockSize = 16;
constexpr int32_t kNumBlocks = 64;
constexpr const char* kToken = "gpu-test-token";

#define ASSERT_CUDA(call)                                                      \
  do {                                                                         \
    const cudaError_t e_ = (call);                                             \
    ASSERT_EQ(e_, cudaSuccess) << #call << ": " << cudaGetErrorName(e_) << " " \
                               << cudaGetErrorString(e_);                      \
  } while (0)

constexpr const char* kChildEnv = "PDPOOL_CUDA_IPC_CHILD";

std::vector<char> RandomBytes(size_t n, uint32_t seed) {
  std::vector<char> v(n);
  std::mt19937 rng(seed);
  for (char& c : v) c = static_cast<char>(rng());
  return v;
}

// A KV region of kNumBlocks blocks in device memory (one cudaMalloc, like the cuda backend's).
struct DeviceRegion {
  DeviceKvRegion region;
  void* ptr = nullptr;
  ~DeviceRegion() {
    if (ptr != nullptr) (void)cudaFree(ptr);
  }
};

Status Allocate(DeviceRegion* r) {
  const size_t bytes = static_cast<size_t>(kNumBlocks) * kBlockBytes;
  if (cudaSetDevice(0) != cudaSuccess || cudaMalloc(&r->ptr, bytes) != cudaSuccess ||
      cudaMemset(r->ptr, 0, bytes) != cudaSuccess || cudaDeviceSynchronize() != cudaSuccess) {
    return Status::Internal("cudaMalloc/cudaMemset of the KV region failed");
  }
  r->region.device = 0;
  auto uuid = cuda::DeviceUuid(0);
  r->region.device_uuid = uuid.ok() ? *uuid : "GPU-unknown";
  r->region.base = reinterpret_cast<uintptr_t>(r->ptr);
  r->region.block_bytes = kBlockBytes;
  r->region.num_blocks = kNumBlocks;
  r->region.block_size = kBlockSize;
  return Status::Ok();
}

// The transfer both processes agree on: prefill blocks `kSource` go to decode blocks `kDest`.
const std::vector<int32_t> kSource = {3, 4, 5, 6, 10, 0, 63, 31, 32, 33};
const std::vector<int32_t> kDest = {40, 41, 42, 7, 8, 9, 1, 2, 50, 51};
constexpr int32_t kTokens = 10 * kBlockSize - 5;
constexpr uint32_t kSeed = 20261127;
constexpr uint64_t kReservation = 77;

std::string Self() {
  char self[4096];
  const ssize_t n = ::readlink("/proc/self/exe", self, sizeof(self) - 1);
  return n > 0 ? std::string(self, static_cast<size_t>(n)) : "";
}

// The prefill process, run by TwoProcessesOnOneGpuMoveBlocksByteExact with
// $PDPOOL_CUDA_IPC_CHILD = "<kv address> <ipc handle> <device uuid>".
TEST(CudaIpcGpuTest, PrefillChildProcess) {
  const char* env = std::getenv(kChildEnv);
  if (env == nullptr) GTEST_SKIP() << "runs only as the child of TwoProcessesOnOneGpu...";
  char address[256], handle[256], peer_uuid[128];
  ASSERT_EQ(std::sscanf(env, "%255s %255s %127s", address, handle, peer_uuid), 3) << env;
  DeviceRegion source;
  ASSERT_TRUE(Allocate(&source).ok());
  const std::vector<char> bytes = RandomBytes(static_cast<size_t>(kNumBlocks) * kBlockBytes, kSeed);
  ASSERT_CUDA(cudaMemcpy(source.ptr, bytes.data(), bytes.size(), cudaMemcpyHostToDevice));
  std::unique_ptr<KvIpc> ipc = NewCudaIpc();
  CudaIpcKvOptions options;
  options.token = kToken;
  CudaIpcKvSender sender(options, ipc.get());
  KvDestination d;
  d.transport = "cuda-ipc";
  d.address = address;
  d.reservation_id = kReservation;
  d.blocks = kDest;
  d.peer.device_uuid = peer_uuid;
  d.peer.block_bytes = kBlockBytes;
  d.peer.num_blocks = kNumBlocks;
  d.peer.cuda_ipc = true;
  d.peer.ipc_handle = handle;
  auto sent = sender.Send(d, source.region, kSource, kTokens);
  ASSERT_TRUE(sent.ok()) << "cuda-ipc send: " << sent.status().ToString();
  EXPECT_EQ(sent->bytes, static_cast<int64_t>(kSource.size()) * kBlockBytes);
  std::printf("child: sent %lld bytes in %.6f s\n", static_cast<long long>(sent->bytes),
              sent->seconds);
}

TEST(CudaIpcGpuTest, TwoProcessesOnOneGpuMoveBlocksByteExact) {
  PDPOOL_SKIP_WITHOUT_GPU();
  if (std::getenv(kChildEnv) != nullptr) GTEST_SKIP() << "this is the child process";
  DeviceRegion decode;
  ASSERT_TRUE(Allocate(&decode).ok());
  std::unique_ptr<KvIpc> ipc = NewCudaIpc();
  auto handle = ipc->Export(decode.region);
  ASSERT_TRUE(handle.ok()) << handle.status().ToString();

  // The decode worker's side: a reservation over kDest, the receiver on a loopback port.
  RecordingDeviceSink sink(&decode.region);
  sink.AddReservation(kReservation, kTokens, kDest);
  CudaIpcKvOptions options;
  options.token = kToken;
  CudaIpcKvReceiver receiver(options, &sink);
  TcpKvOptions tcp_options;
  tcp_options.token = kToken;
  TcpKvReceiver tcp(tcp_options, &sink);
  tcp.AddProtocol(kCudaIpcKvMagic, [&](int fd) { receiver.ServeConnection(fd); });
  ASSERT_TRUE(tcp.Start("127.0.0.1", 0).ok());

  // The child: this binary, only the child test, told where to push by the environment.
  const std::string self = Self();
  ASSERT_FALSE(self.empty());
  std::vector<std::string> args = {self, "--gtest_filter=CudaIpcGpuTest.PrefillChildProcess"};
  std::vector<std::string> env = {std::string(kChildEnv) +
                                  "=127.0.0.1:" + std::to_string(tcp.port()) + " " + *handle + " " +
                                  decode.region.device_uuid};
  for (char** e = environ; *e != nullptr; ++e) env.emplace_back(*e);
  std::vector<char*> argv, envp;
  for (std::string& a : args) argv.push_back(a.data());
  for (std::string& e : env) envp.push_back(e.data());
  argv.push_back(nullptr);
  envp.push_back(nullptr);
  pid_t pid = 0;
  ASSERT_EQ(posix_spawn(&pid, self.c_str(), nullptr, nullptr, argv.data(), envp.data()), 0);
  int status = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (waitpid(pid, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      FAIL() << "the prefill child process did not finish in 120 s";
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
      << "child exit status " << status << " (its stderr says why)";
  EXPECT_TRUE(sink.committed(kReservation));
  EXPECT_EQ(sink.bytes(kReservation), static_cast<int64_t>(kSource.size()) * kBlockBytes);

  std::vector<char> got(static_cast<size_t>(kNumBlocks) * kBlockBytes);
  ASSERT_CUDA(cudaMemcpy(got.data(), decode.ptr, got.size(), cudaMemcpyDeviceToHost));
  const std::vector<char> want = RandomBytes(got.size(), kSeed);
  std::vector<bool> written(kNumBlocks, false);
  for (size_t i = 0; i < kSource.size(); ++i) {
    written[kDest[i]] = true;
    EXPECT_EQ(std::memcmp(got.data() + kDest[i] * kBlockBytes,
                          want.data() + kSource[i] * kBlockBytes, kBlockBytes),
              0)
        << "decode block " << kDest[i] << " differs from prefill block " << kSource[i];
  }
  // Blocks outside the reservation are still zero.
  const std::vector<char> zero(kBlockBytes, 0);
  for (int32_t b = 0; b < kNumBlocks; ++b) {
    if (!written[b]) {
      EXPECT_EQ(std::memcmp(got.data() + b * kBlockBytes, zero.data(), kBlockBytes), 0)
          << "block " << b;
    }
  }
}

TEST(NcclGpuTest, OneRankSendsBlocksToItself) {
  PDPOOL_SKIP_WITHOUT_GPU();
  DeviceRegion src, dst;
  ASSERT_TRUE(Allocate(&src).ok());
  ASSERT_TRUE(Allocate(&dst).ok());
  const std::vector<char> bytes = RandomBytes(static_cast<size_t>(kNumBlocks) * kBlockBytes, 7);
  ASSERT_CUDA(cudaMemcpy(src.ptr, bytes.data(), bytes.size(), cudaMemcpyHostToDevice));

  std::unique_ptr<KvCommunicatorFactory> factory = NewNcclCommunicatorFactory();
  auto id = factory->NewUniqueId();
  ASSERT_TRUE(id.ok()) << id.status().ToString();
  auto comm =
      factory->Join(*id, 1, 0, 0, std::chrono::steady_clock::now() + std::chrono::seconds(60));
  ASSERT_TRUE(comm.ok()) << comm.status().ToString();

  // Block i goes to block perm[i], all in one group, as a transfer of the nccl transport does.
  std::vector<int32_t> perm(kNumBlocks);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), std::mt19937(11));
  std::vector<DeviceSpan> sends, recvs;
  for (int32_t i = 0; i < kNumBlocks; ++i) {
    sends.push_back({src.region.base + static_cast<uintptr_t>(i) * kBlockBytes, kBlockBytes});
    recvs.push_back({dst.region.base + static_cast<uintptr_t>(perm[i]) * kBlockBytes, kBlockBytes});
  }
  const auto in_a_minute = [] {
    return std::chrono::steady_clock::now() + std::chrono::seconds(60);
  };
  Status posted = (*comm)->Post(sends, recvs, in_a_minute());
  ASSERT_TRUE(posted.ok()) << posted.ToString();
  Status done = (*comm)->Wait(in_a_minute());
  ASSERT_TRUE(done.ok()) << done.ToString();

  std::vector<char> got(bytes.size());
  ASSERT_CUDA(cudaMemcpy(got.data(), dst.ptr, got.size(), cudaMemcpyDeviceToHost));
  for (int32_t i = 0; i < kNumBlocks; ++i) {
    EXPECT_EQ(std::memcmp(got.data() + perm[i] * kBlockBytes, bytes.data() + i * kBlockBytes,
                          kBlockBytes),
              0)
        << "block " << i << " → " << perm[i];
  }
  // A second transfer on the same communicator, then an abort: no hang, no crash.
  ASSERT_TRUE((*comm)->Post({sends.data(), 1}, {recvs.data(), 1}, in_a_minute()).ok());
  EXPECT_TRUE((*comm)->Wait(in_a_minute()).ok());
  (*comm)->Abort();
  EXPECT_FALSE((*comm)->Post({sends.data(), 1}, {recvs.data(), 1}, in_a_minute()).ok());
}

}  // namespace
}  // namespace pdpool::agent
