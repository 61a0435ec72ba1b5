// GPU catalog: datasheet ceilings (HBM size and bandwidth, dense bf16 FLOP/s, NVLink) of the
// GPUs the sim backend and the planner model, looked up by name or by the
// nvidia.com/gpu.product node label. Plain values and pure functions; thread-safe.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace pdpool::agent {

// Per GPU, datasheet values (TARGETS.md "Hardware"). What a kernel really reaches is the
// calibration's business (calibration.h), not the catalog's.
struct GpuSpec {
  std::string name;             // canonical: "H100", "H200", "B200", "GB200"
  double hbm_bytes = 0;         // bytes of HBM
  double hbm_bandwidth = 0;     // bytes/s
  double bf16_flops = 0;        // dense bf16 FLOP/s
  double nvlink_bandwidth = 0;  // bytes/s, both directions together (one direction: half)
};

// Accepts the canonical names case-insensitively ("h200") and the nvidia.com/gpu.product label
// forms ("NVIDIA-H100-80GB-HBM3", "NVIDIA-H200", "NVIDIA-B200", "NVIDIA-GB200"): the name is
// matched by the token it contains (gb200 before b200). H100 PCIe/NVL labels map to the SXM
// values (an overestimate for those cards). Unknown → InvalidArgument listing the known names.
StatusOr<GpuSpec> LookupGpu(std::string_view name);

// Canonical names, in catalog order.
std::vector<std::string> KnownGpuNames();

}  // namespace pdpool::agent
