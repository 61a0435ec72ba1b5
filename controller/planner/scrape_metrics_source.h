// ScrapeMetricsSource: PoolSignals without a Prometheus. Each Read scrapes the pool's pods
// directly (`http://<podIP>:<port>/metrics`, text format 0.0.4) and computes rates from the
// difference to the previous scrape of the same pod, so the window is the time between two
// Reads of the pool (the planner interval). Quantiles come from the summed bucket increases of
// the pool's routers (HistogramQuantile, Prometheus semantics). Worker samples count only for
// warm pods (IsWarmWorker, the window starting at the pod's previous scrape).
// Errors: the first Read of a pool (or one whose routers were never scraped before) is NotFound
// "collecting a first sample"; no router pod, or routers without pdpool_router_* series, is
// NotFound; every router failing to scrape is Unavailable. Workers that fail are skipped.
// Thread-safe: concurrent Reads are allowed (the per-pod history is under a mutex; two Reads of
// the same pool at once just shorten each other's window).
#pragma once

#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "common/clock.h"
#include "common/prometheus_text.h"
#include "common/status.h"
#include "controller/planner/pool_signals.h"

namespace pdpool::controller::planner {

struct ScrapeMetricsSourceOptions {
  Duration timeout = std::chrono::seconds(3);  // per pod: connect, send, each read
  std::string path = "/metrics";
};

class ScrapeMetricsSource final : public MetricsSource {
 public:
  // `clock` (not owned) times the scrapes (rate bases) and gives window_end.
  explicit ScrapeMetricsSource(const Clock* clock, ScrapeMetricsSourceOptions options = {});

  StatusOr<PoolSignals> Read(const MetricsQuery& query) override;
  std::string Name() const override { return "scrape"; }

  // Forgets a pool's history (the pool was deleted); its next Read starts over.
  void Forget(const std::string& namespace_name, const std::string& pool);

 private:
  struct PodScrape {
    std::string endpoint;  // ip:port it came from; a new endpoint starts the pod over
    TimePoint at{};
    WallTime wall_at{};
    std::vector<PromSample> samples;          // pdpool_* samples only
    std::map<std::string, double> by_series;  // SeriesKey -> value, for increases
  };
  using PoolHistory = std::map<std::string, PodScrape>;  // by pod name

  const Clock* clock_;
  ScrapeMetricsSourceOptions options_;
  std::mutex mu_;
  std::map<std::string, PoolHistory> history_;  // by "namespace/pool"
};

}  // namespace pdpool::controller::planner
