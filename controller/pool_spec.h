// PoolSpec: the typed view of an InferencePool's spec (pdpool.dev/v1alpha1), parsed from the
// JSON object the API server returns, with schema defaults applied and cross-field rules
// checked. The CRD schema in crds/ and this parser must agree field for field.
// Plain values; no shared state.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/json.h"
#include "common/status.h"

namespace pdpool::controller {

struct RoleSpec {
  int32_t replicas = 1;
  int32_t gpus_per_replica = 1;
  int32_t min_replicas = 1;
  int32_t max_replicas = 1;
};

struct ModelSpec {
  std::string name;         // served model name
  std::string preset;       // test-tiny | llama-3.2-1b | llama-3.1-8b | llama-3.1-70b | llama-3.1-405b
  std::string source_path;  // safetensors directory, or empty
  std::optional<int64_t> dummy_seed;  // dummy weights from this seed
};

struct SloSpec {
  double ttft_seconds = 2.0;
  double tpot_seconds = 0.1;
  int32_t percentile = 90;
};

struct AutoscalingSpec {
  bool enabled = false;
  double interval_seconds = 15;
  int32_t gpu_budget = 0;  // 0: no budget beyond the domain's free GPUs
  std::string prometheus_url;  // empty: scrape pods directly
  double scale_down_stabilization_seconds = 300;
  std::string rebalance = "InPlace";  // InPlace | Recreate | Off
};

struct TopologySpec {
  std::string key = "nvidia.com/gpu.clique";
  std::string policy = "Required";  // Required | Preferred | None
};

struct PoolSpec {
  ModelSpec model;
  std::string image = "ghcr.io/pdpool/agent:0.1.0";
  std::string backend = "cuda";  // cuda | cpu | sim
  RoleSpec prefill;
  RoleSpec decode;
  int32_t router_replicas = 1;
  Json template_overrides = Json::object();  // spec.template: a partial PodTemplateSpec
  SloSpec slo;
  AutoscalingSpec autoscaling;
  TopologySpec topology;
  std::string kv_transport = "auto";  // auto | nccl | cuda-ipc | tcp

  int32_t TotalGpus() const {
    return prefill.replicas * prefill.gpus_per_replica + decode.replicas * decode.gpus_per_replica;
  }
};

// A field the schema accepts but that makes no sense. `field` is the JSON path
// ("spec.prefill.minReplicas"), `message` names the limit.
struct SpecError {
  std::string field;
  std::string message;
};

// Parses spec (the object at .spec) with the CRD's defaults for absent fields. Returns
// InvalidArgument naming the field for type errors (possible when the CRD is absent or old).
StatusOr<PoolSpec> ParsePoolSpec(const Json& spec);

// Cross-field and semantic checks the schema cannot express on Kubernetes 1.20 (no CEL):
// min <= replicas <= max, known preset, durations > 0, ... Empty when valid.
std::vector<SpecError> ValidatePoolSpec(const PoolSpec& spec);

// Known model presets (names accepted in spec.model.preset).
const std::vector<std::string>& KnownPresets();

// Parses a Kubernetes-style duration: "2s", "100ms", "1m30s", "300s", or a bare number of
// seconds. Returns false on malformed input.
bool ParseDurationSeconds(const std::string& text, double* seconds);

}  // namespace pdpool::controller
