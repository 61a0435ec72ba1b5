// Report: the replay's printed table (scenario at the top, one row per policy, pdpool's ratios
// against each other policy and the TARGETS.md planner targets) and the same as JSON.
// Functions; thread-compatible.
#pragma once

#include <string>

#include "bench/replay/harness.h"
#include "bench/replay/scenario.h"
#include "bench/replay/trace.h"
#include "common/json.h"

namespace pdpool::bench::replay {

struct ReportContext {
  const Scenario* scenario = nullptr;
  std::string slo_name;     // which reference SLO the limits are
  TraceStats original;      // the trace window before the multiplier
  TraceStats replayed;      // after it
  double load_seconds = 0;  // reading and preparing the trace
};

std::string ScenarioText(const ReportContext& ctx);
std::string ComparisonText(const ReportContext& ctx, const Comparison& c);
std::string FixedBudgetText(const ReportContext& ctx, const FixedBudgetComparison& c);

Json ScenarioJson(const ReportContext& ctx);
Json RunJson(const RunResult& r);
Json ComparisonJson(const ReportContext& ctx, const Comparison& c);
Json FixedBudgetJson(const ReportContext& ctx, const FixedBudgetComparison& c);

}  // namespace pdpool::bench::replay
