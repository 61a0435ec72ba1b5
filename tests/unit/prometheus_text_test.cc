// Tests for the Prometheus text format parser: what a scrape of a pdpool agent yields (families,
// labels, histogram series), escapes, special floats, timestamps, and the error a malformed line
// gets (naming the line).
#include "common/prometheus_text.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "agent/router/router_metrics.h"

namespace pdpool {
namespace {

const PromSample* Find(
    const PromExposition& e, std::string_view name,
    std::initializer_list<std::pair<std::string_view, std::string_view>> labels = {}) {
  for (const PromSample& s : e.samples) {
    if (s.name != name) continue;
    bool match = true;
    for (const auto& [k, v] : labels) match = match && s.Label(k) == v;
    if (match) return &s;
  }
  return nullptr;
}

TEST(PrometheusTextTest, ParsesFamiliesLabelsAndHistogramSeries) {
  const char* text =
      "# HELP pdpool_router_requests_total Client API requests finished, by HTTP status code\n"
      "# TYPE pdpool_router_requests_total counter\n"
      "pdpool_router_requests_total{pool=\"llama\",code=\"200\"} 41\n"
      "pdpool_router_requests_total{code=\"503\",pool=\"llama\"} 2\n"
      "\n"
      "# TYPE pdpool_router_ttft_seconds histogram\n"
      "pdpool_router_ttft_seconds_bucket{pool=\"llama\",le=\"0.1\"} 3\n"
      "pdpool_router_ttft_seconds_bucket{pool=\"llama\",le=\"+Inf\"} 7\n"
      "pdpool_router_ttft_seconds_sum{pool=\"llama\"} 1.25e0\n"
      "pdpool_router_ttft_seconds_count{pool=\"llama\"} 7\n"
      "# a free comment\n"
      "pdpool_router_inflight_requests 4\n";
  auto parsed = ParsePrometheusText(text);
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  ASSERT_EQ(parsed->samples.size(), 7u);
  EXPECT_EQ(parsed->types.at("pdpool_router_requests_total"), PromMetricType::kCounter);
  EXPECT_EQ(parsed->types.at("pdpool_router_ttft_seconds"), PromMetricType::kHistogram);
  EXPECT_EQ(parsed->help.at("pdpool_router_requests_total"),
            "Client API requests finished, by HTTP status code");

  const PromSample* ok = Find(*parsed, "pdpool_router_requests_total", {{"code", "200"}});
  ASSERT_NE(ok, nullptr);
  EXPECT_EQ(ok->value, 41);
  EXPECT_EQ(ok->Label("pool"), "llama");
  EXPECT_EQ(ok->labels.size(), 2u);
  EXPECT_FALSE(ok->timestamp_ms.has_value());
  const PromSample* inf = Find(*parsed, "pdpool_router_ttft_seconds_bucket", {{"le", "+Inf"}});
  ASSERT_NE(inf, nullptr);
  EXPECT_EQ(inf->value, 7);
  EXPECT_EQ(Find(*parsed, "pdpool_router_ttft_seconds_sum")->value, 1.25);
  const PromSample* inflight = Find(*parsed, "pdpool_router_inflight_requests");
  ASSERT_NE(inflight, nullptr);
  EXPECT_TRUE(inflight->labels.empty());
  EXPECT_EQ(inflight->Label("pool"), "");
}

TEST(PrometheusTextTest, UnescapesLabelValuesAndHelp) {
  auto parsed = ParsePrometheusText(
      "# HELP m A \\\\ backslash\\nand a newline \\q stays\n"
      "m{path=\"C:\\\\dir\",quote=\"say \\\"hi\\\"\",nl=\"a\\nb\",brace=\"}{,=\"} 1\n");
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  ASSERT_EQ(parsed->samples.size(), 1u);
  const PromSample& s = parsed->samples[0];
  EXPECT_EQ(s.Label("path"), "C:\\dir");
  EXPECT_EQ(s.Label("quote"), "say \"hi\"");
  EXPECT_EQ(s.Label("nl"), "a\nb");
  EXPECT_EQ(s.Label("brace"), "}{,=");
  EXPECT_EQ(parsed->help.at("m"), "A \\ backslash\nand a newline \\q stays");
}

TEST(PrometheusTextTest, SpecialFloatsAndTimestamps) {
  auto parsed = ParsePrometheusText(
      "a NaN\n"
      "b +Inf\n"
      "c -Inf\n"
      "d 1.5e-3 1700000000123\n"
      "e\t-2\t-5\n"
      "f{x=\"y\",} inf\n"
      "g{ } .5\r\n"
      "  h 7  \n");
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  ASSERT_EQ(parsed->samples.size(), 8u);
  EXPECT_TRUE(std::isnan(parsed->samples[0].value));
  EXPECT_EQ(parsed->samples[1].value, std::numeric_limits<double>::infinity());
  EXPECT_EQ(parsed->samples[2].value, -std::numeric_limits<double>::infinity());
  EXPECT_DOUBLE_EQ(parsed->samples[3].value, 0.0015);
  EXPECT_EQ(parsed->samples[3].timestamp_ms, 1700000000123);
  EXPECT_EQ(parsed->samples[4].value, -2);
  EXPECT_EQ(parsed->samples[4].timestamp_ms, -5);
  EXPECT_EQ(parsed->samples[5].Label("x"), "y");
  EXPECT_TRUE(std::isinf(parsed->samples[5].value));
  EXPECT_EQ(parsed->samples[6].value, 0.5);
  EXPECT_EQ(parsed->samples[7].name, "h");
}

TEST(PrometheusTextTest, ParsePromFloatFollowsGo) {
  double v = 0;
  EXPECT_TRUE(ParsePromFloat("+Inf", &v));
  EXPECT_TRUE(std::isinf(v) && v > 0);
  EXPECT_TRUE(ParsePromFloat("-inf", &v));
  EXPECT_TRUE(std::isinf(v) && v < 0);
  EXPECT_TRUE(ParsePromFloat("nan", &v));
  EXPECT_TRUE(std::isnan(v));
  EXPECT_TRUE(ParsePromFloat("+3", &v));
  EXPECT_EQ(v, 3);
  EXPECT_TRUE(ParsePromFloat("1e400", &v));
  EXPECT_TRUE(std::isinf(v));
  for (const char* bad : {"", "+", "--1", "+-1", "1.2.3", "1x", "0.5 ", "abc"}) {
    EXPECT_FALSE(ParsePromFloat(bad, &v)) << bad;
  }
}

TEST(PrometheusTextTest, MalformedLinesNameTheLine) {
  struct Case {
    const char* text;
    const char* message_part;
  };
  const Case cases[] = {
      {"ok 1\nm{a=\"unterminated} 1\n", "line 2"},
      {"m{a=\"x\"}\n", "missing value"},
      {"m{a=\"x\"} one\n", "invalid value"},
      {"m{a=\"\\t\"} 1\n", "invalid escape"},
      {"m{a=\"x\",a=\"y\"} 1\n", "duplicate label"},
      {"m{a=\"x\" b=\"y\"} 1\n", "expected ','"},
      {"m{a=x} 1\n", "expected '\"'"},
      {"m{1a=\"x\"} 1\n", "invalid label name"},
      {"m 1 12.5\n", "invalid timestamp"},
      {"m 1 12 extra\n", "unexpected text"},
      {"1m 1\n", "invalid metric name"},
      {"# TYPE m countr\n", "unknown metric type"},
  };
  for (const Case& c : cases) {
    auto parsed = ParsePrometheusText(c.text);
    ASSERT_FALSE(parsed.ok()) << c.text;
    EXPECT_EQ(parsed.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(parsed.status().message().find(c.message_part), std::string::npos)
        << c.text << " -> " << parsed.status().message();
  }
}

TEST(PrometheusTextTest, ReadsWhatTheRouterServes) {
  agent::RouterMetrics metrics("llama");
  metrics.CountRequest(200);
  metrics.CountRequest(200);
  metrics.ObserveTtft(0.04);
  metrics.ObserveTtft(0.3);
  metrics.AddPromptTokens(100);
  auto parsed = ParsePrometheusText(metrics.Serialize());
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  const PromSample* ok =
      Find(*parsed, "pdpool_router_requests_total", {{"pool", "llama"}, {"code", "200"}});
  ASSERT_NE(ok, nullptr);
  EXPECT_EQ(ok->value, 2);
  EXPECT_EQ(Find(*parsed, "pdpool_router_ttft_seconds_bucket", {{"le", "0.05"}})->value, 1);
  EXPECT_EQ(Find(*parsed, "pdpool_router_ttft_seconds_bucket", {{"le", "+Inf"}})->value, 2);
  EXPECT_EQ(Find(*parsed, "pdpool_router_ttft_seconds_count")->value, 2);
  EXPECT_EQ(Find(*parsed, "pdpool_router_prompt_tokens_total")->value, 100);
  EXPECT_EQ(parsed->types.at("pdpool_router_ttft_seconds"), PromMetricType::kHistogram);
}

}  // namespace
}  // namespace pdpool
