// GpuMonitor: see gpu_monitor.h.
#include "agent/worker/gpu_monitor.h"

#include <dlfcn.h>

#include <algorithm>
#include <cstdlib>
#include <string>

#include "common/log.h"

namespace pdpool::agent {
namespace {

// The part of NVML's ABI (nvml.h, stable since CUDA 11) that GpuMonitor uses, declared here so
// that builds need no driver headers. nvmlReturn_t is a C enum: int-sized.
using NvmlReturn = int;
using NvmlDevice = void*;  // nvmlDevice_t: struct nvmlDevice_st*
constexpr NvmlReturn kNvmlSuccess = 0;
constexpr unsigned kNvmlUuidBufferSize = 96;  // NVML_DEVICE_UUID_V2_BUFFER_SIZE
struct NvmlUtilization {                      // nvmlUtilization_t
  unsigned int gpu;                           // percent of the sample period a kernel ran
  unsigned int memory;                        // percent of it device memory was read or written
};
struct NvmlMemory {  // nvmlMemory_t (v1)
  unsigned long long total;
  unsigned long long free;
  unsigned long long used;
};

std::string Trim(std::string_view s) {
  const auto space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; };
  while (!s.empty() && space(s.front())) s.remove_prefix(1);
  while (!s.empty() && space(s.back())) s.remove_suffix(1);
  return std::string(s);
}

bool IsIndex(const std::string& id) {
  return !id.empty() && id.size() < 10 &&
         std::all_of(id.begin(), id.end(), [](char c) { return c >= '0' && c <= '9'; });
}

bool IsUuid(const std::string& id) { return id.rfind("GPU-", 0) == 0 || id.rfind("MIG-", 0) == 0; }

VisibleGpus ParseList(const std::string& value) {
  VisibleGpus v;
  const std::string all = Trim(value);
  if (all == "all") {
    v.all = true;
    return v;
  }
  if (all == "none" || all == "void" || all.empty()) return v;
  size_t begin = 0;
  while (begin <= value.size()) {
    size_t end = value.find(',', begin);
    if (end == std::string::npos) end = value.size();
    std::string id = Trim(std::string_view(value).substr(begin, end - begin));
    if (!IsIndex(id) && !IsUuid(id)) break;  // CUDA ignores the rest of the list
    v.ids.push_back(std::move(id));
    begin = end + 1;
  }
  return v;
}

}  // namespace

VisibleGpus ParseVisibleGpus(const char* cuda_visible_devices, const char* nvidia_visible_devices) {
  if (cuda_visible_devices != nullptr) return ParseList(cuda_visible_devices);
  if (nvidia_visible_devices != nullptr) {
    VisibleGpus v = ParseList(nvidia_visible_devices);
    v.from_container_runtime = true;
    return v;
  }
  VisibleGpus v;
  v.all = true;
  return v;
}

VisibleGpus VisibleGpusFromEnvironment() {
  return ParseVisibleGpus(std::getenv("CUDA_VISIBLE_DEVICES"),
                          std::getenv("NVIDIA_VISIBLE_DEVICES"));
}

struct GpuMonitor::Nvml {
  std::string library;
  void* dl = nullptr;
  NvmlReturn (*Init)() = nullptr;
  NvmlReturn (*Shutdown)() = nullptr;
  NvmlReturn (*DeviceGetCount)(unsigned int*) = nullptr;
  NvmlReturn (*DeviceGetHandleByIndex)(unsigned int, NvmlDevice*) = nullptr;
  NvmlReturn (*DeviceGetHandleByUUID)(const char*, NvmlDevice*) = nullptr;
  NvmlReturn (*DeviceGetUUID)(NvmlDevice, char*, unsigned int) = nullptr;
  NvmlReturn (*DeviceGetUtilizationRates)(NvmlDevice, NvmlUtilization*) = nullptr;
  NvmlReturn (*DeviceGetMemoryInfo)(NvmlDevice, NvmlMemory*) = nullptr;
  NvmlReturn (*DeviceGetPowerUsage)(NvmlDevice, unsigned int*) = nullptr;  // milliwatts
  const char* (*ErrorString)(NvmlReturn) = nullptr;
  bool initialized = false;

