// kv_handoff_bench: 1 GiB of KV blocks handed from a prefill process to a decode process on
// one GPU over the cuda-ipc transport (CudaIpcKvSender → CudaIpcKvReceiver, real CUDA IPC),
// against the GPU's own device-to-device copy rate measured in the same run (cudaMemcpy D2D of
// 1 GiB, timed with CUDA events, median of repeats). Rates count read + write bytes, as the
// baseline's do (DESIGN.md: 4.27 TB/s on an H200). Prints a table with the ratio to the
// baseline; the target is >= 85% for the handoff. No assertions on time: a report.
// Usage: kv_handoff_bench [--repeats N] [--block-mib M] [--json PATH]
//   --json writes the table as JSON too: {"device_name", "block_bytes", "blocks", "repeats",
//   "rows": [{"path", "seconds", "bytes_per_s", "vs_copy"}], "target_vs_copy": 0.85}.
// This process is the decode worker; it runs itself again as the prefill worker (--child).
// Without a GPU it says so and exits 0. Single-threaded apart from the receiver's threads.
#include <cuda_runtime_api.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "agent/engine/cuda/cuda_ipc.h"
#include "agent/engine/cuda/gpu_uuid.h"
#include "agent/transport/cuda_ipc_kv_transport.h"
#include "agent/transport/tcp_kv_transport.h"

extern char** environ;

namespace pdpool::agent {
namespace {

constexpr int64_t kTotalBytes = int64_t{1} << 30;
constexpr int32_t kBlockSize = 16;
constexpr const char* kToken = "bench-token";
constexpr uint64_t kContiguousBase = 1'000'000;
constexpr uint64_t kScatteredBase = 2'000'000;

#define CHECK_CUDA(call)                                                        \
  do {                                                                          \
    const cudaError_t e_ = (call);                                              \
    if (e_ != cudaSuccess) {                                                    \
      std::fprintf(stderr, "%s failed: %s (%s)\n", #call, cudaGetErrorName(e_), \
                   cudaGetErrorString(e_));                                     \
      std::exit(1);                                                             \
    }                                                                           \
  } while (0)

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

struct Geometry {
  int64_t block_bytes = 2 << 20;  // a 16-token block of Llama-3.1-8B in bf16
  int32_t num_blocks() const { return static_cast<int32_t>(kTotalBytes / block_bytes); }
  int32_t tokens() const { return num_blocks() * kBlockSize; }
  std::vector<int32_t> Contiguous() const {
    std::vector<int32_t> v(num_blocks());
    std::iota(v.begin(), v.end(), 0);
    return v;
  }
  // Decode blocks in a random order: no two neighbours adjacent, one copy per block.
  std::vector<int32_t> Scattered() const {
    std::vector<int32_t> v = Contiguous();
    std::shuffle(v.begin(), v.end(), std::mt19937(42));
    return v;
  }
};

DeviceKvRegion Allocate(const Geometry& g, void** ptr) {
  CHECK_CUDA(cudaSetDevice(0));
  CHECK_CUDA(cudaMalloc(ptr, static_cast<size_t>(kTotalBytes)));
  CHECK_CUDA(cudaMemset(*ptr, 0x5a, static_cast<size_t>(kTotalBytes)));
  CHECK_CUDA(cudaDeviceSynchronize());
  DeviceKvRegion r;
  r.device = 0;
  auto uuid = cuda::DeviceUuid(0);
  r.device_uuid = uuid.ok() ? *uuid : "GPU-unknown";
  r.base = reinterpret_cast<uintptr_t>(*ptr);
  r.block_bytes = g.block_bytes;
  r.num_blocks = g.num_blocks();
  r.block_size = kBlockSize;
  return r;
}

// The decode worker's reservations: every one of them maps onto the same blocks.
class BenchSink final : public KvSink {
 public:
  explicit BenchSink(const DeviceKvRegion* region) : region_(region) {}
  void Add(uint64_t id, std::vector<int32_t> blocks) {
    std::lock_guard lock(mu_);
    reservations_[id] = std::move(blocks);
  }
  Status Begin(uint64_t reservation, int32_t, int32_t num_blocks) override {
    std::lock_guard lock(mu_);
    auto it = reservations_.find(reservation);
    if (it == reservations_.end()) return Status::NotFound("unknown reservation");
    if (static_cast<int32_t>(it->second.size()) != num_blocks) {
      return Status::InvalidArgument("block count");
    }
    return Status::Ok();
  }
  Status WriteBlock(uint64_t, int32_t, int32_t, std::string_view) override {
    return Status::Internal("host path");
  }
  Status Commit(uint64_t) override { return Status::Ok(); }
  void Abort(uint64_t reservation, const Status& why) override {
    std::fprintf(stderr, "reservation %llu aborted: %s\n",
                 static_cast<unsigned long long>(reservation), why.ToString().c_str());
  }
  const DeviceKvRegion* DeviceRegion() override { return region_; }
  StatusOr<std::vector<int32_t>> ReservedBlocks(uint64_t reservation) override {
    std::lock_guard lock(mu_);
    auto it = reservations_.find(reservation);
    if (it == reservations_.end()) return Status::NotFound("unknown reservation");
    return it->second;
  }

