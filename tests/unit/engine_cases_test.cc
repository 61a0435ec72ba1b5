// Tests for engine_bench's cases and counting (bench/gpu/engine_cases.h): --rows selection, the
// roofline floors reproducing TARGETS.md's Engine table from its measured H200 ceilings, the
// targets, reading the peer's JSON, and the report's per-row numbers.
#include "bench/gpu/engine_cases.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "agent/model/model_config.h"

namespace pdpool::bench::engine {
namespace {

agent::ModelConfig Llama8B() {
  auto m = agent::ModelConfigFromPreset("llama-3.1-8b");
  EXPECT_TRUE(m.ok());
  return *m;
}

// TARGETS.md "Hardware": measured on a lent H200.
Ceilings TargetsH200() {
  Ceilings c;
  c.copy_bytes_per_s = 4.24e12;
  c.gemm_flops_per_s = 796e12;
  return c;
}

TEST(EngineCases, DefaultGridIsTheIssues) {
  const std::vector<EngineCase> cases = DefaultCases();
  ASSERT_EQ(cases.size(), 11u);
  std::vector<std::string> names;
  for (const EngineCase& c : cases) names.push_back(c.Name());
  EXPECT_EQ(names, (std::vector<std::string>{"decode:1:1024", "decode:8:1024", "decode:32:1024",
                                             "decode:64:1024", "decode:1:2048", "decode:8:2048",
                                             "decode:32:2048", "decode:64:2048", "prefill:512",
                                             "prefill:2048", "prefill:8192"}));
}

TEST(EngineCases, SelectRows) {
  auto some = SelectRows("decode:1:1024, prefill:8192,decode:1:1024");
  ASSERT_TRUE(some.ok()) << some.status().ToString();
  ASSERT_EQ(some->size(), 2u);
  EXPECT_EQ((*some)[0], DecodeCase(1, 1024));
  EXPECT_EQ((*some)[1], PrefillCase(8192));
  auto prefill = SelectRows("prefill");
  ASSERT_TRUE(prefill.ok());
  EXPECT_EQ(prefill->size(), 3u);
  auto all = SelectRows("");
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->size(), 11u);
  for (const char* bad : {"decode:0:1024", "decode:8", "prefill:x", "bogus", "prefill:-1"}) {
    auto r = SelectRows(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_NE(r.status().message().find(bad), std::string::npos) << r.status().message();
  }
}

// TARGETS.md's Engine table: floors 3.8 ms (decode b1 c1024), 7.9 ms (decode b64 c2048),
// 188 ms (prefill 8192) at 4.24 TB/s and 796 TFLOP/s.
TEST(EngineCases, FloorsReproduceTargetsTable) {
  const agent::ModelConfig m = Llama8B();
  EXPECT_NEAR(FloorSeconds(CountCase(m, DecodeCase(1, 1024)), TargetsH200()) * 1e3, 3.8, 0.05);
  EXPECT_NEAR(FloorSeconds(CountCase(m, DecodeCase(64, 2048)), TargetsH200()) * 1e3, 7.9, 0.1);
  EXPECT_NEAR(FloorSeconds(CountCase(m, PrefillCase(8192)), TargetsH200()) * 1e3, 188, 1.0);
  // Decode is bandwidth-bound, prefill compute-bound.
  const CaseCount d = CountCase(m, DecodeCase(64, 2048));
  EXPECT_GT(d.bytes / 4.24e12, d.flops / 796e12);
  const CaseCount p = CountCase(m, PrefillCase(8192));
  EXPECT_GT(p.flops / 796e12, p.bytes / 4.24e12);
  // KV bytes per token of the 8B shape (TARGETS.md): 131072.
  EXPECT_DOUBLE_EQ(d.bytes - 2.0 * m.ParamCount(), 64.0 * 2048 * 131072);
  // The exact count leaves out the embedding gather and LM head on all but the last token.
  EXPECT_LT(p.exact_flops, p.flops);
  EXPECT_NEAR(p.exact_flops / p.flops, 0.885, 0.01);
}

TEST(EngineCases, TargetsOnlyOnTheTargetsRowsOfThe8B) {
  EXPECT_DOUBLE_EQ(TargetFor("llama-3.1-8b", DecodeCase(1, 1024))->min_fraction, 0.85);
  EXPECT_DOUBLE_EQ(TargetFor("llama-3.1-8b", DecodeCase(64, 2048))->min_fraction, 0.83);
  EXPECT_DOUBLE_EQ(TargetFor("llama-3.1-8b", PrefillCase(8192))->min_fraction, 0.87);
  EXPECT_FALSE(TargetFor("llama-3.1-8b", DecodeCase(8, 1024)).has_value());
  EXPECT_FALSE(TargetFor("llama-3.2-1b", DecodeCase(1, 1024)).has_value());
}

TEST(EngineCases, ParsesThePeersJson) {
  const Json doc = Json::parse(R"({
    "device": "NVIDIA H200", "d2d_bw": 4.2e12, "bf16_peak": 7.9e14, "preset": "llama-3.1-8b",
    "params": 8030261248,
    "rows": [
      {"phase": "prefill", "batch": 1, "tokens": 8192, "ms": 254.0, "tok_s": 1, "mfu": 0.5},
      {"phase": "decode", "batch": 64, "tokens": 2048, "ms": 67.0, "tok_s": 1, "mbu": 0.1}
    ]})");
  auto peer = ParsePeerJson(doc, "peer.json");
  ASSERT_TRUE(peer.ok()) << peer.status().ToString();
  EXPECT_EQ(peer->device, "NVIDIA H200");
  EXPECT_DOUBLE_EQ(peer->copy_bytes_per_s, 4.2e12);
  EXPECT_DOUBLE_EQ(peer->ms_by_case.at("prefill:8192"), 254.0);
  EXPECT_DOUBLE_EQ(peer->ms_by_case.at("decode:64:2048"), 67.0);