  ~Nvml() {
    if (initialized) Shutdown();
    if (dl != nullptr) dlclose(dl);
  }

  std::string Error(NvmlReturn code) const {
    const char* s = ErrorString != nullptr ? ErrorString(code) : nullptr;
    return std::string(s != nullptr ? s : "unknown error") + " (" + std::to_string(code) + ")";
  }

  // The device's UUID, or empty (the failure logged).
  std::string Uuid(NvmlDevice device, const std::string& which) const {
    char buf[kNvmlUuidBufferSize] = {};
    const NvmlReturn r = DeviceGetUUID(device, buf, sizeof(buf));
    if (r != kNvmlSuccess) {
      LogWarn("gpu metrics: cannot read a GPU's UUID; not reported",
              {{"device", which}, {"error", Error(r)}});
      return "";
    }
    buf[sizeof(buf) - 1] = '\0';
    return buf;
  }
};

namespace {

template <typename Fn>
bool Resolve(void* dl, const char* name, Fn* fn) {
  *fn = reinterpret_cast<Fn>(dlsym(dl, name));
  return *fn != nullptr;
}

}  // namespace

GpuMonitor::GpuMonitor(std::string library, std::optional<VisibleGpus> visible)
    : library_(std::move(library)), visible_(std::move(visible)) {}

GpuMonitor::~GpuMonitor() = default;

bool GpuMonitor::available() const {
  std::lock_guard lock(mu_);
  return nvml_ != nullptr;
}

