// DefaultMetricsSourceFactory: Prometheus when the pool names one, else direct scraping.
#include "controller/planner/pool_autoscaler.h"
#include "controller/planner/prometheus_metrics_source.h"
#include "controller/planner/scrape_metrics_source.h"

namespace pdpool::controller::planner {

MetricsSourceFactory DefaultMetricsSourceFactory(Clock* clock) {
  return [clock](const std::string& prometheus_url) -> std::unique_ptr<MetricsSource> {
    if (!prometheus_url.empty()) {
      return std::make_unique<PrometheusMetricsSource>(prometheus_url, clock);
    }
    return std::make_unique<ScrapeMetricsSource>(clock);
  };
}

}  // namespace pdpool::controller::planner
