// PrometheusMetricsSource: instant queries over the Prometheus HTTP API (see the header).
#include "controller/planner/prometheus_metrics_source.h"

#include <httplib.h>

#include <cmath>
#include <cstdio>
#include <optional>
#include <thread>

#include "common/json.h"
#include "common/log.h"
#include "common/prometheus_text.h"

namespace pdpool::controller::planner {
namespace {

std::string UrlEncode(std::string_view s) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(s.size() * 3);
  for (unsigned char c : s) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
        c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

// Unix seconds with milliseconds, as the API's `time` parameter takes them.
std::string FormatUnixSeconds(WallTime t) {
  const int64_t ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%lld.%03lld", static_cast<long long>(ms / 1000),
                static_cast<long long>(ms % 1000));
  return buf;
}

std::string DescribeHttpError(httplib::Error error, Duration timeout) {
  const std::string secs = FormatPromDuration(timeout);
  switch (error) {
    case httplib::Error::Connection:
      return "connection refused (or host unreachable)";
    case httplib::Error::ConnectionTimeout:
      return "connect timed out after " + secs;
    case httplib::Error::Read:
      return "no answer within " + secs + " (read timed out or connection closed)";
    case httplib::Error::Write:
      return "sending the request failed";
    default:
      return httplib::to_string(error);
  }
}

// One attempt's outcome: a value, an empty result (nullopt), or an error that may be retried.
struct Attempt {
  Status status;
  bool transient = false;
  std::optional<double> value;
};

// Reads `{"status":"success","data":{"resultType":"vector","result":[...]}}`.
Attempt ParseQueryResponse(const std::string& body, const std::string& where) {
  Json doc = Json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object()) {
    return {Status::Unavailable(where + ": answer is not JSON"), false, std::nullopt};
  }
  const std::string status = JsonGet<std::string>(doc, "/status", "");
  if (status != "success") {
    return {Status::Unavailable(where + ": query failed (" +
                                JsonGet<std::string>(doc, "/errorType", "error") +
                                "): " + JsonGet<std::string>(doc, "/error", "status " + status)),
            false, std::nullopt};
  }
  const std::string type = JsonGet<std::string>(doc, "/data/resultType", "");
  const Json* result = JsonPath(doc, {"data", "result"});
  const Json* sample = nullptr;
  if (type == "vector" && result != nullptr && result->is_array()) {
    if (result->empty()) return {Status::Ok(), false, std::nullopt};
    sample = JsonChild((*result)[0], "value");
  } else if (type == "scalar") {
    sample = result;
  } else {
    return {Status::Unavailable(where + ": unexpected resultType \"" + type + "\""), false,
            std::nullopt};
  }
  if (sample == nullptr || !sample->is_array() || sample->size() != 2) {
    return {Status::Unavailable(where + ": malformed sample in the answer"), false, std::nullopt};
  }
  const Json& v = (*sample)[1];
  double value = 0;
  if (v.is_number()) {
    value = v.get<double>();
  } else if (!v.is_string() || !ParsePromFloat(v.get<std::string>(), &value)) {
    return {Status::Unavailable(where + ": malformed sample value " + v.dump()), false,
            std::nullopt};
  }
  return {Status::Ok(), false, value};
}

// Reads the first JSON error message of a non-200 answer, else the start of the body.
std::string ErrorBodySummary(const std::string& body) {
  Json doc = Json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (!doc.is_discarded() && doc.is_object()) {
    std::string e = JsonGet<std::string>(doc, "/error", "");
    if (!e.empty()) return e;
  }
  std::string s = body.substr(0, 200);
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

}  // namespace

PrometheusMetricsSource::PrometheusMetricsSource(std::string base_url, const Clock* clock,
                                                 PrometheusMetricsSourceOptions options)
    : base_url_(std::move(base_url)), clock_(clock), options_(std::move(options)) {
  while (!base_url_.empty() && base_url_.back() == '/') base_url_.pop_back();
  const size_t scheme_end = base_url_.find("://");
  const size_t path_start =
      base_url_.find('/', scheme_end == std::string::npos ? 0 : scheme_end + 3);
  scheme_host_port_ = base_url_.substr(0, path_start);
  if (path_start != std::string::npos) path_prefix_ = base_url_.substr(path_start);
}

