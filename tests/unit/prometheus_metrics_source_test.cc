// Tests for PrometheusMetricsSource against a fake Prometheus (an HTTP server on 127.0.0.1
// answering canned /api/v1/query JSON): every PoolSignals field filled from its query, empty and
// NaN results, NotFound without router series, retries of transient failures, and Unavailable
// (naming the URL and the cause) on errors, refused connections and timeouts.
#include "controller/planner/prometheus_metrics_source.h"

#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>

#include "tests/fakes/loopback_http_server.h"

namespace pdpool::controller::planner {
namespace {

using std::chrono::seconds;
using testing::LoopbackHttpServer;

std::string VectorAnswer(const std::string& value) {
  return R"({"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1700000000,")" +
         value + R"("]}]}})";
}
const char* kEmptyAnswer = R"({"status":"success","data":{"resultType":"vector","result":[]}})";

struct Seen {
  std::string path;
  std::string query;
  std::string time;
  std::string timeout;
  std::string authorization;
};

// Answers each query with the value the test set for that PromQL text, else an empty vector.
class FakePrometheus {
 public:
  FakePrometheus()
      : server_([this](const httplib::Request& req, httplib::Response& res) { Handle(req, res); }) {
  }

  void SetValue(const std::string& expr, const std::string& value) {
    std::lock_guard lock(mu_);
    values_[expr] = value;
  }
  // The next `n` requests get this status and body instead.
  void FailNext(int n, int status, std::string body) {
    std::lock_guard lock(mu_);
    fail_count_ = n;
    fail_status_ = status;
    fail_body_ = std::move(body);
  }
  // Requests block until Release() (or 10 s).
  void Hold() {
    std::lock_guard lock(mu_);
    hold_ = true;
  }
  void Release() {
    {
      std::lock_guard lock(mu_);
      hold_ = false;
    }
    cv_.notify_all();
  }
  std::vector<Seen> seen() {
    std::lock_guard lock(mu_);
    return seen_;
  }
  std::string url() const { return server_.url(); }
  void Stop() { server_.Stop(); }

 private:
  void Handle(const httplib::Request& req, httplib::Response& res) {
    std::unique_lock lock(mu_);
    seen_.push_back({req.path, req.get_param_value("query"), req.get_param_value("time"),
                     req.get_param_value("timeout"), req.get_header_value("Authorization")});
    if (hold_) {
      cv_.wait_for(lock, seconds(10), [this] { return !hold_; });
    }
    if (fail_count_ > 0) {
      --fail_count_;
      res.status = fail_status_;
      res.set_content(fail_body_, "application/json");
      return;
    }
    auto it = values_.find(req.get_param_value("query"));
    res.set_content(it == values_.end() ? kEmptyAnswer : VectorAnswer(it->second),
                    "application/json");
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::string> values_;
  std::vector<Seen> seen_;
  int fail_count_ = 0;
  int fail_status_ = 200;
  std::string fail_body_;
  bool hold_ = false;
  LoopbackHttpServer server_;  // last: stops (joins its threads) before the state goes
};

class PrometheusMetricsSourceTest : public ::testing::Test {
 protected:
  PrometheusMetricsSourceTest() {
    query_.namespace_name = "serving";
    query_.pool = "llama";
    query_.window = seconds(60);
    query_.warmup = seconds(60);
    const WallTime long_ago = clock_.WallNow() - seconds(3600);
    query_.pods = {
        {"llama-router-0", "10.0.0.1", "router", 8080, true, long_ago},
        {"llama-prefill-0", "10.0.0.2", "prefill", 8000, true, long_ago},
        {"llama-decode-0", "10.0.0.3", "decode", 8000, true, long_ago},
        {"llama-decode-1", "10.0.0.4", "decode", 8000, true, clock_.WallNow()},  // cold
    };
  }

  PrometheusMetricsSourceOptions FastOptions() {
    PrometheusMetricsSourceOptions o;
    o.timeout = seconds(5);
    o.retries = 2;
    o.retry_backoff = Duration::zero();
    return o;
  }

  // Sets `value` for the query named `name` (as BuildPoolQueries names it).
  void Set(const std::string& name, const std::string& value) {
    for (const PoolQuery& q : BuildPoolQueries(query_, clock_.WallNow())) {
      if (q.name == name) {
        prometheus_.SetValue(q.expr, value);
        return;
      }
    }
    FAIL() << "no query named " << name;
  }

