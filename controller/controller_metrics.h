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
  // The planner's view of one pool (labels namespace, pool; role prefill|decode; decision one
  // of DecisionKindName's values).
  void RecordPlannerDecision(const std::string& ns, const std::string& pool,
                             const std::string& decision, int prefill, int decode,
                             double predicted_request_rate);
  // A deleted pool's planner series go away.
  void ForgetPool(const std::string& ns, const std::string& pool);

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>* reconcile_total_;
  prometheus::Histogram* reconcile_seconds_;
  prometheus::Gauge* queue_depth_;
  prometheus::Gauge* leader_;
  prometheus::Gauge* pools_;
  prometheus::Family<prometheus::Gauge>* planner_desired_;
  prometheus::Family<prometheus::Counter>* planner_decisions_;
  prometheus::Family<prometheus::Gauge>* planner_predicted_rate_;
};

}  // namespace pdpool::controller
