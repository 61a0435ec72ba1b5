// PromQL texts of the planner's signals (see pool_queries.h).
#include "controller/planner/pool_queries.h"

#include <algorithm>
#include <charconv>

namespace pdpool::controller::planner {
namespace {

// `{a,b}` from matchers, dropping empty ones.
std::string Braces(std::initializer_list<std::string_view> matchers) {
  std::string out = "{";
  bool first = true;
  for (std::string_view m : matchers) {
    if (m.empty()) continue;
    if (!first) out += ',';
    out += m;
    first = false;
  }
  out += '}';
  return out;
}

class Builder {
 public:
  explicit Builder(const PoolQuerySelectors& s) : s_(s) {}

  // sum(...) / sum by (labels) (...)
  std::string Agg(std::string_view op, const std::string& inner,
                  std::string_view extra_by = {}) const {
    std::string by = s_.by;
    if (!extra_by.empty())
      by = by.empty() ? std::string(extra_by) : by + ", " + std::string(extra_by);
    if (by.empty()) return std::string(op) + "(" + inner + ")";
    return std::string(op) + " by (" + by + ") (" + inner + ")";
  }
  std::string Rate(std::string_view metric, const std::string& braces) const {
    return "rate(" + std::string(metric) + braces + "[" + s_.window + "])";
  }
  std::string SumRate(std::string_view metric, const std::string& braces) const {
    return Agg("sum", Rate(metric, braces));
  }
  std::string Quantile(std::string_view histogram, const std::string& braces) const {
    return "histogram_quantile(" + FormatPromFloat(s_.quantile) + ", " +
           Agg("sum", Rate(std::string(histogram) + "_bucket", braces), "le") + ")";
  }

