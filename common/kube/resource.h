// ResourceType: which Kubernetes API collection an operation addresses (group, version,
// plural resource, kind, scope), and the well-known types pdpool uses. Immutable values.
#pragma once

#include <string>
#include <string_view>

namespace pdpool::kube {

struct ResourceType {
  std::string group;     // "" for the core group
  std::string version;   // "v1"
  std::string resource;  // plural, lower case: "replicasets"
  std::string kind;      // "ReplicaSet"
  bool namespaced = true;

  std::string ApiVersion() const { return group.empty() ? version : group + "/" + version; }
  // "/api/v1" or "/apis/apps/v1"
  std::string GroupVersionPath() const {
    return group.empty() ? "/api/" + version : "/apis/" + group + "/" + version;
  }
  // Collection path; ns empty means all namespaces (or a cluster-scoped type).
  std::string CollectionPath(std::string_view ns) const {
    std::string p = GroupVersionPath();
    if (namespaced && !ns.empty()) p += "/namespaces/" + std::string(ns);
    return p + "/" + resource;
  }
  std::string ObjectPath(std::string_view ns, std::string_view name) const {
    return CollectionPath(ns) + "/" + std::string(name);
  }
};

inline const ResourceType kPods{"", "v1", "pods", "Pod", true};
inline const ResourceType kNodes{"", "v1", "nodes", "Node", false};
inline const ResourceType kServices{"", "v1", "services", "Service", true};
inline const ResourceType kSecrets{"", "v1", "secrets", "Secret", true};
inline const ResourceType kEvents{"", "v1", "events", "Event", true};
inline const ResourceType kNamespaces{"", "v1", "namespaces", "Namespace", false};
inline const ResourceType kReplicaSets{"apps", "v1", "replicasets", "ReplicaSet", true};
inline const ResourceType kDeployments{"apps", "v1", "deployments", "Deployment", true};
inline const ResourceType kLeases{"coordination.k8s.io", "v1", "leases", "Lease", true};
inline const ResourceType kInferencePools{"pdpool.dev", "v1alpha1", "inferencepools",
                                          "InferencePool", true};

}  // namespace pdpool::kube
