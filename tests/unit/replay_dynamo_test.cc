// The dynamo-style baseline of the replay harness (bench/replay/dynamo_policy.h): Dynamo's SLA
// planner replica formula on fixed inputs, its load predictors, its profile of the sim
// PerfModel, and one whole decision from fixed signals.
#include <gtest/gtest.h>

#include <cmath>

#include "bench/replay/dynamo_policy.h"

namespace pdpool::bench::replay {
namespace {

TEST(ReplayDynamoTest, FormulaPrefillFromPromptTokensPerSecond) {
  DynamoFormulaInput in;
  in.num_req = 1800;  // 10 req/s over 180 s
  in.isl = 1000;      // 10000 prompt tok/s
  in.osl = 200;       // 2000 output tok/s
  in.interval_s = 180;
  in.prefill_throughput_per_gpu = 2500;  // 10000 per 4-GPU engine
  in.decode_throughput_per_gpu = 250;    // 1000 per engine
  in.prefill_gpus = 4;
  in.decode_gpus = 4;
  Replicas r = DynamoReplicaFormula(in);
  EXPECT_EQ(r.prefill, 1);
  EXPECT_EQ(r.decode, 2);
  in.num_req = 1801;  // just over one engine
  EXPECT_EQ(DynamoReplicaFormula(in).prefill, 2);
}

TEST(ReplayDynamoTest, FormulaAppliesOnlyAPrefillCorrectionBelowOne) {
  DynamoFormulaInput in;
  in.num_req = 3600;
  in.isl = 1000;  // 20000 tok/s
  in.osl = 100;
  in.interval_s = 180;
  in.prefill_throughput_per_gpu = 2500;
  in.decode_throughput_per_gpu = 1000;
  in.prefill_gpus = 4;
  in.decode_gpus = 4;
  in.p_correction = 3.0;  // queueing: Dynamo's min(1, p) ignores it
  EXPECT_EQ(DynamoReplicaFormula(in).prefill, 2);
  in.p_correction = 0.5;  // faster than profiled (prefix hits): half the demand
  EXPECT_EQ(DynamoReplicaFormula(in).prefill, 1);
}

TEST(ReplayDynamoTest, FormulaMinimumsAndBudget) {
  DynamoFormulaInput in;
  in.num_req = 0;
  in.isl = 1000;
  in.osl = 100;
  in.prefill_throughput_per_gpu = 2500;
  in.decode_throughput_per_gpu = 1000;
  in.prefill_gpus = 4;
  in.decode_gpus = 4;
  Replicas idle = DynamoReplicaFormula(in);
  EXPECT_EQ(idle.prefill, 1);
  EXPECT_EQ(idle.decode, 1);
  // 10 + 10 engines of 4 GPUs = 80 > 72: scaled by 0.9, prefill rounded, decode gets the rest.
  in.num_req = 180 * 100;  // 100 req/s
  in.interval_s = 180;
  in.isl = 1000;                       // 100000 tok/s / 10000 per engine = 10
  in.osl = 40;                         // 4000 tok/s
  in.decode_throughput_per_gpu = 100;  // / 400 per engine = 10
  in.gpu_budget = 72;
  Replicas r = DynamoReplicaFormula(in);
  EXPECT_EQ(r.prefill, 9);
  EXPECT_EQ(r.decode, 9);
  // No profiled throughput meets the TTFT target: prefill falls back to the minimum.
  in.gpu_budget = 0;
  in.prefill_throughput_per_gpu = 0;
  EXPECT_EQ(DynamoReplicaFormula(in).prefill, 1);
}

TEST(ReplayDynamoTest, Predictors) {
  LoadPredictor constant(LoadPredictor::Kind::kConstant);
  EXPECT_DOUBLE_EQ(constant.Predict(), 0);
  constant.Add(5);
  constant.Add(7);
  EXPECT_DOUBLE_EQ(constant.Predict(), 7);
  constant.Add(std::nan(""));  // NaN counts as 0 (Dynamo's add_data_point)
  EXPECT_DOUBLE_EQ(constant.Predict(), 0);

  LoadPredictor arima(LoadPredictor::Kind::kArima);
  for (double v : {10.0, 20.0, 30.0, 40.0}) arima.Add(v);
  EXPECT_DOUBLE_EQ(arima.Predict(), 40);  // fewer than 5 points: the last one
  arima.Add(50);
  EXPECT_NEAR(arima.Predict(), 60, 1e-9);  // a steady ramp continues
  LoadPredictor flat(LoadPredictor::Kind::kArima);
  for (int i = 0; i < 10; ++i) flat.Add(i % 2 == 0 ? 100 : 120);
  const double next = flat.Predict();  // alternating: AR(1) on the differences flips it back
  EXPECT_NEAR(next, 100, 5);
}

class ReplayDynamoProfileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    scenario_.model = *agent::ModelConfigFromPreset("llama-3.1-70b");
    scenario_.gpu = "GB200";
    scenario_.scheduler.max_batched_tokens = 8192;
    scenario_.scheduler.max_running = 256;
    scenario_.scheduler.max_model_len = 16384;
    scenario_.ttft_s = 2.0;
    scenario_.tpot_s = 0.05;
    auto perf = MakePerfModel(scenario_, 4);
    ASSERT_TRUE(perf.ok()) << perf.status().ToString();
    perf_ = std::make_unique<agent::PerfModel>(*perf);
  }
  Scenario scenario_;
  std::unique_ptr<agent::PerfModel> perf_;
};

