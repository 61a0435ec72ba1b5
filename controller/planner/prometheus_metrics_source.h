// PrometheusMetricsSource: reads a pool's PoolSignals from the Prometheus HTTP API, one instant
// query (`GET <base>/api/v1/query?query=...&time=...`) per signal, with the PromQL of
// pool_queries.h. Series are expected to carry the labels pdpool's scrape config / PodMonitor
// relabels pod metadata into: namespace, pod, pool (pod label pdpool.dev/pool) and role (pod
// label pdpool.dev/role). Errors follow MetricsSource: Unavailable after the retries when
// Prometheus cannot be reached or answers with an error; NotFound when the pool's router series
// are absent. Thread-safe: Read may run concurrently (each call uses its own connection).
#pragma once

#include <string>

#include "common/clock.h"
#include "common/status.h"
#include "controller/planner/pool_queries.h"
#include "controller/planner/pool_signals.h"

namespace pdpool::controller::planner {

struct PrometheusMetricsSourceOptions {
  // Per HTTP request: connect, send and each read. Also sent as the query's `timeout` so
  // Prometheus gives up evaluating when the controller does.
  Duration timeout = std::chrono::seconds(5);
  // Further attempts of a query after a transient failure (connection, timeout, 5xx, 429).
  int retries = 2;
  // Wait between attempts (a real sleep of the calling thread).
  Duration retry_backoff = std::chrono::milliseconds(200);
  // Sent as `Authorization: Bearer <token>` when not empty (Prometheus behind an auth proxy).
  std::string bearer_token;
};

class PrometheusMetricsSource final : public MetricsSource {
 public:
  // base_url: "http://prometheus.monitoring:9090", optionally with a path prefix
  // ("http://host/prometheus"). `clock` (not owned) gives window_end and the queries' `time`.
  PrometheusMetricsSource(std::string base_url, const Clock* clock,
                          PrometheusMetricsSourceOptions options = {});

  StatusOr<PoolSignals> Read(const MetricsQuery& query) override;
  std::string Name() const override { return "prometheus"; }

  const std::string& base_url() const { return base_url_; }

 private:
  std::string base_url_;  // as given, without a trailing '/'
  std::string scheme_host_port_;
  std::string path_prefix_;  // "" or "/prefix"
  const Clock* clock_;
  PrometheusMetricsSourceOptions options_;
};

}  // namespace pdpool::controller::planner
