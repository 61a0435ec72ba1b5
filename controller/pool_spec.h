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

// One worker role (prefill or decode). ParsePoolSpec fills absent min/max from replicas:
// minReplicas defaults to min(replicas, maxReplicas), maxReplicas to max(replicas,
// minReplicas), so a pool that names only replicas runs a fixed count.
struct RoleSpec {
  int32_t replicas = 1;
  int32_t gpus_per_replica = 1;
  int32_t min_replicas = 1;
  int32_t max_replicas = 1;

  bool operator==(const RoleSpec&) const = default;
};

struct ModelSpec {
  std::string name;    // served model name
  std::string preset;  // test-tiny | llama-3.2-1b | llama-3.1-8b | llama-3.1-70b | llama-3.1-405b
  std::string source_path;            // safetensors directory, or empty
  std::optional<int64_t> dummy_seed;  // dummy weights from this seed

  bool operator==(const ModelSpec&) const = default;
};

struct SloSpec {
  double ttft_seconds = 2.0;
  double tpot_seconds = 0.1;
  int32_t percentile = 90;

  bool operator==(const SloSpec&) const = default;
};

struct AutoscalingSpec {
  bool enabled = false;
  double interval_seconds = 15;
  int32_t gpu_budget = 0;      // 0: no budget beyond the domain's free GPUs
  std::string prometheus_url;  // empty: scrape pods directly
  double scale_down_stabilization_seconds = 300;
  std::string rebalance = "InPlace";  // InPlace | Recreate | Off

  bool operator==(const AutoscalingSpec&) const = default;
};

struct TopologySpec {
  std::string key = "nvidia.com/gpu.clique";
  std::string policy = "Required";  // Required | Preferred | None

  bool operator==(const TopologySpec&) const = default;
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
  // GPUs the minimum replica counts hold: what a non-zero gpuBudget must cover. 64-bit so that
  // an unvalidated spec cannot overflow it.
  int64_t MinTotalGpus() const {
    return int64_t{prefill.min_replicas} * prefill.gpus_per_replica +
           int64_t{decode.min_replicas} * decode.gpus_per_replica;
  }

  bool operator==(const PoolSpec&) const = default;
};

// A field the schema accepts but that makes no sense. `field` is the JSON path
// ("spec.prefill.minReplicas"), `message` names the limit.
struct SpecError {
  std::string field;
  std::string message;
};

// Parses spec (the object at .spec) with the CRD's defaults for absent fields. Returns
// InvalidArgument naming the field for type errors (possible when the CRD is absent or old)
// and for malformed durations. A null spec parses as an empty one (ValidatePoolSpec then
// reports the missing model). Durations may also be JSON numbers (seconds).
StatusOr<PoolSpec> ParsePoolSpec(const Json& spec);

// Every spec field ParsePoolSpec reads, as JSON paths ("spec.slo.ttft"), in reading order; the
// CRD agreement test checks each against the schema.
std::vector<std::string> PoolSpecFieldPaths();

// Cross-field and semantic checks the schema cannot express on Kubernetes 1.20 (no CEL):
// min <= replicas <= max, known preset, durations > 0, ... plus every range and enum the
// schema has, since a pool may have been stored before the CRD. Returns every problem (empty
// when valid), in field order.
std::vector<SpecError> ValidatePoolSpec(const PoolSpec& spec);

// Known model presets (names accepted in spec.model.preset).
const std::vector<std::string>& KnownPresets();

// Parses a Kubernetes-style duration: "2s", "100ms", "1m30s", "1.5h", "300s" (units ms, s, m,
// h; each number digits with an optional fraction), or a bare number of seconds ("2", "0.5").
// Returns false on malformed input (empty, negative, unknown unit, "1.s", ".5s").
bool ParseDurationSeconds(const std::string& text, double* seconds);

}  // namespace pdpool::controller
