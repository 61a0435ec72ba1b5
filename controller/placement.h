// Placement: which NVLink domain (nodes sharing the topology label, `nvidia.com/gpu.clique` by
// default) an InferencePool's GPU workers go to, computed from Node and Pod objects as the
// informer cache holds them, and the node affinity that pins worker pods there.
// Pure functions over values; no shared state, safe to call from any thread.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/json.h"
#include "controller/pool_spec.h"

namespace pdpool::controller {

// Names shared by placement and desired state. In their own namespace so that a translation unit
// including other controller headers that define the same constants still compiles.
namespace wellknown {
inline constexpr char kGpuResource[] = "nvidia.com/gpu";
inline constexpr char kDefaultTopologyKey[] = "nvidia.com/gpu.clique";
// On every object and pod of a pool: the pool's name.
inline constexpr char kPoolLabel[] = "pdpool.dev/pool";
}  // namespace wellknown

enum class TopologyPolicy { kRequired, kPreferred, kNone };

// "Required" | "Preferred" | "None". Anything else maps to kRequired, the schema default and the
// safe choice (ValidatePoolSpec reports unknown values as a spec error).
TopologyPolicy TopologyPolicyFromString(std::string_view policy);
std::string_view TopologyPolicyName(TopologyPolicy policy);

// What the pool asks for.
struct PlacementRequest {
  std::string topology_key = wellknown::kDefaultTopologyKey;
  TopologyPolicy policy = TopologyPolicy::kRequired;
  int32_t prefill_replicas = 0;
  int32_t prefill_gpus_per_replica = 0;
  int32_t decode_replicas = 0;
  int32_t decode_gpus_per_replica = 0;
  // The pool's identity: its own pods (label pdpool.dev/pool=<pool_name> in pool_namespace)
  // are not counted as using GPUs, since they are the ones being placed.
  std::string pool_namespace;
  std::string pool_name;
  // status.placement.domain; kept while it still fits, so a pool does not migrate needlessly.
  std::string current_domain;
  // GPUs an autoscaled pool may grow to (its maximum replicas, capped by its GPU budget); 0 for
  // a fixed-size pool. A pool choosing a domain prefers one with room for this much.
  int64_t growth_gpus = 0;
  // The worker pods' tolerations (spec.tolerations of the worker pod template, an array or
  // null). A node with a NoSchedule/NoExecute taint is usable only if these tolerate it.
  Json tolerations = Json::array();

  int64_t TotalGpus() const {
    return int64_t{prefill_replicas} * prefill_gpus_per_replica +
           int64_t{decode_replicas} * decode_gpus_per_replica;
  }
};

// Fills a request from the parsed spec and the pool's identity.
PlacementRequest MakePlacementRequest(const PoolSpec& spec, std::string pool_namespace,
                                      std::string pool_name, std::string current_domain,
                                      Json tolerations = Json::array());

struct NodeCapacity {
  std::string name;
  int64_t allocatable_gpus = 0;  // status.allocatable["nvidia.com/gpu"]
  int64_t used_gpus = 0;         // requested by other pools' and other users' live pods
  int64_t FreeGpus() const {
    return allocatable_gpus > used_gpus ? allocatable_gpus - used_gpus : 0;
  }
};

struct DomainCapacity {
  std::string name;                 // the topology label's value
  std::vector<NodeCapacity> nodes;  // usable nodes with GPUs, sorted by name
  int32_t excluded_nodes = 0;       // labelled nodes that are NotReady, cordoned or tainted
  int64_t allocatable_gpus = 0;
  int64_t free_gpus = 0;
  int64_t max_free_on_node = 0;
  int32_t replicas_fit = 0;  // how many of the request's replicas bin-pack onto the nodes
  bool fits = false;         // all of them do
};

struct PlacementResult {
  // Required/Preferred: a domain was found that fits the whole pool. None: always true.
  bool fits = false;
  // Where to pin workers. Empty when the policy is None, or when nothing fits under Required.
  // Under Preferred with nothing fitting it is the current domain if that still exists, else
  // the one with the most free GPUs: a preference packs as much as fits into one domain.
  std::string domain;
  int64_t gpus_needed = 0;
  int32_t replicas_needed = 0;
  std::vector<DomainCapacity> domains;  // every domain seen, sorted by name
  int32_t unlabelled_nodes = 0;         // usable GPU nodes without the topology label
  // CamelCase, for a condition: Placed | InsufficientGpus | NoTopologyDomains | NotPinned.
  std::string reason;
  // For people: the choice, or why nothing fits, with the numbers.
  std::string message;
};

// Chooses a domain. `nodes` and `pods` are Node and Pod objects (JSON, as the API server returns
// them); malformed entries are skipped, never thrown on. Per-domain capacity counts usable nodes
// (Ready=True, not unschedulable, every NoSchedule/NoExecute taint tolerated) and their
// allocatable GPUs minus the GPU requests of non-terminated pods bound to them, other than the
// pool's own. A domain fits when the replicas bin-pack onto its nodes (largest first, each onto
// the node with the least free GPUs that still holds it), since one replica's GPUs must share a
// node. Choice: the current domain if it still fits, else the fitting domain with the fewest
// free GPUs (best fit; ties by name). An autoscaled pool (growth_gpus above its size) choosing a
// domain takes the best fit among the fitting domains with room to grow to growth_gpus, else
// the fitting domain with the most free GPUs: placed by its current size alone it would land in
// the smallest domain and have nowhere to grow.
PlacementResult ChoosePlacement(const std::vector<Json>& nodes, const std::vector<Json>& pods,
                                const PlacementRequest& request);
// The same over borrowed objects (the informer caches' snapshots), without copying them.
PlacementResult ChoosePlacement(const std::vector<const Json*>& nodes,
                                const std::vector<const Json*>& pods,
                                const PlacementRequest& request);

// The pod-template `affinity` for workers pinned to `domain`: Required → a
// requiredDuringSchedulingIgnoredDuringExecution node selector term `key In [domain]`;
// Preferred → a preferredDuringSchedulingIgnoredDuringExecution term of weight 100; None, or an
// empty domain → null (no affinity).
Json WorkerAffinity(std::string_view topology_key, std::string_view domain, TopologyPolicy policy);

// Helpers shared with tests and the reconciler.
// GPUs a pod requests as the scheduler counts them: max(sum over containers, max over init
// containers), each container's requests (or limits, when requests omit it) of nvidia.com/gpu.
int64_t PodGpuRequest(const Json& pod);
// Parses a resource quantity ("4", 4, "4000m", "1k", "2Ki") into thousandths; false if malformed.
bool ParseQuantityMilli(const Json& quantity, int64_t* milli);

}  // namespace pdpool::controller