StatusOr<PoolSignals> PrometheusMetricsSource::Read(const MetricsQuery& query) {
  const std::string where = "prometheus " + base_url_;
  if (query.percentile <= 0 || query.percentile > 100) {
    return Status::InvalidArgument("percentile " + std::to_string(query.percentile) +
                                   " is outside (0, 100]");
  }
  if (query.window <= Duration::zero()) {
    return Status::InvalidArgument("metrics window must be positive");
  }
  httplib::Client client(scheme_host_port_);
  if (!client.is_valid()) {
    return Status::Unavailable(where + ": unsupported URL (only http:// is built in)");
  }
  const auto timeout_us =
      std::chrono::duration_cast<std::chrono::microseconds>(options_.timeout).count();
  client.set_connection_timeout(timeout_us / 1000000, timeout_us % 1000000);
  client.set_read_timeout(timeout_us / 1000000, timeout_us % 1000000);
  client.set_write_timeout(timeout_us / 1000000, timeout_us % 1000000);
  client.set_keep_alive(true);
  client.set_tcp_nodelay(true);
  httplib::Headers headers = {{"Accept", "application/json"}};
  if (!options_.bearer_token.empty()) {
    headers.emplace("Authorization", "Bearer " + options_.bearer_token);
  }

  PoolSignals signals;
  signals.window_end = clock_->WallNow();
  signals.window_seconds = std::chrono::duration<double>(query.window).count();
  const std::string time_param = FormatUnixSeconds(signals.window_end);
  const std::string timeout_param = FormatPromDuration(options_.timeout);

  for (const PoolQuery& q : BuildPoolQueries(query, signals.window_end)) {
    const std::string path = path_prefix_ + "/api/v1/query?query=" + UrlEncode(q.expr) +
                             "&time=" + time_param + "&timeout=" + timeout_param;
    Attempt attempt;
    for (int i = 0; i <= std::max(0, options_.retries); ++i) {
      if (i > 0 && options_.retry_backoff > Duration::zero()) {
        std::this_thread::sleep_for(options_.retry_backoff);
      }
      httplib::Result res = client.Get(path, headers);
      if (!res) {
        attempt = {
            Status::Unavailable(where + ": " + DescribeHttpError(res.error(), options_.timeout)),
            true, std::nullopt};
      } else if (res->status == 200) {
        attempt = ParseQueryResponse(res->body, where);
      } else {
        attempt = {Status::Unavailable(where + ": HTTP " + std::to_string(res->status) + ": " +
                                       ErrorBodySummary(res->body)),
                   res->status >= 500 || res->status == 429, std::nullopt};
      }
      if (attempt.status.ok() || !attempt.transient) break;
      LogDebug("prometheus query failed", {{"pool", query.namespace_name + "/" + query.pool},
                                           {"signal", q.name},
                                           {"attempt", i + 1},
                                           {"error", attempt.status.message()}});
    }
    if (!attempt.status.ok()) return attempt.status;
    if (!attempt.value) {
      if (q.field == SignalField::kRequestRate) {
        return Status::NotFound(where + ": no samples of " + std::string(kRouterRequestsTotal) +
                                " for pool " + query.namespace_name + "/" + query.pool +
                                " in the last " + FormatPromDuration(query.window) +
                                " (not scraped yet, or its pods are not scraped)");
      }
      continue;
    }
    double v = *attempt.value;
    if (!std::isfinite(v)) v = kNoValue;  // 0/0, x/0: no samples of the denominator
    RoleSignals* role = q.role == "prefill"  ? &signals.prefill
                        : q.role == "decode" ? &signals.decode
                                             : nullptr;
    switch (q.field) {
      case SignalField::kRequestRate:
        signals.request_rate = v;
        break;
      case SignalField::kMeanPromptTokens:
        signals.mean_prompt_tokens = v;
        break;
      case SignalField::kMeanOutputTokens:
        signals.mean_output_tokens = v;
        break;
      case SignalField::kTtftSeconds:
        signals.ttft_seconds = v;
        break;
      case SignalField::kTpotSeconds:
        signals.tpot_seconds = v;
        break;
      case SignalField::kInflightRequests:
        signals.inflight_requests = v;
        break;
      case SignalField::kWarmWorkers:
        role->warm_workers = HasValue(v) ? static_cast<int>(std::lround(v)) : 0;
        break;
      case SignalField::kTokensPerSecond:
        role->tokens_per_second = v;
        break;
      case SignalField::kRequestsWaiting:
        role->requests_waiting = v;
        break;
      case SignalField::kRequestsRunning:
        role->requests_running = v;
        break;
      case SignalField::kKvUsageRatio:
        role->kv_usage_ratio = v;
        break;
      case SignalField::kStepsPerSecond:
        role->steps_per_second = v;
        break;
      case SignalField::kMeanStepSeconds:
        role->mean_step_seconds = v;
        break;
      case SignalField::kMeanBatch:
        role->mean_batch = v;
        break;
    }
  }
  return signals;
}

}  // namespace pdpool::controller::planner