 private:
  const PoolQuerySelectors& s_;
};

void AddRoleQueries(const Builder& b, const std::string& role, const std::string& selector,
                    std::vector<PoolQuery>* out) {
  auto add = [&](SignalField field, std::string expr) {
    out->push_back(
        {role, field, role + "." + std::string(SignalFieldName(field)), std::move(expr)});
  };
  const std::string sel = Braces({selector});
  const std::string phase = Braces({selector, "phase=" + PromQlString(role)});
  const std::string count = std::string(kWorkerStepSeconds) + "_count";
  const std::string sum = std::string(kWorkerStepSeconds) + "_sum";
  const std::string_view tokens =
      role == "prefill" ? kWorkerPrefillTokensTotal : kWorkerDecodeTokensTotal;
  add(SignalField::kWarmWorkers, b.Agg("count", std::string(kWorkerRequestsRunning) + sel));
  add(SignalField::kTokensPerSecond, b.SumRate(tokens, sel));
  add(SignalField::kRequestsWaiting, b.Agg("sum", std::string(kWorkerRequestsWaiting) + sel));
  add(SignalField::kRequestsRunning, b.Agg("sum", std::string(kWorkerRequestsRunning) + sel));
  add(SignalField::kKvUsageRatio, b.Agg("avg", std::string(kWorkerKvCacheUsageRatio) + sel));
  add(SignalField::kStepsPerSecond, b.SumRate(count, phase));
  add(SignalField::kMeanStepSeconds, b.SumRate(sum, phase) + " / " + b.SumRate(count, phase));
  if (role == "decode") {
    add(SignalField::kMeanBatch,
        b.SumRate(kWorkerDecodeTokensTotal, sel) + " / " + b.SumRate(count, phase));
  }
}

}  // namespace

std::string_view SignalFieldName(SignalField field) {
  switch (field) {
    case SignalField::kRequestRate:
      return "request_rate";
    case SignalField::kMeanPromptTokens:
      return "mean_prompt_tokens";
    case SignalField::kMeanOutputTokens:
      return "mean_output_tokens";
    case SignalField::kTtftSeconds:
      return "ttft_seconds";
    case SignalField::kTpotSeconds:
      return "tpot_seconds";
    case SignalField::kInflightRequests:
      return "inflight_requests";
    case SignalField::kWarmWorkers:
      return "warm_workers";
    case SignalField::kTokensPerSecond:
      return "tokens_per_second";
    case SignalField::kRequestsWaiting:
      return "requests_waiting";
    case SignalField::kRequestsRunning:
      return "requests_running";
    case SignalField::kKvUsageRatio:
      return "kv_usage_ratio";
    case SignalField::kStepsPerSecond:
      return "steps_per_second";
    case SignalField::kMeanStepSeconds:
      return "mean_step_seconds";
    case SignalField::kMeanBatch:
      return "mean_batch";
  }
  return "unknown";
}

std::vector<PoolQuery> PoolQueryTexts(const PoolQuerySelectors& selectors) {
  const Builder b(selectors);
  std::vector<PoolQuery> out;
  auto add = [&](SignalField field, std::string expr) {
    out.push_back({"", field, std::string(SignalFieldName(field)), std::move(expr)});
  };
  const std::string r = Braces({selectors.router});
  const std::string served = b.SumRate(std::string(kRouterE2eSeconds) + "_count", r);
  add(SignalField::kRequestRate, b.SumRate(kRouterRequestsTotal, r));
  add(SignalField::kMeanPromptTokens, b.SumRate(kRouterPromptTokensTotal, r) + " / " + served);
  add(SignalField::kMeanOutputTokens, b.SumRate(kRouterGenerationTokensTotal, r) + " / " + served);
  add(SignalField::kTtftSeconds, b.Quantile(kRouterTtftSeconds, r));
  add(SignalField::kTpotSeconds, b.Quantile(kRouterTpotSeconds, r));
  add(SignalField::kInflightRequests, b.Agg("sum", std::string(kRouterInflightRequests) + r));
  if (selectors.prefill) AddRoleQueries(b, "prefill", *selectors.prefill, &out);
  if (selectors.decode) AddRoleQueries(b, "decode", *selectors.decode, &out);
  return out;
}

bool IsWarmWorker(const PoolPod& pod, WallTime window_start, Duration warmup) {
  return pod.ready && pod.ready_since + warmup <= window_start;
}

std::vector<PoolQuery> BuildPoolQueries(const MetricsQuery& query, WallTime window_end) {
  PoolQuerySelectors s;
  const std::string pool_selector =
      "namespace=" + PromQlString(query.namespace_name) + ",pool=" + PromQlString(query.pool);
  s.router = pool_selector;
  s.window = FormatPromDuration(query.window);
  s.quantile = query.percentile / 100.0;
  const WallTime window_start = window_end - query.window;
  for (const char* role : {"prefill", "decode"}) {
    std::vector<std::string> names;
    for (const PoolPod& pod : query.pods) {
      if (pod.role == role && IsWarmWorker(pod, window_start, query.warmup)) {
        names.push_back(RegexEscape(pod.name));
      }
    }
    if (names.empty()) continue;
    std::sort(names.begin(), names.end());
    names.erase(std::unique(names.begin(), names.end()), names.end());
    std::string alternatives;
    for (const std::string& n : names) {
      if (!alternatives.empty()) alternatives += '|';
      alternatives += n;
    }
    std::string selector =
        pool_selector + ",role=" + PromQlString(role) + ",pod=~" + PromQlString(alternatives);
    (std::string_view(role) == "prefill" ? s.prefill : s.decode) = std::move(selector);
  }
  return PoolQueryTexts(s);
}

std::string PromQlString(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '\\':
        out += "\\\\";
        break;
      case '"':
        out += "\\\"";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        out += c;
    }
  }
  out += '"';
  return out;
}

std::string RegexEscape(std::string_view s) {
  static constexpr std::string_view kMeta = "\\.+*?()|[]{}^$";
  std::string out;
  for (char c : s) {
    if (kMeta.find(c) != std::string_view::npos) out += '\\';
    out += c;
  }
  return out;
}

std::string FormatPromDuration(Duration d) {
  const auto ms =
      std::max<int64_t>(1, std::chrono::duration_cast<std::chrono::milliseconds>(d).count());
  if (ms % 1000 == 0) return std::to_string(ms / 1000) + "s";
  return std::to_string(ms) + "ms";
}

std::string FormatPromFloat(double v) {
  char buf[64];
  auto [ptr, ec] = std::to_chars(buf, buf + sizeof(buf), v);
  if (ec != std::errc()) return "NaN";
  return std::string(buf, ptr);
}

}  // namespace pdpool::controller::planner
