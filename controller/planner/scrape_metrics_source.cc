// ScrapeMetricsSource: direct scrapes of a pool's pods (see the header).
#include "controller/planner/scrape_metrics_source.h"

#include <httplib.h>

#include <cmath>
#include <functional>
#include <future>
#include <optional>

#include "common/log.h"
#include "controller/planner/histogram_quantile.h"
#include "controller/planner/pool_queries.h"

namespace pdpool::controller::planner {
namespace {

// name{k="v",...}: identifies a series within one pod's exposition.
std::string SeriesKey(const PromSample& s) {
  std::string key = s.name;
  key += '{';
  for (const auto& [k, v] : s.labels) {
    key += k;
    key += "=\"";
    key += v;
    key += "\",";
  }
  key += '}';
  return key;
}

StatusOr<std::string> Fetch(const std::string& ip, int port, const std::string& path,
                            Duration timeout) {
  httplib::Client client(ip, port);
  const auto us = std::chrono::duration_cast<std::chrono::microseconds>(timeout).count();
  client.set_connection_timeout(us / 1000000, us % 1000000);
  client.set_read_timeout(us / 1000000, us % 1000000);
  client.set_write_timeout(us / 1000000, us % 1000000);
  client.set_tcp_nodelay(true);
  httplib::Result res = client.Get(path, {{"Accept", "text/plain;version=0.0.4"}});
  if (!res) {
    switch (res.error()) {
      case httplib::Error::Connection:
        return Status::Unavailable("connection refused (or host unreachable)");
      case httplib::Error::ConnectionTimeout:
        return Status::Unavailable("connect timed out");
      case httplib::Error::Read:
        return Status::Unavailable("no answer in time (read timed out or connection closed)");
      default:
        return Status::Unavailable(httplib::to_string(res.error()));
    }
  }
  if (res->status != 200) return Status::Unavailable("HTTP " + std::to_string(res->status));
  return std::move(res->body);
}

struct ScrapeOutcome {
  const PoolPod* pod = nullptr;
  std::string endpoint;
  Status status;
  std::vector<PromSample> samples;
};

// What one pod's scrape contributes over its interval: increases are turned into rates with
// the pod's own interval (pods scraped before at different times still sum correctly).
class PodDelta {
 public:
  PodDelta(const std::vector<PromSample>& current, const std::map<std::string, double>* previous,
           double seconds)
      : current_(current), previous_(previous), seconds_(seconds) {}

  bool HasRates() const { return previous_ != nullptr && seconds_ > 0; }

  // Sum over the series `name` passing `filter` of their increase per second. A counter lower
  // than before was reset (the process restarted): its whole value is the increase, as
  // Prometheus' rate() counts it; a series new since the last scrape started from zero.
  double Rate(std::string_view name,
              const std::function<bool(const PromSample&)>& filter = nullptr) const {
    double sum = 0;
    for (const PromSample& s : current_) {
      if (s.name != name || (filter && !filter(s)) || std::isnan(s.value)) continue;
      sum += Increase(s) / seconds_;
    }
    return sum;
  }

  // Adds each bucket's rate of histogram `name` (its _bucket series) into `buckets` by `le`.
  void AddBucketRates(std::string_view name, std::map<double, double>* buckets) const {
    const std::string bucket_name = std::string(name) + "_bucket";
    for (const PromSample& s : current_) {
      if (s.name != bucket_name || std::isnan(s.value)) continue;
      double le;
      if (!ParsePromFloat(s.Label("le"), &le)) continue;
      (*buckets)[le] += Increase(s) / seconds_;
    }
  }

  // Sum and count of the current values of gauge `name` (series without a value skipped).
  std::pair<double, int> Gauge(std::string_view name) const {
    double sum = 0;
    int n = 0;
    for (const PromSample& s : current_) {
      if (s.name != name || std::isnan(s.value)) continue;
      sum += s.value;
      ++n;
    }
    return {sum, n};
  }

  bool Has(std::string_view name) const {
    for (const PromSample& s : current_) {
      if (s.name == name) return true;
    }
    return false;
  }

 private:
  double Increase(const PromSample& s) const {
    auto it = previous_->find(SeriesKey(s));
    if (it == previous_->end() || std::isnan(it->second)) return s.value;
    return s.value >= it->second ? s.value - it->second : s.value;
  }