bool GpuMonitor::StartLocked() {
  auto nvml = std::make_unique<Nvml>();
  nvml->library = library_;
  if (nvml->library.empty()) {
    const char* env = std::getenv("PDPOOL_NVML_LIBRARY");
    nvml->library = env != nullptr && *env != '\0' ? env : std::string(kDefaultLibrary);
  }
  nvml->dl = dlopen(nvml->library.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (nvml->dl == nullptr) {
    // The usual case on CPU machines: no driver, no GPU series.
    const char* err = dlerror();
    LogInfo("gpu metrics off: NVML not loadable",
            {{"library", nvml->library}, {"error", err != nullptr ? err : ""}});
    return false;
  }
  void* dl = nvml->dl;
  const char* missing = nullptr;
  auto need = [&](const char* name, auto* fn) {
    if (missing == nullptr && !Resolve(dl, name, fn)) missing = name;
  };
  need("nvmlInit_v2", &nvml->Init);
  need("nvmlShutdown", &nvml->Shutdown);
  need("nvmlDeviceGetCount_v2", &nvml->DeviceGetCount);
  need("nvmlDeviceGetHandleByIndex_v2", &nvml->DeviceGetHandleByIndex);
  need("nvmlDeviceGetHandleByUUID", &nvml->DeviceGetHandleByUUID);
  need("nvmlDeviceGetUUID", &nvml->DeviceGetUUID);
  need("nvmlDeviceGetUtilizationRates", &nvml->DeviceGetUtilizationRates);
  need("nvmlDeviceGetMemoryInfo", &nvml->DeviceGetMemoryInfo);
  need("nvmlDeviceGetPowerUsage", &nvml->DeviceGetPowerUsage);
  need("nvmlErrorString", &nvml->ErrorString);
  if (missing != nullptr) {
    LogWarn("gpu metrics off: NVML lacks a function",
            {{"library", nvml->library}, {"symbol", missing}});
    return false;
  }
  const NvmlReturn init = nvml->Init();
  if (init != kNvmlSuccess) {
    LogWarn("gpu metrics off: nvmlInit failed",
            {{"library", nvml->library}, {"error", nvml->Error(init)}});
    return false;
  }
  nvml->initialized = true;
  unsigned int count = 0;
  const NvmlReturn counted = nvml->DeviceGetCount(&count);
  if (counted != kNvmlSuccess) {
    LogWarn("gpu metrics off: cannot count GPUs", {{"error", nvml->Error(counted)}});
    return false;
  }

  VisibleGpus visible = visible_ ? *visible_ : VisibleGpusFromEnvironment();
  // The container runtime exposes exactly the devices NVIDIA_VISIBLE_DEVICES lists (renumbered
  // from 0), so when the process sees as many as it lists, they are the ones.
  if (visible.from_container_runtime && !visible.all && visible.ids.size() == count) {
    visible.all = true;
  }
  std::vector<Device> devices;
  auto add = [&](NvmlDevice handle, const std::string& which) {
    std::string uuid = nvml->Uuid(handle, which);
    if (uuid.empty()) return;
    for (const Device& d : devices) {
      if (d.uuid == uuid) return;  // listed twice
    }
    devices.push_back({std::move(uuid), handle});
  };
  auto by_index = [&](unsigned int index) {
    NvmlDevice handle = nullptr;
    const NvmlReturn r = nvml->DeviceGetHandleByIndex(index, &handle);
    if (r != kNvmlSuccess) {
      LogWarn("gpu metrics: cannot open a GPU; not reported",
              {{"index", index}, {"error", nvml->Error(r)}});
      return;
    }
    add(handle, std::to_string(index));
  };
  if (visible.all) {
    for (unsigned int i = 0; i < count; ++i) by_index(i);
  } else {
    for (const std::string& id : visible.ids) {
      if (IsIndex(id)) {
        const unsigned long index = std::stoul(id);
        if (index >= count) {
          LogWarn("gpu metrics: a visible GPU index is out of range; not reported",
                  {{"index", id}, {"gpus", count}});
          continue;
        }
        by_index(static_cast<unsigned int>(index));
        continue;
      }
      NvmlDevice handle = nullptr;
      const NvmlReturn r = nvml->DeviceGetHandleByUUID(id.c_str(), &handle);
      if (r != kNvmlSuccess) {
        LogWarn("gpu metrics: cannot open a visible GPU; not reported",
                {{"uuid", id}, {"error", nvml->Error(r)}});
        continue;
      }
      add(handle, id);
    }
  }
  if (devices.empty()) {
    LogInfo("gpu metrics off: no GPU visible", {{"library", nvml->library}, {"gpus", count}});
    return false;
  }
  std::string uuids;
  for (const Device& d : devices) uuids += (uuids.empty() ? "" : ",") + d.uuid;
  LogInfo("gpu metrics on", {{"library", nvml->library}, {"gpus", uuids}});
  nvml_ = std::move(nvml);
  devices_ = std::move(devices);
  return true;
}

void GpuMonitor::LogQueryErrorLocked(const Device& device, const char* query, int code) {
  // Bounded: devices x queries x error codes.
  if (!logged_errors_.insert(device.uuid + "/" + query + "/" + std::to_string(code)).second) {
    return;
  }
  LogWarn("gpu metrics: NVML query failed; the series is left out",
          {{"gpu", device.uuid}, {"query", query}, {"error", nvml_->Error(code)}});
}

std::vector<GpuReading> GpuMonitor::Sample() {
  std::lock_guard lock(mu_);
  if (!started_) {
    started_ = true;
    StartLocked();
  }
  std::vector<GpuReading> readings;
  if (nvml_ == nullptr) return readings;
  for (const Device& d : devices_) {
    GpuReading reading;
    reading.uuid = d.uuid;
    NvmlUtilization util{};
    if (NvmlReturn r = nvml_->DeviceGetUtilizationRates(d.handle, &util); r == kNvmlSuccess) {
      reading.utilization = std::min(util.gpu, 100u) / 100.0;
    } else {
      LogQueryErrorLocked(d, "nvmlDeviceGetUtilizationRates", r);
    }
    NvmlMemory memory{};
    if (NvmlReturn r = nvml_->DeviceGetMemoryInfo(d.handle, &memory); r == kNvmlSuccess) {
      reading.memory_used_bytes = memory.used;
      reading.memory_total_bytes = memory.total;
    } else {
      LogQueryErrorLocked(d, "nvmlDeviceGetMemoryInfo", r);
    }
    unsigned int milliwatts = 0;
    if (NvmlReturn r = nvml_->DeviceGetPowerUsage(d.handle, &milliwatts); r == kNvmlSuccess) {
      reading.power_watts = milliwatts / 1000.0;
    } else {
      LogQueryErrorLocked(d, "nvmlDeviceGetPowerUsage", r);
    }
    if (reading.utilization || reading.memory_used_bytes || reading.power_watts) {
      readings.push_back(std::move(reading));
    }
  }
  return readings;
}

}  // namespace pdpool::agent
