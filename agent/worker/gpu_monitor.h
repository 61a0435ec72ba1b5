// GpuMonitor: utilization, memory and power of the GPUs a worker process sees, read through
// NVML. NVML (libnvidia-ml.so.1, part of the driver) is dlopen()ed at run time, so builds and
// CPU-only machines need no driver: where it is absent, or fails, Sample() returns nothing and
// the failure is logged once. Thread-safe (one mutex around NVML calls).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace pdpool::agent {

// One GPU at one moment. A field NVML could not read (NVML_ERROR_NOT_SUPPORTED on a MIG
// instance or on boards without a power sensor, or any other error) is empty.
struct GpuReading {
  std::string uuid;                   // "GPU-..." (or "MIG-..."): the `gpu` label
  std::optional<double> utilization;  // 0..1, busy share of NVML's last sample period
  std::optional<uint64_t> memory_used_bytes;
  std::optional<uint64_t> memory_total_bytes;
  std::optional<double> power_watts;
};

// Which GPUs a process sees, from CUDA_VISIBLE_DEVICES (which wins when set, even empty) or
// else NVIDIA_VISIBLE_DEVICES: comma lists of indices or UUIDs; unset or "all": every device;
// "none", "void" or empty: none. As in CUDA, the list ends at its first entry that is neither
// an index nor a UUID ("GPU-..."/"MIG-..."), so "-1" means none. Indices are NVML's (PCI bus
// order): CUDA's too with CUDA_DEVICE_ORDER=PCI_BUS_ID, and on machines of one GPU model; UUIDs
// are exact everywhere.
struct VisibleGpus {
  bool all = false;
  std::vector<std::string> ids;  // in order, when !all
  // True when the list came from NVIDIA_VISIBLE_DEVICES: the container runtime applies it
  // before the process starts, so its indices are the host's.
  bool from_container_runtime = false;
};
// Arguments: the variables' values, nullptr when unset.
VisibleGpus ParseVisibleGpus(const char* cuda_visible_devices, const char* nvidia_visible_devices);
// From this process's environment.
VisibleGpus VisibleGpusFromEnvironment();

class GpuMonitor {
 public:
  static constexpr std::string_view kDefaultLibrary = "libnvidia-ml.so.1";

  // `library`: the NVML shared library to dlopen; empty means $PDPOOL_NVML_LIBRARY, else
  // kDefaultLibrary. `visible`: the GPUs to report; nullopt means VisibleGpusFromEnvironment().
  // Nothing is loaded until the first Sample(), so a worker that is never scraped never
  // touches the driver.
  explicit GpuMonitor(std::string library = "", std::optional<VisibleGpus> visible = std::nullopt);
  ~GpuMonitor();
  GpuMonitor(const GpuMonitor&) = delete;
  GpuMonitor& operator=(const GpuMonitor&) = delete;

  // One reading per visible GPU with at least one field read, in the order of VisibleGpus
  // (device order for "all"). Empty when NVML is absent or failed to start; a start that failed
  // is not retried.
  std::vector<GpuReading> Sample();

  // Whether NVML is loaded and started (after the first Sample()).
  bool available() const;

 private:
  struct Nvml;  // the library handle and its resolved functions
  struct Device {
    std::string uuid;
    void* handle = nullptr;  // nvmlDevice_t
  };

  // Loads NVML and resolves the visible devices; mu_ held. Logs and returns false on failure.
  bool StartLocked();
  // Logs a query's failure once per (device, query, error); mu_ held.
  void LogQueryErrorLocked(const Device& device, const char* query, int code);

  const std::string library_;
  const std::optional<VisibleGpus> visible_;

  mutable std::mutex mu_;
  bool started_ = false;        // StartLocked() ran
  std::unique_ptr<Nvml> nvml_;  // null when not available
  std::vector<Device> devices_;
  std::set<std::string> logged_errors_;
};

}  // namespace pdpool::agent