  const std::vector<PromSample>& current_;
  const std::map<std::string, double>* previous_;
  double seconds_;
};

double Ratio(double num, double den) { return den > 0 ? num / den : kNoValue; }

}  // namespace

ScrapeMetricsSource::ScrapeMetricsSource(const Clock* clock, ScrapeMetricsSourceOptions options)
    : clock_(clock), options_(std::move(options)) {}

void ScrapeMetricsSource::Forget(const std::string& namespace_name, const std::string& pool) {
  std::lock_guard lock(mu_);
  history_.erase(namespace_name + "/" + pool);
}

StatusOr<PoolSignals> ScrapeMetricsSource::Read(const MetricsQuery& query) {
  if (query.percentile <= 0 || query.percentile > 100) {
    return Status::InvalidArgument("percentile " + std::to_string(query.percentile) +
                                   " is outside (0, 100]");
  }
  const std::string pool_key = query.namespace_name + "/" + query.pool;

  // Routers are scraped ready or not (their requests count for users); workers only when ready
  // (a worker that is not ready is not warm either).
  std::vector<ScrapeOutcome> outcomes;
  for (const PoolPod& pod : query.pods) {
    if (pod.ip.empty() || pod.port <= 0) continue;
    const bool router = pod.role == "router";
    const bool worker = pod.role == "prefill" || pod.role == "decode";
    if (!router && !(worker && pod.ready)) continue;
    ScrapeOutcome o;
    o.pod = &pod;
    o.endpoint = (pod.ip.find(':') != std::string::npos ? "[" + pod.ip + "]" : pod.ip) + ":" +
                 std::to_string(pod.port);
    outcomes.push_back(std::move(o));
  }
  const TimePoint now = clock_->Now();
  const WallTime wall_now = clock_->WallNow();
  {
    std::vector<std::future<StatusOr<std::string>>> bodies;
    bodies.reserve(outcomes.size());
    for (const ScrapeOutcome& o : outcomes) {
      bodies.push_back(std::async(std::launch::async, Fetch, o.pod->ip, o.pod->port, options_.path,
                                  options_.timeout));
    }
    for (size_t i = 0; i < outcomes.size(); ++i) {
      ScrapeOutcome& o = outcomes[i];
      StatusOr<std::string> body = bodies[i].get();
      if (!body.ok()) {
        o.status = body.status();
      } else {
        StatusOr<PromExposition> parsed = ParsePrometheusText(*body);
        if (!parsed.ok()) {
          o.status = parsed.status();
        } else {
          for (PromSample& s : parsed->samples) {
            if (s.name.starts_with("pdpool_")) o.samples.push_back(std::move(s));
          }
        }
      }
      if (!o.status.ok()) {
        o.status = Status::Unavailable("scrape pod " + o.pod->name + " (http://" + o.endpoint +
                                       options_.path + "): " + o.status.message());
        LogWarn("metrics scrape failed",
                {{"pool", pool_key}, {"pod", o.pod->name}, {"error", o.status.message()}});
      }
    }
  }

  PoolSignals signals;
  signals.window_end = wall_now;
  const double q = query.percentile / 100.0;

  std::lock_guard lock(mu_);
  PoolHistory& history = history_[pool_key];
  PoolHistory next;
  // Pods of the query that could not be scraped keep their last scrape: the next rate then
  // spans the longer interval, which is still right for counters.
  for (const PoolPod& pod : query.pods) {
    auto it = history.find(pod.name);
    if (it != history.end()) next.emplace(pod.name, it->second);
  }

  int router_pods = 0, routers_ok = 0, routers_with_metrics = 0, routers_with_rates = 0;
  Status first_router_error;
  double request_rate = 0, prompt_rate = 0, generation_rate = 0, served_rate = 0;
  double inflight = 0;
  bool has_inflight = false;
  std::map<double, double> ttft_buckets, tpot_buckets;
  double window_seconds = 0;
  struct RoleSums {
    int warm = 0;
    double tokens = 0, steps = 0, step_seconds = 0, decode_tokens = 0;
    double waiting = 0, running = 0, kv_sum = 0;
    int waiting_n = 0, running_n = 0, kv_n = 0;
  };
  std::map<std::string, RoleSums> roles;

  for (const ScrapeOutcome& o : outcomes) {
    const PoolPod& pod = *o.pod;
    const bool router = pod.role == "router";
    if (router) ++router_pods;
    if (!o.status.ok()) {
      if (router && first_router_error.ok()) first_router_error = o.status;
      continue;
    }
    auto prev_it = history.find(pod.name);
    const PodScrape* prev = prev_it != history.end() && prev_it->second.endpoint == o.endpoint
                                ? &prev_it->second
                                : nullptr;
    const double seconds =
        prev != nullptr ? std::chrono::duration<double>(now - prev->at).count() : 0;
    const PodDelta delta(o.samples, prev != nullptr ? &prev->by_series : nullptr, seconds);

    if (router) {
      ++routers_ok;
      if (!delta.Has(kRouterRequestsTotal)) continue;
      ++routers_with_metrics;
      auto [in, n] = delta.Gauge(kRouterInflightRequests);
      if (n > 0) {
        inflight += in;
        has_inflight = true;
      }
      if (!delta.HasRates()) continue;
      ++routers_with_rates;
      window_seconds = std::max(window_seconds, seconds);
      request_rate += delta.Rate(kRouterRequestsTotal);
      prompt_rate += delta.Rate(kRouterPromptTokensTotal);
      generation_rate += delta.Rate(kRouterGenerationTokensTotal);
      served_rate += delta.Rate(std::string(kRouterE2eSeconds) + "_count");
      delta.AddBucketRates(kRouterTtftSeconds, &ttft_buckets);
      delta.AddBucketRates(kRouterTpotSeconds, &tpot_buckets);
      continue;
    }
    // A worker: counts when it was already warm at the start of its interval.
    if (!delta.HasRates() || !IsWarmWorker(pod, prev->wall_at, query.warmup)) continue;
    RoleSums& r = roles[pod.role];
    ++r.warm;
    const std::string phase = pod.role;
    auto of_phase = [&phase](const PromSample& s) { return s.Label("phase") == phase; };
    r.tokens +=
        delta.Rate(pod.role == "prefill" ? kWorkerPrefillTokensTotal : kWorkerDecodeTokensTotal);
    r.decode_tokens += delta.Rate(kWorkerDecodeTokensTotal);
    r.steps += delta.Rate(std::string(kWorkerStepSeconds) + "_count", of_phase);
    r.step_seconds += delta.Rate(std::string(kWorkerStepSeconds) + "_sum", of_phase);
    auto add_gauge = [&delta](std::string_view name, double* sum, int* n) {
      auto [s, c] = delta.Gauge(name);
      *sum += s;
      *n += c;
    };
    add_gauge(kWorkerRequestsWaiting, &r.waiting, &r.waiting_n);
    add_gauge(kWorkerRequestsRunning, &r.running, &r.running_n);
    add_gauge(kWorkerKvCacheUsageRatio, &r.kv_sum, &r.kv_n);
  }

  // The history moves on whatever the outcome, so the next Read has its first sample.
  for (ScrapeOutcome& o : outcomes) {
    if (!o.status.ok()) continue;
    PodScrape scrape;
    scrape.endpoint = o.endpoint;
    scrape.at = now;
    scrape.wall_at = wall_now;
    for (const PromSample& s : o.samples) scrape.by_series[SeriesKey(s)] = s.value;
    scrape.samples = std::move(o.samples);
    next[o.pod->name] = std::move(scrape);
  }
  history = std::move(next);

  if (router_pods == 0) {
    return Status::NotFound("scrape: pool " + pool_key + " has no router pod with an IP");
  }
  if (routers_ok == 0) {
    return Status::Unavailable("scrape: all " + std::to_string(router_pods) +
                               " router pod(s) of pool " + pool_key +
                               " failed; first: " + first_router_error.message());
  }
  if (routers_with_metrics == 0) {
    return Status::NotFound("scrape: router pods of pool " + pool_key + " serve no " +
                            std::string(kRouterRequestsTotal));
  }
  if (routers_with_rates == 0) {
    return Status::NotFound("scrape: pool " + pool_key +
                            ": collecting a first sample (rates need two scrapes)");
  }

  auto quantile = [q](const std::map<double, double>& buckets) {
    std::vector<HistogramBucket> b;
    for (const auto& [le, rate] : buckets) b.push_back({le, rate});
    const double v = HistogramQuantile(q, std::move(b));
    return std::isfinite(v) ? v : kNoValue;
  };
  signals.window_seconds = window_seconds;
  signals.request_rate = request_rate;
  signals.mean_prompt_tokens = Ratio(prompt_rate, served_rate);
  signals.mean_output_tokens = Ratio(generation_rate, served_rate);
  signals.ttft_seconds = quantile(ttft_buckets);
  signals.tpot_seconds = quantile(tpot_buckets);
  signals.inflight_requests = has_inflight ? inflight : kNoValue;
  for (auto& [name, sums] : roles) {
    RoleSignals& r = name == "prefill" ? signals.prefill : signals.decode;
    r.warm_workers = sums.warm;
    r.tokens_per_second = sums.tokens;
    r.requests_waiting = sums.waiting_n > 0 ? sums.waiting : kNoValue;
    r.requests_running = sums.running_n > 0 ? sums.running : kNoValue;
    r.kv_usage_ratio = sums.kv_n > 0 ? sums.kv_sum / sums.kv_n : kNoValue;
    r.steps_per_second = sums.steps;
    r.mean_step_seconds = Ratio(sums.step_seconds, sums.steps);
    if (name == "decode") r.mean_batch = Ratio(sums.decode_tokens, sums.steps);
  }
  return signals;
}

}  // namespace pdpool::controller::planner