  FakeClock clock_;
  MetricsQuery query_;
  FakePrometheus prometheus_;
};

TEST_F(PrometheusMetricsSourceTest, FillsEverySignalFromItsQuery) {
  Set("request_rate", "12.5");
  Set("mean_prompt_tokens", "800");
  Set("mean_output_tokens", "150");
  Set("ttft_seconds", "0.42");
  Set("tpot_seconds", "0.035");
  Set("inflight_requests", "30");
  Set("prefill.warm_workers", "1");
  Set("prefill.tokens_per_second", "10000");
  Set("prefill.requests_waiting", "3");
  Set("prefill.requests_running", "2");
  Set("prefill.kv_usage_ratio", "0.1");
  Set("prefill.steps_per_second", "12");
  Set("prefill.mean_step_seconds", "0.08");
  Set("decode.warm_workers", "1");
  Set("decode.tokens_per_second", "1875");
  Set("decode.requests_waiting", "0");
  Set("decode.requests_running", "28");
  Set("decode.kv_usage_ratio", "0.55");
  Set("decode.steps_per_second", "66");
  Set("decode.mean_step_seconds", "0.015");
  Set("decode.mean_batch", "28.4");

  PrometheusMetricsSource source(prometheus_.url() + "/", &clock_, FastOptions());
  EXPECT_EQ(source.Name(), "prometheus");
  auto s = source.Read(query_);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->window_end, clock_.WallNow());
  EXPECT_EQ(s->window_seconds, 60);
  EXPECT_EQ(s->request_rate, 12.5);
  EXPECT_EQ(s->mean_prompt_tokens, 800);
  EXPECT_EQ(s->mean_output_tokens, 150);
  EXPECT_EQ(s->ttft_seconds, 0.42);
  EXPECT_EQ(s->tpot_seconds, 0.035);
  EXPECT_EQ(s->inflight_requests, 30);
  EXPECT_EQ(s->prefill.warm_workers, 1);
  EXPECT_EQ(s->prefill.tokens_per_second, 10000);
  EXPECT_EQ(s->prefill.requests_waiting, 3);
  EXPECT_EQ(s->prefill.requests_running, 2);
  EXPECT_EQ(s->prefill.kv_usage_ratio, 0.1);
  EXPECT_EQ(s->prefill.steps_per_second, 12);
  EXPECT_EQ(s->prefill.mean_step_seconds, 0.08);
  EXPECT_FALSE(HasValue(s->prefill.mean_batch));
  EXPECT_EQ(s->decode.warm_workers, 1);
  EXPECT_EQ(s->decode.tokens_per_second, 1875);
  EXPECT_EQ(s->decode.requests_waiting, 0);
  EXPECT_EQ(s->decode.requests_running, 28);
  EXPECT_EQ(s->decode.kv_usage_ratio, 0.55);
  EXPECT_EQ(s->decode.steps_per_second, 66);
  EXPECT_EQ(s->decode.mean_step_seconds, 0.015);
  EXPECT_EQ(s->decode.mean_batch, 28.4);

  // One instant query per signal, all at the clock's time, the cold decode pod not asked for.
  const auto seen = prometheus_.seen();
  ASSERT_EQ(seen.size(), BuildPoolQueries(query_, clock_.WallNow()).size());
  for (const Seen& r : seen) {
    EXPECT_EQ(r.path, "/api/v1/query");
    EXPECT_EQ(r.time, "1700000000.000");
    EXPECT_EQ(r.timeout, "5s");
    EXPECT_EQ(r.authorization, "");
    EXPECT_EQ(r.query.find("llama-decode-1"), std::string::npos) << r.query;
  }
}

TEST_F(PrometheusMetricsSourceTest, EmptyAndNaNResultsAreNoValue) {
  Set("request_rate", "0");
  Set("ttft_seconds", "NaN");        // no requests in the window
  Set("mean_prompt_tokens", "NaN");  // 0/0
  Set("decode.mean_batch", "+Inf");  // x/0
  PrometheusMetricsSource source(prometheus_.url(), &clock_, FastOptions());
  auto s = source.Read(query_);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->request_rate, 0);
  EXPECT_FALSE(HasValue(s->ttft_seconds));
  EXPECT_FALSE(HasValue(s->mean_prompt_tokens));
  EXPECT_FALSE(HasValue(s->decode.mean_batch));
  EXPECT_FALSE(HasValue(s->inflight_requests));
  EXPECT_FALSE(HasValue(s->prefill.tokens_per_second));
  EXPECT_EQ(s->prefill.warm_workers, 0);
}

