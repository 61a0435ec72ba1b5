// ControllerMetrics implementation.
#include "controller/controller_metrics.h"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

namespace pdpool::controller {

ControllerMetrics::ControllerMetrics() : registry_(std::make_shared<prometheus::Registry>()) {
  reconcile_total_ = &prometheus::BuildCounter()
                          .Name("pdpool_controller_reconcile_total")
                          .Help("InferencePool reconciles by result.")
                          .Register(*registry_);
  for (const char* r : {"success", "error", "requeue", "invalid"})
    reconcile_total_->Add({{"result", r}});
  reconcile_seconds_ =
      &prometheus::BuildHistogram()
           .Name("pdpool_controller_reconcile_seconds")
           .Help("Time to reconcile one InferencePool.")
           .Register(*registry_)
           .Add({}, prometheus::Histogram::BucketBoundaries{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                            0.1, 0.25, 0.5, 1, 2.5, 5});
  queue_depth_ = &prometheus::BuildGauge()
                      .Name("pdpool_controller_workqueue_depth")
                      .Help("Pools waiting in the work queue.")
                      .Register(*registry_)
                      .Add({});
  leader_ = &prometheus::BuildGauge()
                 .Name("pdpool_controller_leader")
                 .Help("1 when this replica holds the leader lease.")
                 .Register(*registry_)
                 .Add({});
  pools_ = &prometheus::BuildGauge()
                .Name("pdpool_controller_pools")
                .Help("InferencePools in the informer cache.")
                .Register(*registry_)
                .Add({});
  planner_desired_ = &prometheus::BuildGauge()
                          .Name("pdpool_planner_desired_replicas")
                          .Help("Replicas the planner wants, by pool and role.")
                          .Register(*registry_);
  planner_decisions_ =
      &prometheus::BuildCounter()
           .Name("pdpool_planner_decisions_total")
           .Help(
               "Planner decisions by pool and kind (scale_up, scale_down, rebalance, hold, "
               "pending, no_metrics).")
           .Register(*registry_);
  planner_predicted_rate_ = &prometheus::BuildGauge()
                                 .Name("pdpool_planner_predicted_request_rate")
                                 .Help("Requests/s the planner forecasts for its next interval.")
                                 .Register(*registry_);
}

void ControllerMetrics::ObserveReconcile(const std::string& result, double seconds) {
  reconcile_total_->Add({{"result", result}}).Increment();
  reconcile_seconds_->Observe(seconds);
}

void ControllerMetrics::SetQueueDepth(double depth) { queue_depth_->Set(depth); }
void ControllerMetrics::SetLeader(bool leader) { leader_->Set(leader ? 1 : 0); }
void ControllerMetrics::SetPools(double pools) { pools_->Set(pools); }

void ControllerMetrics::RecordPlannerDecision(const std::string& ns, const std::string& pool,
                                              const std::string& decision, int prefill, int decode,
                                              double predicted_request_rate) {
  planner_decisions_->Add({{"namespace", ns}, {"pool", pool}, {"decision", decision}}).Increment();
  planner_desired_->Add({{"namespace", ns}, {"pool", pool}, {"role", "prefill"}}).Set(prefill);
  planner_desired_->Add({{"namespace", ns}, {"pool", pool}, {"role", "decode"}}).Set(decode);
  if (predicted_request_rate == predicted_request_rate) {  // not NaN
    planner_predicted_rate_->Add({{"namespace", ns}, {"pool", pool}}).Set(predicted_request_rate);
  }
}

void ControllerMetrics::ForgetPool(const std::string& ns, const std::string& pool) {
  for (const char* role : {"prefill", "decode"}) {
    auto labels = prometheus::Labels{{"namespace", ns}, {"pool", pool}, {"role", role}};
    if (planner_desired_->Has(labels)) planner_desired_->Remove(&planner_desired_->Add(labels));
  }
  auto labels = prometheus::Labels{{"namespace", ns}, {"pool", pool}};
  if (planner_predicted_rate_->Has(labels)) {
    planner_predicted_rate_->Remove(&planner_predicted_rate_->Add(labels));
  }
}

}  // namespace pdpool::controller
