// GPU catalog: the datasheet table and the name/label matching.
#include "agent/engine/sim/gpu_catalog.h"

#include <array>
#include <cctype>

namespace pdpool::agent {
namespace {

constexpr double kGB = 1e9;
constexpr double kTB = 1e12;

const std::array<GpuSpec, 4>& Catalog() {
  static const std::array<GpuSpec, 4> catalog = {{
      {"H100", 80 * kGB, 3.35 * kTB, 989 * kTB, 900 * kGB},
      {"H200", 141 * kGB, 4.8 * kTB, 989 * kTB, 900 * kGB},
      {"B200", 180 * kGB, 7.7 * kTB, 2250 * kTB, 1800 * kGB},
      {"GB200", 186 * kGB, 8.0 * kTB, 2500 * kTB, 1800 * kGB},
  }};
  return catalog;
}

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

}  // namespace

StatusOr<GpuSpec> LookupGpu(std::string_view name) {
  const std::string lower = Lower(name);
  // Order matters: "gb200" contains "b200". GH200 (Grace Hopper) contains "h200" but is a
  // different card (other HBM size and rate): not in the catalog.
  static constexpr std::array<std::pair<std::string_view, std::string_view>, 4> kTokens = {
      {{"gb200", "GB200"}, {"b200", "B200"}, {"h200", "H200"}, {"h100", "H100"}}};
  if (lower.find("gh200") == std::string::npos) {
    for (const auto& [token, canonical] : kTokens) {
      if (lower.find(token) == std::string::npos) continue;
      for (const GpuSpec& spec : Catalog()) {
        if (spec.name == canonical) return spec;
      }
    }
  }
  std::string known;
  for (const std::string& n : KnownGpuNames()) known += (known.empty() ? "" : ", ") + n;
  return Status::InvalidArgument("unknown GPU \"" + std::string(name) + "\"; known: " + known +
                                 " (or their nvidia.com/gpu.product labels, e.g. NVIDIA-H200)");
}

std::vector<std::string> KnownGpuNames() {
  std::vector<std::string> names;
  for (const GpuSpec& spec : Catalog()) names.push_back(spec.name);
  return names;
}

}  // namespace pdpool::agent