TEST_F(PrometheusMetricsSourceTest, NoRouterSeriesIsNotFound) {
  Set("inflight_requests", "3");  // whatever else exists, no request rate means no pool data
  PrometheusMetricsSource source(prometheus_.url(), &clock_, FastOptions());
  auto s = source.Read(query_);
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(s.status().IsNotFound()) << s.status().ToString();
  EXPECT_NE(s.status().message().find("serving/llama"), std::string::npos);
  EXPECT_NE(s.status().message().find(prometheus_.url()), std::string::npos);
  EXPECT_EQ(prometheus_.seen().size(), 1u);  // stops at the first query
}

TEST_F(PrometheusMetricsSourceTest, RetriesTransientFailures) {
  Set("request_rate", "5");
  prometheus_.FailNext(2, 503, R"({"status":"error","errorType":"unavailable","error":"busy"})");
  PrometheusMetricsSource source(prometheus_.url(), &clock_, FastOptions());  // 2 retries
  auto s = source.Read(query_);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->request_rate, 5);
  const auto seen = prometheus_.seen();
  ASSERT_GE(seen.size(), 3u);
  EXPECT_EQ(seen[0].query, seen[2].query);  // the same query three times
}

TEST_F(PrometheusMetricsSourceTest, GivesUpAfterTheRetries) {
  Set("request_rate", "5");
  prometheus_.FailNext(3, 503, R"({"status":"error","errorType":"unavailable","error":"busy"})");
  auto options = FastOptions();
  options.retries = 1;
  PrometheusMetricsSource source(prometheus_.url(), &clock_, options);
  auto s = source.Read(query_);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(s.status().message().find("prometheus " + prometheus_.url()), std::string::npos)
      << s.status().message();
  EXPECT_NE(s.status().message().find("HTTP 503: busy"), std::string::npos) << s.status().message();
  EXPECT_EQ(prometheus_.seen().size(), 2u);
}

TEST_F(PrometheusMetricsSourceTest, QueryErrorsAreUnavailableWithoutRetry) {
  prometheus_.FailNext(
      1, 400, R"({"status":"error","errorType":"bad_data","error":"parse error at char 5"})");
  PrometheusMetricsSource source(prometheus_.url(), &clock_, FastOptions());
  auto s = source.Read(query_);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(s.status().message().find("HTTP 400: parse error at char 5"), std::string::npos)
      << s.status().message();
  EXPECT_EQ(prometheus_.seen().size(), 1u);

  // `status: error` in a 200 answer too.
  prometheus_.FailNext(1, 200,
                       R"({"status":"error","errorType":"execution","error":"too many samples"})");
  s = source.Read(query_);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(s.status().message().find("query failed (execution): too many samples"),
            std::string::npos)
      << s.status().message();

  prometheus_.FailNext(1, 200, "<html>not prometheus</html>");
  s = source.Read(query_);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("not JSON"), std::string::npos) << s.status().message();
}

TEST_F(PrometheusMetricsSourceTest, RefusedConnectionIsUnavailable) {
  const std::string url = prometheus_.url();
  prometheus_.Stop();
  PrometheusMetricsSource source(url, &clock_, FastOptions());
  auto s = source.Read(query_);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(s.status().message(),
            "prometheus " + url + ": connection refused (or host unreachable)");
}

TEST_F(PrometheusMetricsSourceTest, TimeoutIsUnavailable) {
  prometheus_.Hold();
  auto options = FastOptions();
  options.timeout = std::chrono::milliseconds(200);
  options.retries = 1;
  PrometheusMetricsSource source(prometheus_.url(), &clock_, options);
  auto s = source.Read(query_);
  prometheus_.Release();
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(s.status().message().find("no answer within 200ms"), std::string::npos)
      << s.status().message();
}

TEST_F(PrometheusMetricsSourceTest, PathPrefixAndBearerToken) {
  Set("request_rate", "1");
  auto options = FastOptions();
  options.bearer_token = "s3cret";
  PrometheusMetricsSource source(prometheus_.url() + "/prom/", &clock_, options);
  EXPECT_EQ(source.base_url(), prometheus_.url() + "/prom");
  auto s = source.Read(query_);
  // The fake answers every path alike; what matters is where the request went.
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  const auto seen = prometheus_.seen();
  ASSERT_FALSE(seen.empty());
  EXPECT_EQ(seen[0].path, "/prom/api/v1/query");
  EXPECT_EQ(seen[0].authorization, "Bearer s3cret");
}

TEST_F(PrometheusMetricsSourceTest, RejectsABadPercentile) {
  query_.percentile = 0;
  PrometheusMetricsSource source(prometheus_.url(), &clock_, FastOptions());
  auto s = source.Read(query_);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(prometheus_.seen().empty());
}

}  // namespace
}  // namespace pdpool::controller::planner
