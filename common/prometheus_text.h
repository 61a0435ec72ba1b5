// Parser of the Prometheus text exposition format (version 0.0.4), what pdpool's agents serve on
// /metrics: `# HELP` / `# TYPE` comments and sample lines `name{label="value",...} value
// [timestamp_ms]`, with escaped label values and Go-style floats (NaN, +Inf, -Inf). The
// controller's ScrapeMetricsSource reads the pool's pods with it when no Prometheus is
// configured. Pure functions; thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace pdpool {

enum class PromMetricType { kUntyped, kCounter, kGauge, kHistogram, kSummary };

// "counter", "gauge", "histogram", "summary", "untyped".
std::string_view PromMetricTypeName(PromMetricType type);

// One sample line. Histograms appear as their series (`x_bucket{le="..."}`, `x_sum`, `x_count`).
struct PromSample {
  std::string name;
  std::map<std::string, std::string, std::less<>> labels;  // unescaped values
  double value = 0;
  std::optional<int64_t> timestamp_ms;

  // The label's value, "" when absent (Prometheus treats both alike).
  std::string_view Label(std::string_view key) const;
};

struct PromExposition {
  std::vector<PromSample> samples;                           // in the order served
  std::map<std::string, PromMetricType, std::less<>> types;  // by family name, from # TYPE
  std::map<std::string, std::string, std::less<>> help;      // by family name, unescaped
};

// Parses a whole exposition. InvalidArgument naming the line (1-based) and what is wrong on the
// first malformed line, as Prometheus fails a scrape on it.
StatusOr<PromExposition> ParsePrometheusText(std::string_view text);

// A float as Prometheus writes and reads them (Go's strconv.ParseFloat): decimal or exponent
// notation, "NaN", "+Inf", "-Inf", "Inf" (case-insensitive), an optional sign. False when `text`
// is not entirely one number.
bool ParsePromFloat(std::string_view text, double* out);

}  // namespace pdpool