TEST_F(ReplayDynamoProfileTest, ProfileIsASweepOfThePerfModel) {
  DynamoProfile profile(scenario_, *perf_, *perf_);
  // At a grid point the profile is the PerfModel's own number.
  const double prefill_s = std::chrono::duration<double>(perf_->PrefillTime(1024, 0)).count();
  EXPECT_NEAR(profile.PrefillThroughputPerGpu(1024), 1024 / prefill_s / 4, 1e-6);
  const int64_t bytes = int64_t{1024} * perf_->KvBytesPerTokenPerGpu() * 4;
  EXPECT_NEAR(profile.PrefillTtft(1024),
              prefill_s + std::chrono::duration<double>(perf_->KvTransferTime(bytes)).count(),
              1e-9);
  EXPECT_LT(profile.PrefillTtft(512), profile.PrefillTtft(4096));
  const double itl_16 = std::chrono::duration<double>(perf_->DecodeStepTime(16, 16 * 1280)).count();
  EXPECT_NEAR(profile.DecodeItl(16, 1280), itl_16, 1e-12);
  // A looser ITL target never buys less throughput; the tightest possible is batch 1's.
  const double tight = profile.BestDecodeThroughputPerGpu(1e-6, 1280);
  const double mid = profile.BestDecodeThroughputPerGpu(0.02, 1280);
  const double loose = profile.BestDecodeThroughputPerGpu(0.05, 1280);
  const double itl_1 = std::chrono::duration<double>(perf_->DecodeStepTime(1, 1280)).count();
  EXPECT_NEAR(tight, 1 / itl_1 / 4, 1e-6);
  EXPECT_LE(tight, mid);
  EXPECT_LE(mid, loose);
}

TEST_F(ReplayDynamoProfileTest, DecisionFollowsTheFormulaOnTheObservedInterval) {
  DynamoSettings settings;
  DynamoPolicy policy(scenario_, *perf_, *perf_, settings, 2, 2);
  PolicyInput in;
  in.now_s = 180;
  in.signals.window_seconds = 180;
  in.signals.request_rate = 20;  // 3600 requests in the interval
  in.signals.mean_prompt_tokens = 1000;
  in.signals.mean_output_tokens = 200;
  const DynamoProfile& profile = policy.profile();
  in.mean_ttft_s = 4 * profile.PrefillTtft(1000);  // queueing: p = 4, ignored by min(1, p)
  in.mean_request_seconds = 10;
  in.prefill = {2, 2, 0, 0, 4};
  in.decode = {2, 2, 0, 0, 4};
  in.gpu_budget = 72;
  // Concurrency per decode worker = 3600 / 2 × 10 / 180 = 100; observed ITL = 2× profiled.
  in.mean_itl_s = 2 * profile.DecodeItl(100, 1100);
  const PolicyDecision d = policy.Decide(in);
  DynamoFormulaInput f;
  f.num_req = 3600;
  f.isl = 1000;
  f.osl = 200;
  f.interval_s = 180;
  f.p_correction = 4;
  f.prefill_throughput_per_gpu = profile.PrefillThroughputPerGpu(1000);
  f.decode_throughput_per_gpu = profile.BestDecodeThroughputPerGpu(0.05 / 2, 1100);
  f.prefill_gpus = 4;
  f.decode_gpus = 4;
  f.gpu_budget = 72;
  const Replicas want = DynamoReplicaFormula(f);
  EXPECT_EQ(d.prefill, want.prefill);
  EXPECT_EQ(d.decode, want.decode);
  EXPECT_EQ(d.moves_to_prefill, 0);
  // Prefill: 20000 prompt tok/s over the profiled per-engine rate.
  EXPECT_EQ(d.prefill,
            static_cast<int>(std::ceil(20000 / profile.PrefillThroughputPerGpu(1000) / 4)));
}

TEST_F(ReplayDynamoProfileTest, HoldsWithoutTraffic) {
  DynamoPolicy policy(scenario_, *perf_, *perf_, DynamoSettings{}, 3, 5);
  PolicyInput in;
  in.signals.window_seconds = 180;
  in.prefill = {3, 3, 0, 0, 4};
  in.decode = {5, 5, 0, 0, 4};
  in.gpu_budget = 72;
  const PolicyDecision d = policy.Decide(in);  // no samples: NaN metrics
  EXPECT_EQ(d.prefill, 3);
  EXPECT_EQ(d.decode, 5);
}

}  // namespace
}  // namespace pdpool::bench::replay
