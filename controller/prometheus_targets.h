// PrometheusTargets: the pools' pods as a Prometheus HTTP service-discovery document
// (http_sd_configs), served by the controller at /prometheus/targets. One target per running pod
// labelled pdpool.dev/pool with a pod IP, at its container port named `http` (workers :8000,
// routers :8080), labelled namespace, pod, pool and role — the same labels the Helm chart's
// PodMonitor gives the series on a cluster where Prometheus discovers pods itself. This is for
// Prometheus builds without Kubernetes discovery (Debian's) and for the local rack.
// Pure function; thread-safe.
#pragma once

#include <vector>

#include "common/json.h"
#include "common/kube/informer.h"

namespace pdpool::controller {

inline constexpr char kPrometheusTargetsPath[] = "/prometheus/targets";

Json PrometheusTargets(const std::vector<kube::ObjectPtr>& pods);

}  // namespace pdpool::controller