 private:
  const DeviceKvRegion* region_;
  std::mutex mu_;
  std::map<uint64_t, std::vector<int32_t>> reservations_;
};

// Rate counting read + write, in GB/s (1e9).
double Rate(double seconds) { return seconds > 0 ? 2.0 * kTotalBytes / seconds / 1e9 : 0; }

struct Report {
  struct Line {
    std::string path;
    double seconds;
    double vs_copy;
  };
  std::vector<Line> rows;

  void Row(const char* path, double seconds, double baseline_seconds, const char* note = "") {
    const double vs = seconds > 0 ? baseline_seconds / seconds : 0.0;
    std::printf("%-36s %10.3f %12.1f %10.1f%%  %s\n", path, seconds * 1e3, Rate(seconds),
                100.0 * vs, note);
    rows.push_back({path, seconds, vs});
  }

  bool WriteJson(const std::string& file, const std::string& device, const Geometry& g,
                 int repeats) const {
    FILE* f = std::fopen(file.c_str(), "w");
    if (f == nullptr) return false;
    std::fprintf(f,
                 "{\"bench\": \"kv_handoff\", \"device_name\": \"%s\", \"block_bytes\": %lld, "
                 "\"blocks\": %d, \"repeats\": %d, \"target_vs_copy\": 0.85, \"rows\": [",
                 device.c_str(), static_cast<long long>(g.block_bytes), g.num_blocks(), repeats);
    for (size_t i = 0; i < rows.size(); ++i) {
      std::fprintf(f,
                   "%s{\"path\": \"%s\", \"seconds\": %.9g, \"bytes_per_s\": %.6g, "
                   "\"vs_copy\": %.4f}",
                   i ? ", " : "", rows[i].path.c_str(), rows[i].seconds,
                   Rate(rows[i].seconds) * 1e9, rows[i].vs_copy);
    }
    std::fprintf(f, "]}\n");
    return std::fclose(f) == 0;
  }
};

// The prefill process: pushes the 1 GiB `repeats` times each way and prints the table.
int RunChild(const std::string& address, const std::string& handle, const Geometry& g, int repeats,
             double baseline_seconds, const std::string& json) {
  void* ptr = nullptr;
  const DeviceKvRegion source = Allocate(g, &ptr);
  std::unique_ptr<KvIpc> ipc = NewCudaIpc();
  CudaIpcKvOptions options;
  options.token = kToken;
  CudaIpcKvSender sender(options, ipc.get());
  const std::vector<int32_t> src = g.Contiguous();

  auto destination = [&](uint64_t id, const std::vector<int32_t>& blocks) {
    KvDestination d;
    d.transport = "cuda-ipc";
    d.address = address;
    d.reservation_id = id;
    d.blocks = blocks;
    d.peer.device_uuid = source.device_uuid;
    d.peer.block_bytes = g.block_bytes;
    d.peer.num_blocks = g.num_blocks();
    d.peer.cuda_ipc = true;
    d.peer.ipc_handle = handle;
    return d;
  };
  // The copy alone (open handle cached), then the whole handoff (control channel included).
  std::vector<double> copy_s;
  const std::vector<IpcCopy> copies = BlockCopies(source, src, g.Contiguous());
  for (int r = 0; r <= repeats; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    if (Status s = ipc->Copy(handle, 0, copies); !s.ok()) {
      std::fprintf(stderr, "copy: %s\n", s.ToString().c_str());
      return 1;
    }
    if (r > 0) {
      copy_s.push_back(
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
  }
  std::map<std::string, std::vector<double>> handoff_s;
  for (const char* mode : {"contiguous", "scattered"}) {
    const bool contiguous = std::string(mode) == "contiguous";
    const std::vector<int32_t> dst = contiguous ? g.Contiguous() : g.Scattered();
    const uint64_t base = contiguous ? kContiguousBase : kScatteredBase;
    for (int r = 0; r <= repeats; ++r) {  // r == 0: warm-up
      auto sent = sender.Send(destination(base + r, dst), source, src, g.tokens());
      if (!sent.ok()) {
        std::fprintf(stderr, "handoff (%s): %s\n", mode, sent.status().ToString().c_str());
        return 1;
      }
      if (r > 0) handoff_s[mode].push_back(sent->seconds);
    }
  }
  cudaDeviceProp prop{};
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf(
      "KV handoff over cuda-ipc: 1 GiB of KV (%d blocks of %lld KiB), two processes on "
      "one %s; median of %d; rates count read+write\n",
      g.num_blocks(), static_cast<long long>(g.block_bytes >> 10), prop.name, repeats);
  std::printf("%-36s %10s %12s %11s\n", "path", "ms", "GB/s", "vs D2D");
  Report report;
  report.Row("cudaMemcpy D2D, one process", baseline_seconds, baseline_seconds, "(baseline)");
  report.Row("cuda-ipc copy only, contiguous", Median(copy_s), baseline_seconds);
  report.Row("cuda-ipc handoff, contiguous", Median(handoff_s["contiguous"]), baseline_seconds,
             "(target >= 85%)");
  report.Row("cuda-ipc handoff, scattered blocks", Median(handoff_s["scattered"]), baseline_seconds,
             "(one copy per block)");
  CHECK_CUDA(cudaFree(ptr));
  if (!json.empty() && !report.WriteJson(json, prop.name, g, repeats)) {
    std::fprintf(stderr, "cannot write %s\n", json.c_str());
    return 1;
  }
  return 0;
}

// cudaMemcpy device to device of 1 GiB in this process, timed with events.
double MeasureBaseline(int repeats) {
  void* a = nullptr;
  void* b = nullptr;
  CHECK_CUDA(cudaMalloc(&a, static_cast<size_t>(kTotalBytes)));
  CHECK_CUDA(cudaMalloc(&b, static_cast<size_t>(kTotalBytes)));
  CHECK_CUDA(cudaMemset(a, 1, static_cast<size_t>(kTotalBytes)));
  cudaStream_t stream;
  cudaEvent_t start, stop;
  CHECK_CUDA(cudaStreamCreate(&stream));
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  std::vector<double> times;
  for (int r = 0; r <= repeats; ++r) {
    CHECK_CUDA(cudaEventRecord(start, stream));
    CHECK_CUDA(
        cudaMemcpyAsync(b, a, static_cast<size_t>(kTotalBytes), cudaMemcpyDeviceToDevice, stream));
    CHECK_CUDA(cudaEventRecord(stop, stream));
    CHECK_CUDA(cudaEventSynchronize(stop));
    float ms = 0;
    CHECK_CUDA(cudaEventElapsedTime(&ms, start, stop));
    if (r > 0) times.push_back(ms / 1e3);
  }
  CHECK_CUDA(cudaEventDestroy(start));
  CHECK_CUDA(cudaEventDestroy(stop));
  CHECK_CUDA(cudaStreamDestroy(stream));
  CHECK_CUDA(cudaFree(a));
  CHECK_CUDA(cudaFree(b));
  return Median(times);
}

std::string Precise(double v) {
  char out[64];
  std::snprintf(out, sizeof(out), "%.9g", v);
  return out;
}

int RunParent(const std::string& self, const Geometry& g, int repeats, const std::string& json) {
  int n = 0;
  if (cudaError_t e = cudaGetDeviceCount(&n); e != cudaSuccess || n == 0) {
    const char* why = e != cudaSuccess ? cudaGetErrorName(e) : "0 devices";
    std::printf("kv_handoff_bench: no CUDA device (%s); nothing to measure\n", why);
    if (!json.empty()) {
      if (FILE* f = std::fopen(json.c_str(), "w")) {
        std::fprintf(f, "{\"bench\": \"kv_handoff\", \"skipped\": \"no CUDA device (%s)\"}\n", why);
        std::fclose(f);
      }
    }
    return 0;
  }
  CHECK_CUDA(cudaSetDevice(0));
  const double baseline = MeasureBaseline(repeats);
  void* ptr = nullptr;
  const DeviceKvRegion decode = Allocate(g, &ptr);
  std::unique_ptr<KvIpc> ipc = NewCudaIpc();
  auto handle = ipc->Export(decode);
  if (!handle.ok()) {
    std::fprintf(stderr, "export: %s\n", handle.status().ToString().c_str());
    return 1;
  }
  BenchSink sink(&decode);
  for (int r = 0; r <= repeats; ++r) {
    sink.Add(kContiguousBase + r, g.Contiguous());
    sink.Add(kScatteredBase + r, g.Scattered());
  }
  CudaIpcKvOptions options;
  options.token = kToken;
  CudaIpcKvReceiver receiver(options, &sink);
  TcpKvOptions tcp_options;
  tcp_options.token = kToken;
  TcpKvReceiver tcp(tcp_options, &sink);
  tcp.AddProtocol(kCudaIpcKvMagic, [&](int fd) { receiver.ServeConnection(fd); });
  if (Status s = tcp.Start("127.0.0.1", 0); !s.ok()) {
    std::fprintf(stderr, "receiver: %s\n", s.ToString().c_str());
    return 1;
  }
  std::vector<std::string> args = {self,
                                   "--child",
                                   "127.0.0.1:" + std::to_string(tcp.port()),
                                   *handle,
                                   std::to_string(g.block_bytes),
                                   std::to_string(repeats),
                                   Precise(baseline),
                                   json};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  if (posix_spawn(&pid, self.c_str(), nullptr, nullptr, argv.data(), environ) != 0) {
    std::perror("posix_spawn");
    return 1;
  }
  int status = 0;
  waitpid(pid, &status, 0);
  tcp.Stop();
  CHECK_CUDA(cudaFree(ptr));
  return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}

}  // namespace
}  // namespace pdpool::agent

int main(int argc, char** argv) {
  using namespace pdpool::agent;
  if (argc == 8 && std::string(argv[1]) == "--child") {
    Geometry g;
    g.block_bytes = std::atoll(argv[4]);
    return RunChild(argv[2], argv[3], g, std::atoi(argv[5]), std::atof(argv[6]), argv[7]);
  }
  Geometry g;
  int repeats = 10;
  std::string json;
  const char* usage = "usage: kv_handoff_bench [--repeats N] [--block-mib M] [--json PATH]\n";
  for (int i = 1; i < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      std::printf("%s", usage);
      return 0;
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "%s", usage);
      return 2;
    }
    if (flag == "--json") {
      json = argv[i + 1];
    } else if (flag == "--repeats") {
      repeats = std::max(1, std::atoi(argv[i + 1]));
    } else if (flag == "--block-mib") {
      g.block_bytes = std::max<int64_t>(1, std::atoll(argv[i + 1])) << 20;
      if (kTotalBytes % g.block_bytes != 0) {
        std::fprintf(stderr, "--block-mib must divide 1024\n");
        return 2;
      }
    } else {
      std::fprintf(stderr, "%s", usage);
      return 2;
    }
  }
  char self[4096];
  const ssize_t n = ::readlink("/proc/self/exe", self, sizeof(self) - 1);
  return RunParent(n > 0 ? std::string(self, static_cast<size_t>(n)) : argv[0], g, repeats, json);
}
