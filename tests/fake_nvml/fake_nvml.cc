// A fake NVML (libnvidia-ml.so) for GpuMonitor's tests: a shared library exporting the NVML
// functions GpuMonitor resolves, with the real library's C ABI, its GPUs and failures set by
// environment variables read at each call (so a test changes them between samples):
//   FAKE_NVML_GPUS=N                 devices (default 2, at most 16)
//   FAKE_NVML_INIT_ERROR=CODE        nvmlInit_v2 returns CODE (e.g. 9, DRIVER_NOT_LOADED)
//   FAKE_NVML_FAIL_DEVICE=I          every query on device I returns 15 (GPU_IS_LOST)
//   FAKE_NVML_NO_POWER=I             nvmlDeviceGetPowerUsage on device I returns 3 (NOT_SUPPORTED)
//   FAKE_NVML_UTIL=P                 utilization of device i: P + 10*i percent (default 37)
//   FAKE_NVML_MEM_USED_MIB=M         memory used on device i: M*(i+1) MiB (default 1024)
//   FAKE_NVML_POWER_MW=W             power of device i: W + 1000*i milliwatts (default 250000)
// Device i has UUID GPU-00000000-0000-0000-0000-00000000000i and 80 GiB of memory. Queries
// before nvmlInit_v2 (or after the matching nvmlShutdown) return 1 (UNINITIALIZED), as NVML's
// do; FakeNvmlInitCount() says how many inits are not shut down yet. Thread-safe (atomics;
// getenv, so tests set variables before sampling, not during).
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace {

constexpr int kSuccess = 0;
constexpr int kUninitialized = 1;
constexpr int kInvalidArgument = 2;
constexpr int kNotSupported = 3;
constexpr int kNotFound = 6;
constexpr int kInsufficientSize = 7;
constexpr int kGpuIsLost = 15;
constexpr int kMaxGpus = 16;

struct FakeDevice {
  int index;
};
FakeDevice devices[kMaxGpus] = {{0}, {1}, {2},  {3},  {4},  {5},  {6},  {7},
                                {8}, {9}, {10}, {11}, {12}, {13}, {14}, {15}};
std::atomic<int> inits{0};

long EnvInt(const char* name, long fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  return std::strtol(v, nullptr, 10);
}

int GpuCount() {
  const long n = EnvInt("FAKE_NVML_GPUS", 2);
  return n < 0 ? 0 : n > kMaxGpus ? kMaxGpus : static_cast<int>(n);
}

std::string Uuid(int index) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "GPU-00000000-0000-0000-0000-%012d", index);
  return buf;
}

// The device behind a handle, or a failure code for it.
int Lookup(void* handle, int* index) {
  if (inits.load() <= 0) return kUninitialized;
  if (handle == nullptr) return kInvalidArgument;
  *index = static_cast<FakeDevice*>(handle)->index;
  if (*index >= GpuCount()) return kInvalidArgument;
  if (EnvInt("FAKE_NVML_FAIL_DEVICE", -1) == *index) return kGpuIsLost;
  return kSuccess;
}

}  // namespace

#define FAKE_NVML_EXPORT extern "C" __attribute__((visibility("default")))

struct FakeNvmlUtilization {
  unsigned int gpu;
  unsigned int memory;
};
struct FakeNvmlMemory {
  unsigned long long total;
  unsigned long long free;
  unsigned long long used;
};

FAKE_NVML_EXPORT int nvmlInit_v2() {
  const long error = EnvInt("FAKE_NVML_INIT_ERROR", kSuccess);
  if (error != kSuccess) return static_cast<int>(error);
  inits.fetch_add(1);
  return kSuccess;
}

FAKE_NVML_EXPORT int nvmlShutdown() {
  int n = inits.load();
  while (n > 0 && !inits.compare_exchange_weak(n, n - 1)) {
  }
  return n > 0 ? kSuccess : kUninitialized;
}

FAKE_NVML_EXPORT const char* nvmlErrorString(int code) {
  switch (code) {
    case kSuccess:
      return "Success";
    case kUninitialized:
      return "Uninitialized";
    case kInvalidArgument:
      return "Invalid Argument";
    case kNotSupported:
      return "Not Supported";
    case kNotFound:
      return "Not Found";
    case 9:
      return "Driver Not Loaded";
    case kGpuIsLost:
      return "GPU is lost";
    default:
      return "Unknown Error";
  }
}

FAKE_NVML_EXPORT int nvmlDeviceGetCount_v2(unsigned int* count) {
  if (inits.load() <= 0) return kUninitialized;
  if (count == nullptr) return kInvalidArgument;
  *count = static_cast<unsigned int>(GpuCount());
  return kSuccess;
}

FAKE_NVML_EXPORT int nvmlDeviceGetHandleByIndex_v2(unsigned int index, void** device) {
  if (inits.load() <= 0) return kUninitialized;
  if (device == nullptr || index >= static_cast<unsigned int>(GpuCount())) {
    return kInvalidArgument;
  }
  *device = &devices[index];
  return kSuccess;
}

FAKE_NVML_EXPORT int nvmlDeviceGetHandleByUUID(const char* uuid, void** device) {
  if (inits.load() <= 0) return kUninitialized;
  if (uuid == nullptr || device == nullptr) return kInvalidArgument;
  for (int i = 0; i < GpuCount(); ++i) {
    if (Uuid(i) == uuid) {
      *device = &devices[i];
      return kSuccess;
    }
  }
  return kNotFound;
}

FAKE_NVML_EXPORT int nvmlDeviceGetUUID(void* device, char* uuid, unsigned int length) {
  int index = 0;
  if (int r = Lookup(device, &index); r != kSuccess) return r;
  const std::string u = Uuid(index);
  if (uuid == nullptr || length < u.size() + 1) return kInsufficientSize;
  std::memcpy(uuid, u.c_str(), u.size() + 1);
  return kSuccess;
}

FAKE_NVML_EXPORT int nvmlDeviceGetUtilizationRates(void* device, FakeNvmlUtilization* util) {
  int index = 0;
  if (int r = Lookup(device, &index); r != kSuccess) return r;
  if (util == nullptr) return kInvalidArgument;
  util->gpu = static_cast<unsigned int>(EnvInt("FAKE_NVML_UTIL", 37) + 10 * index);
  util->memory = 5;
  return kSuccess;
}

FAKE_NVML_EXPORT int nvmlDeviceGetMemoryInfo(void* device, FakeNvmlMemory* memory) {
  int index = 0;
  if (int r = Lookup(device, &index); r != kSuccess) return r;
  if (memory == nullptr) return kInvalidArgument;
  memory->total = 80ull << 30;
  memory->used =
      static_cast<unsigned long long>(EnvInt("FAKE_NVML_MEM_USED_MIB", 1024)) * (index + 1) << 20;
  memory->free = memory->total - memory->used;
  return kSuccess;
}

FAKE_NVML_EXPORT int nvmlDeviceGetPowerUsage(void* device, unsigned int* milliwatts) {
  int index = 0;
  if (int r = Lookup(device, &index); r != kSuccess) return r;
  if (milliwatts == nullptr) return kInvalidArgument;
  if (EnvInt("FAKE_NVML_NO_POWER", -1) == index) return kNotSupported;
  *milliwatts = static_cast<unsigned int>(EnvInt("FAKE_NVML_POWER_MW", 250000) + 1000 * index);
  return kSuccess;
}

// Not NVML: inits not shut down yet, so tests check that GpuMonitor shuts NVML down.
FAKE_NVML_EXPORT int FakeNvmlInitCount() { return inits.load(); }
