// PrometheusTargets implementation.
#include "controller/prometheus_targets.h"

namespace pdpool::controller {

Json PrometheusTargets(const std::vector<kube::ObjectPtr>& pods) {
  Json groups = Json::array();
  for (const auto& pod : pods) {
    const std::string pool = JsonStringAt(*pod, {"metadata", "labels", "pdpool.dev/pool"});
    const std::string ip = JsonGet<std::string>(*pod, "/status/podIP", "");
    if (pool.empty() || ip.empty()) continue;
    if (JsonGet<std::string>(*pod, "/status/phase", "") != "Running") continue;
    for (const auto& container : JsonGet<Json>(*pod, "/spec/containers", Json::array())) {
      if (!container.is_object()) continue;
      for (const auto& port : container.value("ports", Json::array())) {
        if (!port.is_object() || port.value("name", "") != "http") continue;
        const int number = port.value("containerPort", 0);
        if (number <= 0) continue;
        groups.push_back(
            {{"targets", Json::array({ip + ":" + std::to_string(number)})},
             {"labels",
              {{"namespace", JsonGet<std::string>(*pod, "/metadata/namespace", "")},
               {"pod", JsonGet<std::string>(*pod, "/metadata/name", "")},
               {"pool", pool},
               {"role", JsonStringAt(*pod, {"metadata", "labels", "pdpool.dev/role"})}}}});
      }
    }
  }
  return groups;
}

}  // namespace pdpool::controller
