// Placement: NVLink-domain capacity from Node/Pod objects, the domain choice, and the worker
// node affinity. Pure functions; thread-safe. Every JSON access is type-checked first, so
// malformed objects from the cache are skipped rather than thrown on.
#include "controller/placement.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <utility>

namespace pdpool::controller {
namespace {

using namespace wellknown;

bool BoolAt(const Json& obj, std::initializer_list<std::string_view> keys) {
  const Json* v = JsonPath(obj, keys);
  return v != nullptr && v->is_boolean() && v->get<bool>();
}

// Quantity rounded to whole units: up for requests (a request of 0.5 GPU still takes one),
// down for capacity.
int64_t WholeUnits(const Json* quantity, bool round_up) {
  int64_t milli = 0;
  if (quantity == nullptr || !ParseQuantityMilli(*quantity, &milli) || milli <= 0) return 0;
  return round_up ? (milli + 999) / 1000 : milli / 1000;
}

int64_t ContainerGpus(const Json& container) {
  // For extended resources requests default to limits, and must equal them when both are set.
  if (const Json* r = JsonPath(container, {"resources", "requests", kGpuResource})) {
    return WholeUnits(r, /*round_up=*/true);
  }
  return WholeUnits(JsonPath(container, {"resources", "limits", kGpuResource}), /*round_up=*/true);
}

bool NodeReady(const Json& node) {
  const Json* conditions = JsonPath(node, {"status", "conditions"});
  if (conditions == nullptr || !conditions->is_array()) return false;
  for (const Json& c : *conditions) {
    if (JsonStringAt(c, {"type"}) == "Ready") return JsonStringAt(c, {"status"}) == "True";
  }
  return false;
}

// Kubernetes toleration semantics (v1.Toleration.ToleratesTaint).
bool Tolerates(const Json& toleration, const Json& taint) {
  const std::string effect = JsonStringAt(toleration, {"effect"});
  if (!effect.empty() && effect != JsonStringAt(taint, {"effect"})) return false;
  const std::string key = JsonStringAt(toleration, {"key"});
  std::string op = JsonStringAt(toleration, {"operator"});
  if (op.empty()) op = "Equal";
  if (op == "Exists") return key.empty() || key == JsonStringAt(taint, {"key"});
  if (op == "Equal") {
    return !key.empty() && key == JsonStringAt(taint, {"key"}) &&
           JsonStringAt(toleration, {"value"}) == JsonStringAt(taint, {"value"});
  }
  return false;
}

bool TaintsTolerated(const Json& node, const Json& tolerations) {
  const Json* taints = JsonPath(node, {"spec", "taints"});
  if (taints == nullptr || !taints->is_array()) return true;
  for (const Json& taint : *taints) {
    const std::string effect = JsonStringAt(taint, {"effect"});
    if (effect != "NoSchedule" && effect != "NoExecute") continue;  // PreferNoSchedule is fine
    bool tolerated = false;
    if (tolerations.is_array()) {
      for (const Json& t : tolerations) {
        if (Tolerates(t, taint)) {
          tolerated = true;
          break;
        }
      }
    }
    if (!tolerated) return false;
  }
  return true;
}

std::vector<int64_t> ReplicaSizes(const PlacementRequest& r) {
  std::vector<int64_t> sizes;
  for (int32_t i = 0; i < r.prefill_replicas; ++i) sizes.push_back(r.prefill_gpus_per_replica);
  for (int32_t i = 0; i < r.decode_replicas; ++i) sizes.push_back(r.decode_gpus_per_replica);
  std::sort(sizes.begin(), sizes.end(), std::greater<>());
  return sizes;
}

// Best-fit decreasing: each replica (largest first) onto the node with the least free GPUs that
// still holds it, ties to the first node by name. Returns how many replicas were placed.
int32_t BinPack(const std::vector<NodeCapacity>& nodes, const std::vector<int64_t>& sizes) {
  std::vector<int64_t> free;
  free.reserve(nodes.size());
  for (const NodeCapacity& n : nodes) free.push_back(n.FreeGpus());
  int32_t placed = 0;
  for (int64_t size : sizes) {
    if (size <= 0) {
      ++placed;
      continue;
    }
    size_t best = free.size();
    for (size_t i = 0; i < free.size(); ++i) {
      if (free[i] >= size && (best == free.size() || free[i] < free[best])) best = i;
    }
    if (best == free.size()) continue;
    free[best] -= size;
    ++placed;
  }
  return placed;
}

std::string DemandText(const PlacementRequest& r) {
  const int64_t total = r.TotalGpus();
  const int32_t replicas = std::max(0, r.prefill_replicas) + std::max(0, r.decode_replicas);
  std::string text = "needs " + std::to_string(total) + " GPUs (";
  if (r.prefill_replicas <= 0 || r.decode_replicas <= 0 ||
      r.prefill_gpus_per_replica == r.decode_gpus_per_replica) {
    const int32_t per =
        r.prefill_replicas > 0 ? r.prefill_gpus_per_replica : r.decode_gpus_per_replica;
    text += std::to_string(replicas) + " replicas × " + std::to_string(per) + ")";
  } else {
    text += std::to_string(r.prefill_replicas) + " prefill × " +
            std::to_string(r.prefill_gpus_per_replica) + " + " + std::to_string(r.decode_replicas) +
            " decode × " + std::to_string(r.decode_gpus_per_replica) + ")";
  }
  return text;
}

std::string DomainText(const DomainCapacity& d) {
  return d.name + " has " + std::to_string(d.free_gpus) + " free on " +
         std::to_string(d.nodes.size()) + (d.nodes.size() == 1 ? " node" : " nodes");
}

// Most free GPUs, ties by name (domains are sorted by name, so the first wins).
const DomainCapacity* Largest(const std::vector<DomainCapacity>& domains) {
  const DomainCapacity* best = nullptr;
  for (const DomainCapacity& d : domains) {
    if (best == nullptr || d.free_gpus > best->free_gpus) best = &d;
  }
  return best;
}

const DomainCapacity* Find(const std::vector<DomainCapacity>& domains, std::string_view name) {
  if (name.empty()) return nullptr;
  for (const DomainCapacity& d : domains) {
    if (d.name == name) return &d;
  }
  return nullptr;
}

std::string NoFitText(const PlacementRequest& r, const PlacementResult& result) {
  std::string text = DemandText(r) + " in one NVLink domain (" + r.topology_key + ")";
  const DomainCapacity* largest = Largest(result.domains);
  if (largest == nullptr) {
    return text + ", but no usable GPU node carries that label (" +
           std::to_string(result.unlabelled_nodes) + " usable GPU nodes without it)";
  }
  text += "; largest domain " + DomainText(*largest);
  if (largest->free_gpus >= result.gpus_needed) {
    // Enough GPUs in total, but split across nodes so that whole replicas do not fit.
    text += ", but at most " + std::to_string(largest->max_free_on_node) +
            " on one node, so only " + std::to_string(largest->replicas_fit) + " of " +
            std::to_string(result.replicas_needed) + " replicas fit";
  }
  if (largest->excluded_nodes > 0) {
    text += " (" + std::to_string(largest->excluded_nodes) +
            " more excluded: NotReady, cordoned or tainted)";
  }
  if (result.domains.size() > 1) {
    text += "; " + std::to_string(result.domains.size()) + " domains in all";
  }
  return text;
}

}  // namespace

TopologyPolicy TopologyPolicyFromString(std::string_view policy) {
  if (policy == "Preferred") return TopologyPolicy::kPreferred;
  if (policy == "None") return TopologyPolicy::kNone;
  return TopologyPolicy::kRequired;
}

std::string_view TopologyPolicyName(TopologyPolicy policy) {
  switch (policy) {
    case TopologyPolicy::kRequired:
      return "Required";
    case TopologyPolicy::kPreferred:
      return "Preferred";
    case TopologyPolicy::kNone:
      return "None";
  }
  return "Required";
}

PlacementRequest MakePlacementRequest(const PoolSpec& spec, std::string pool_namespace,
                                      std::string pool_name, std::string current_domain,
                                      Json tolerations) {
  PlacementRequest r;
  r.topology_key = spec.topology.key.empty() ? kDefaultTopologyKey : spec.topology.key;
  r.policy = TopologyPolicyFromString(spec.topology.policy);
  r.prefill_replicas = spec.prefill.replicas;
  r.prefill_gpus_per_replica = spec.prefill.gpus_per_replica;
  r.decode_replicas = spec.decode.replicas;
  r.decode_gpus_per_replica = spec.decode.gpus_per_replica;
  r.pool_namespace = std::move(pool_namespace);
  r.pool_name = std::move(pool_name);
  r.current_domain = std::move(current_domain);
  r.tolerations = std::move(tolerations);
  if (spec.autoscaling.enabled) {
    r.growth_gpus = int64_t{spec.prefill.max_replicas} * spec.prefill.gpus_per_replica +
                    int64_t{spec.decode.max_replicas} * spec.decode.gpus_per_replica;
    if (spec.autoscaling.gpu_budget > 0)
      r.growth_gpus = std::min<int64_t>(r.growth_gpus, spec.autoscaling.gpu_budget);
  }
  return r;
}

bool ParseQuantityMilli(const Json& quantity, int64_t* milli) {
  constexpr long double kMax = 9.0e18L;
  long double value = 0;
  if (quantity.is_number()) {
    value = quantity.get<long double>() * 1000.0L;
  } else if (quantity.is_string()) {
    const std::string& s = quantity.get_ref<const std::string&>();
    size_t pos = 0;
    bool negative = false;
    if (pos < s.size() && (s[pos] == '+' || s[pos] == '-')) negative = s[pos++] == '-';
    long double number = 0;
    size_t digits = 0;
    while (pos < s.size() && s[pos] >= '0' && s[pos] <= '9') {
      number = number * 10 + (s[pos++] - '0');
      ++digits;
    }
    if (pos < s.size() && s[pos] == '.') {
      ++pos;
      long double scale = 0.1L;
      while (pos < s.size() && s[pos] >= '0' && s[pos] <= '9') {
        number += scale * (s[pos++] - '0');
        scale /= 10;
        ++digits;
      }
    }
    if (digits == 0) return false;
    const std::string suffix = s.substr(pos);
    static const std::map<std::string, long double> kMultipliers = {{"", 1.0L},
                                                                    {"m", 1e-3L},
                                                                    {"k", 1e3L},
                                                                    {"M", 1e6L},
                                                                    {"G", 1e9L},
                                                                    {"T", 1e12L},
                                                                    {"P", 1e15L},
                                                                    {"E", 1e18L},
                                                                    {"Ki", 1024.0L},
                                                                    {"Mi", 1048576.0L},
                                                                    {"Gi", 1073741824.0L},
                                                                    {"Ti", 1099511627776.0L},
                                                                    {"Pi", 1125899906842624.0L},
                                                                    {"Ei", 1152921504606846976.0L}};
    auto it = kMultipliers.find(suffix);
    if (it == kMultipliers.end()) return false;
    value = number * it->second * 1000.0L;
    if (negative) value = -value;
  } else {
    return false;
  }
  if (!std::isfinite(value) || value > kMax || value < -kMax) return false;
  *milli = static_cast<int64_t>(std::ceil(value - 1e-6L));
  return true;
}

int64_t PodGpuRequest(const Json& pod) {
  int64_t sum = 0;
  if (const Json* containers = JsonPath(pod, {"spec", "containers"});
      containers && containers->is_array()) {
    for (const Json& c : *containers) sum += ContainerGpus(c);
  }
  int64_t init_max = 0;
  if (const Json* init = JsonPath(pod, {"spec", "initContainers"}); init && init->is_array()) {
    for (const Json& c : *init) init_max = std::max(init_max, ContainerGpus(c));
  }
  return std::max(sum, init_max);
}

PlacementResult ChoosePlacement(const std::vector<Json>& nodes, const std::vector<Json>& pods,
                                const PlacementRequest& request) {
  std::vector<const Json*> node_ptrs;
  std::vector<const Json*> pod_ptrs;
  for (const Json& n : nodes) node_ptrs.push_back(&n);
  for (const Json& p : pods) pod_ptrs.push_back(&p);
  return ChoosePlacement(node_ptrs, pod_ptrs, request);
}

PlacementResult ChoosePlacement(const std::vector<const Json*>& nodes,
                                const std::vector<const Json*>& pods,
                                const PlacementRequest& request) {
  PlacementResult result;
  result.gpus_needed = request.TotalGpus();
  const std::vector<int64_t> sizes = ReplicaSizes(request);
  result.replicas_needed = static_cast<int32_t>(sizes.size());

  // Usable GPU nodes by name, and which domain each belongs to ("" when unlabelled).
  std::map<std::string, DomainCapacity> by_domain;
  std::map<std::string, std::pair<std::string, NodeCapacity>> usable;
  for (const Json* node_ptr : nodes) {
    const Json& node = *node_ptr;
    const std::string name = JsonStringAt(node, {"metadata", "name"});
    if (name.empty()) continue;
    const std::string domain = JsonStringAt(node, {"metadata", "labels", request.topology_key});
    if (!domain.empty()) by_domain[domain].name = domain;
    const bool ok = NodeReady(node) && !BoolAt(node, {"spec", "unschedulable"}) &&
                    TaintsTolerated(node, request.tolerations);
    if (!ok) {
      if (!domain.empty()) ++by_domain[domain].excluded_nodes;
      continue;
    }
    const int64_t gpus =
        WholeUnits(JsonPath(node, {"status", "allocatable", kGpuResource}), /*round_up=*/false);
    if (gpus <= 0) continue;
    usable[name] = {domain, NodeCapacity{name, gpus, 0}};
  }

  for (const Json* pod_ptr : pods) {
    const Json& pod = *pod_ptr;
    const std::string node_name = JsonStringAt(pod, {"spec", "nodeName"});
    if (node_name.empty()) continue;  // unbound: holds no node's GPUs yet
    auto it = usable.find(node_name);
    if (it == usable.end()) continue;
    const std::string phase = JsonStringAt(pod, {"status", "phase"});
    if (phase == "Succeeded" || phase == "Failed") continue;
    if (!request.pool_name.empty() &&
        JsonStringAt(pod, {"metadata", "namespace"}) == request.pool_namespace &&
        JsonStringAt(pod, {"metadata", "labels", kPoolLabel}) == request.pool_name) {
      continue;  // ours: being placed, so its GPUs count as available
    }
    it->second.second.used_gpus += PodGpuRequest(pod);
  }

  for (auto& [name, entry] : usable) {  // map order: nodes end up sorted by name
    if (entry.first.empty()) {
      ++result.unlabelled_nodes;
      continue;
    }
    DomainCapacity& d = by_domain[entry.first];
    d.allocatable_gpus += entry.second.allocatable_gpus;
    d.free_gpus += entry.second.FreeGpus();
    d.max_free_on_node = std::max(d.max_free_on_node, entry.second.FreeGpus());
    d.nodes.push_back(std::move(entry.second));
  }
  for (auto& [name, d] : by_domain) {
    d.replicas_fit = BinPack(d.nodes, sizes);
    d.fits = d.replicas_fit == result.replicas_needed;
    result.domains.push_back(std::move(d));
  }

  if (request.policy == TopologyPolicy::kNone) {
    result.fits = true;
    result.reason = "NotPinned";
    int64_t free = 0;
    for (const DomainCapacity& d : result.domains) free += d.free_gpus;
    result.message = "topology policy None: workers are not pinned to a domain; " +
                     DemandText(request) + "; " + std::to_string(free) + " free across " +
                     std::to_string(result.domains.size()) + " domains";
    if (const DomainCapacity* largest = Largest(result.domains)) {
      result.message += " (largest " + DomainText(*largest) + ")";
    }
    return result;
  }

  const DomainCapacity* chosen = nullptr;
  bool kept = false;
  bool growth = false;
  if (const DomainCapacity* current = Find(result.domains, request.current_domain);
      current != nullptr && current->fits) {
    chosen = current;
    kept = true;
  } else if (request.growth_gpus > result.gpus_needed) {
    for (const DomainCapacity& d : result.domains) {
      if (d.fits && d.free_gpus >= request.growth_gpus &&
          (chosen == nullptr || d.free_gpus < chosen->free_gpus))
        chosen = &d;
    }
    if (chosen == nullptr) {
      for (const DomainCapacity& d : result.domains) {
        if (d.fits && (chosen == nullptr || d.free_gpus > chosen->free_gpus)) chosen = &d;
      }
    }
    growth = chosen != nullptr;
  } else {
    for (const DomainCapacity& d : result.domains) {
      if (d.fits && (chosen == nullptr || d.free_gpus < chosen->free_gpus)) chosen = &d;
    }
  }

  if (chosen != nullptr) {
    result.fits = true;
    result.domain = chosen->name;
    result.reason = "Placed";
    result.message = "placed in " + chosen->name + ": " + DemandText(request) + "; " +
                     DomainText(*chosen) +
                     (kept     ? " (current domain kept)"
                      : growth ? " (room to grow to " + std::to_string(request.growth_gpus) +
                                     " GPUs)"
                               : " (best fit)");
    return result;
  }

  if (result.gpus_needed <= 0 && result.replicas_needed == 0) {
    // Scaled to zero with no domain to name: nothing to place, nothing wrong.
    result.fits = true;
    result.domain = request.current_domain;
    result.reason = "Placed";
    result.message = "no replicas to place";
    return result;
  }

  result.fits = false;
  result.reason = result.domains.empty() ? "NoTopologyDomains" : "InsufficientGpus";
  result.message = NoFitText(request, result);
  if (request.policy == TopologyPolicy::kPreferred) {
    // A preference still packs as much as fits into one domain; stay put if we can.
    const DomainCapacity* current = Find(result.domains, request.current_domain);
    const DomainCapacity* target = current != nullptr ? current : Largest(result.domains);
    if (target != nullptr) {
      result.domain = target->name;
      result.message += "; preferring " + target->name;
    }
  }
  return result;
}

Json WorkerAffinity(std::string_view topology_key, std::string_view domain, TopologyPolicy policy) {
  if (policy == TopologyPolicy::kNone || domain.empty() || topology_key.empty()) return nullptr;
  const Json selector = {{"matchExpressions", Json::array({{{"key", topology_key},
                                                            {"operator", "In"},
                                                            {"values", Json::array({domain})}}})}};
  if (policy == TopologyPolicy::kRequired) {
    return {{"nodeAffinity",
             {{"requiredDuringSchedulingIgnoredDuringExecution",
               {{"nodeSelectorTerms", Json::array({selector})}}}}}};
  }
  return {{"nodeAffinity",
           {{"preferredDuringSchedulingIgnoredDuringExecution",
             Json::array({{{"weight", 100}, {"preference", selector}}})}}}};
}

}  // namespace pdpool::controller
