// ControllerMetrics: the controller's Prometheus metrics (names are the contract in
// ../shared/TARGETS.md). Thread-safe (prometheus-cpp metrics are atomic).
#pragma once

#include <memory>
#include <string>

namespace prometheus {
class Registry;
class Counter;
class Gauge;
class Histogram;
template <typename T>
class Family;
}  // namespace prometheus

namespace pdpool::controller {

class ControllerMetrics {
 public:
  ControllerMetrics();
  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  // result: success | error | requeue | invalid
  void ObserveReconcile(const std::string& result, double seconds);
  void SetQueueDepth(double depth);
  void SetLeader(bool leader);
  void SetPools(double pools);

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>* reconcile_total_;
  prometheus::Histogram* reconcile_seconds_;
  prometheus::Gauge* queue_depth_;
  prometheus::Gauge* leader_;
  prometheus::Gauge* pools_;
};

}  // namespace pdpool::controller
