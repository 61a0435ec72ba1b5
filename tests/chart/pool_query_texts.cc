// pool_query_texts: prints the planner's PromQL (controller/planner/pool_queries.h,
// PoolQueryTexts) as the Helm chart's recording rules should hold it — aggregated by namespace
// and pool, worker series selected by role only — one JSON object per line:
//   {"role": "" | "prefill" | "decode", "name": "request_rate" | "prefill.tokens_per_second" ...,
//    "field": "request_rate" | "tokens_per_second" ..., "expr": "<PromQL>"}
// tests/chart/chart_checks.py compares the chart's rendered rules with this output.
//
// Usage: pool_query_texts --window 1m --quantile 0.9
#include <cstdlib>
#include <iostream>
#include <string>
#include <string_view>

#include "common/json.h"
#include "controller/planner/pool_queries.h"

int main(int argc, char** argv) {
  namespace planner = pdpool::controller::planner;
  planner::PoolQuerySelectors selectors;
  selectors.by = "namespace, pool";
  selectors.router = "";
  selectors.prefill = "role=\"prefill\"";
  selectors.decode = "role=\"decode\"";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string_view flag = argv[i];
    if (flag == "--window") {
      selectors.window = argv[i + 1];
    } else if (flag == "--quantile") {
      selectors.quantile = std::strtod(argv[i + 1], nullptr);
    } else {
      std::cerr << "pool_query_texts: unknown flag " << flag
                << " (usage: --window 1m --quantile 0.9)\n";
      return 2;
    }
  }
  if (argc % 2 == 0) {
    std::cerr << "pool_query_texts: usage: --window 1m --quantile 0.9\n";
    return 2;
  }
  for (const planner::PoolQuery& q : planner::PoolQueryTexts(selectors)) {
    pdpool::Json line = {{"role", q.role},
                         {"name", q.name},
                         {"field", std::string(planner::SignalFieldName(q.field))},
                         {"expr", q.expr}};
    std::cout << line.dump() << "\n";
  }
  return 0;
}