  auto bad = ParsePeerJson(Json::parse(R"({"rows": [{"phase": "x", "batch": 1, "tokens": 2,
                                           "ms": 1}]})"),
                           "peer.json");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("rows[0].phase"), std::string::npos);
  EXPECT_FALSE(ParsePeerJson(Json::parse(R"({"device": "x"})"), "peer.json").ok());
}

TEST(EngineCases, ReportRowsCarryFloorTargetAndPeer) {
  Report r;
  r.tool = "engine_bench";
  r.preset = "llama-3.1-8b";
  r.model = Llama8B();
  r.ceilings = TargetsH200();
  PeerResults peer;
  peer.ms_by_case["decode:1:1024"] = 20.8;
  r.peer = peer;
  MeasuredRow met;
  met.c = DecodeCase(1, 1024);
  met.samples_ms = {4.6, 4.4, 4.5};
  MeasuredRow missing;
  missing.c = PrefillCase(8192);
  missing.error = "skipped";
  r.rows = {met, missing};
  const Json doc = ReportToJson(r);
  const Json& row = doc.at("rows").at(0);
  EXPECT_EQ(row.at("name"), "decode:1:1024");
  EXPECT_DOUBLE_EQ(row.at("ms").get<double>(), 4.5);
  EXPECT_DOUBLE_EQ(row.at("ms_min").get<double>(), 4.4);
  const double floor_ms = row.at("floor_ms").get<double>();
  EXPECT_NEAR(row.at("floor_fraction").get<double>(), floor_ms / 4.5, 1e-12);
  EXPECT_EQ(row.at("target_met").get<bool>(), floor_ms / 4.5 >= 0.85);
  EXPECT_NEAR(row.at("ratio_vs_peer").get<double>(), 4.5 / 20.8, 1e-12);
  EXPECT_NEAR(row.at("peer_floor_fraction").get<double>(), floor_ms / 20.8, 1e-12);
  const Json& none = doc.at("rows").at(1);
  EXPECT_TRUE(none.at("ms").is_null());
  EXPECT_TRUE(none.at("target_met").is_null());
  EXPECT_EQ(none.at("error"), "skipped");
  EXPECT_TRUE(none.at("peer_ms").is_null());
}

}  // namespace
}  // namespace pdpool::bench::engine
