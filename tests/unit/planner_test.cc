// Planner, CapacityModel and LoadForecaster on fake signals and a fake timeline: step up, step
// down after the stabilization window, oscillating load (no flapping), GPU budget exhausted,
// metrics unavailable (hold), warm-up samples ignored, in-place moves, pending guard.
#include "controller/planner/planner.h"

#include <gtest/gtest.h>

#include "agent/engine/sim/calibration.h"
#include "agent/engine/sim/gpu_catalog.h"
#include "agent/model/model_config.h"

namespace pdpool::controller::planner {
namespace {

using std::chrono::seconds;

agent::PerfModel Perf70bGb200Tp2() {
  auto model = agent::ModelConfigFromPreset("llama-3.1-70b");
  auto gpu = agent::LookupGpu("gb200");
  auto calibration = agent::ParseCalibration(agent::BuiltinCalibrationJson(), "built-in");
  EXPECT_TRUE(model.ok() && gpu.ok() && calibration.ok());
  return agent::PerfModel(*model, *gpu, calibration->For("gb200"), 2);
}

CapacitySettings Slo() {
  CapacitySettings s;
  s.ttft_seconds = 2.0;
  s.tpot_seconds = 0.1;
  s.percentile = 90;
  return s;
}

PlannerSettings Settings() {
  PlannerSettings s;
  s.interval = seconds(15);
  s.scale_down_stabilization = seconds(300);
  return s;
}

// Signals of a pool serving `rate` req/s of 1000-token prompts and 200-token outputs within
// the SLO, with quiet queues.
PoolSignals Load(double rate) {
  PoolSignals s;
  s.window_seconds = 15;
  s.request_rate = rate;
  s.mean_prompt_tokens = 1000;
  s.mean_output_tokens = 200;
  s.ttft_seconds = 0.3;
  s.tpot_seconds = 0.05;
  s.prefill.requests_waiting = 0;
  return s;
}

RoleState Role(int current, int max = 16) { return RoleState{current, current, 1, max, 2}; }

class PlannerTest : public ::testing::Test {
 protected:
  PlannerTest() : planner_(Settings(), CapacityModel(Perf70bGb200Tp2(), Slo())) {}

  PlannerDecision Step(double rate, int gpu_limit = 0) {
    PlannerInput in;
    in.now = now_;
    in.signals = Load(rate);
    in.prefill = Role(prefill_);
    in.decode = Role(decode_);
    in.gpu_limit = gpu_limit;
    PlannerDecision d = planner_.Decide(in);
    prefill_ = d.prefill;
    decode_ = d.decode;
    now_ += seconds(15);
    return d;
  }

  Planner planner_;
  WallTime now_ = WallTime{} + seconds(1'000'000);
  int prefill_ = 1;
  int decode_ = 1;
};

TEST(CapacityModelTest, PrefillCapacityShrinksWithTighterTtftAndLongerPrompts) {
  CapacitySettings loose = Slo();
  CapacitySettings tight = Slo();
  tight.ttft_seconds = 0.3;
  CapacityModel a(Perf70bGb200Tp2(), loose), b(Perf70bGb200Tp2(), tight);
  EXPECT_GT(a.PrefillTokensPerSecond(1000), 0);
  EXPECT_GT(a.PrefillTokensPerSecond(1000), b.PrefillTokensPerSecond(1000));
  // Utilization below 1: never more than the engine's raw prefill rate.
  const double raw =
      1000 / std::chrono::duration<double>(a.prefill_perf().PrefillTime(1000)).count();
  EXPECT_LT(a.PrefillTokensPerSecond(1000), raw);
  EXPECT_GT(a.PrefillTokensPerSecond(1000), 0.5 * raw);  // 2 s of slack allows a busy replica
}

TEST(CapacityModelTest, DecodeBatchMeetsTpotAndFitsTheKvCache) {
  CapacityModel model(Perf70bGb200Tp2(), Slo());
  const int32_t batch = model.DecodeBatchAtTarget(1100);
  ASSERT_GT(batch, 1);
  const double step = std::chrono::duration<double>(
                          model.decode_perf().DecodeStepTime(batch, int64_t{batch} * 1100))
                          .count();
  EXPECT_LE(step, 0.1 * 0.8);
  EXPECT_LE(int64_t{batch} * 1100, model.decode_perf().KvCapacityTokens(0.9));
  // Longer contexts: fewer sequences fit the time and the cache.
  EXPECT_LT(model.DecodeBatchAtTarget(100'000), batch);
  EXPECT_NEAR(model.DecodeTokensPerSecond(1100), batch / step, 1e-6 * batch / step);
}

TEST(CapacityModelTest, ImpossibleSloGivesZeroCapacity) {
  CapacitySettings s = Slo();
  s.tpot_seconds = 1e-4;
  s.ttft_seconds = 1e-3;
  CapacityModel model(Perf70bGb200Tp2(), s);
  EXPECT_EQ(model.DecodeTokensPerSecond(1000), 0);
  EXPECT_EQ(model.PrefillTokensPerSecond(1000), 0);
}

TEST(CapacityModelTest, ObservedSlowStepsLowerCapacity) {
  CapacityModel model(Perf70bGb200Tp2(), Slo());
  const double before = model.DecodeTokensPerSecond(1100);
  PoolSignals s = Load(10);
  s.decode.warm_workers = 2;
  s.decode.steps_per_second = 40;
  s.decode.tokens_per_second = 40 * 32;
  s.decode.mean_batch = 32;
  const double modeled =
      std::chrono::duration<double>(model.decode_perf().DecodeStepTime(32, int64_t{32} * 1100))
          .count();
  s.decode.mean_step_seconds = 2 * modeled;  // the real engine is twice as slow
  for (int i = 0; i < 20; ++i) model.Observe(s);
  EXPECT_NEAR(model.decode_correction(), 2.0, 0.05);
  EXPECT_LT(model.DecodeTokensPerSecond(1100), 0.6 * before);
}

TEST(CapacityModelTest, RolesWithoutWarmSamplesLeaveTheModelAlone) {
  CapacityModel model(Perf70bGb200Tp2(), Slo());
  PoolSignals s = Load(10);
  // Only cold workers served: the source reports no warm workers and no step data.
  s.decode.warm_workers = 0;
  s.prefill.warm_workers = 0;
  model.Observe(s);
  // Too few steps in the window (a worker that just became warm).
  s.decode.warm_workers = 1;
  s.decode.steps_per_second = 0.5;
  s.decode.tokens_per_second = 5;
  s.decode.mean_step_seconds = 10;
  model.Observe(s);
  EXPECT_EQ(model.decode_correction(), 1.0);
  EXPECT_EQ(model.prefill_correction(), 1.0);
}

TEST(LoadForecasterTest, FollowsARampAheadOfTheLastObservation) {
  LoadForecaster f;
  for (int i = 1; i <= 10; ++i) f.Observe(10.0 * i, 1000, 200);
  EXPECT_GT(f.PredictedRate(), 100);  // trend carried one interval ahead
  EXPECT_LT(f.PredictedRate(), 120);  // damped
  EXPECT_NEAR(f.PredictedPromptTokens(), 1000, 1e-9);
}

TEST(LoadForecasterTest, StepUpIsNeverUnderForecastAndNanLengthsKeepThePrevious) {
  LoadForecaster f;
  for (int i = 0; i < 5; ++i) f.Observe(5, 800, 100);
  f.Observe(50, kNoValue, kNoValue);
  EXPECT_GE(f.PredictedRate(), 50);
  EXPECT_NEAR(f.PredictedPromptTokens(), 800, 1e-9);
  EXPECT_NEAR(f.PredictedOutputTokens(), 100, 1e-9);
}

TEST_F(PlannerTest, LoadStepScalesBothRolesUpAtOnce) {
  Step(1);
  const int p1 = prefill_, d1 = decode_;
  const PlannerDecision d = Step(200);
  EXPECT_EQ(d.kind, DecisionKind::kScaleUp) << d.reason;
  EXPECT_GT(prefill_, p1);
  EXPECT_GT(decode_, d1);
  EXPECT_GE(d.predicted_request_rate, 200);  // never under the step
  EXPECT_LE(d.predicted_request_rate, 400);
  EXPECT_NE(d.reason.find("forecast"), std::string::npos);
}

TEST_F(PlannerTest, LoadDropScalesDownOnlyAfterTheStabilizationWindow) {
  for (int i = 0; i < 25; ++i) Step(40);  // past a full window at high load
  const int p = prefill_, d = decode_;
  ASSERT_GT(p + d, 2);
  int intervals = 0;
  while (prefill_ == p && decode_ == d && intervals < 60) {
    Step(1);
    ++intervals;
  }
  // 300 s window / 15 s intervals: nothing may go before 20 intervals of low load.
  EXPECT_GE(intervals, 20);
  EXPECT_LT(intervals, 60) << "never scaled down";
  EXPECT_LT(prefill_ + decode_, p + d);
}

TEST_F(PlannerTest, OscillatingLoadDoesNotFlap) {
  for (int i = 0; i < 25; ++i) Step(i % 2 ? 30 : 10);
  int changes = 0;
  int last_p = prefill_, last_d = decode_;
  for (int i = 0; i < 80; ++i) {
    Step(i % 2 ? 30 : 10);
    if (prefill_ != last_p || decode_ != last_d) ++changes;
    last_p = prefill_;
    last_d = decode_;
  }
  EXPECT_EQ(changes, 0);
}

TEST_F(PlannerTest, GpuBudgetCapsScaleUp) {
  Step(1);
  const PlannerDecision d = Step(200, /*gpu_limit=*/8);
  EXPECT_LE((prefill_ + decode_) * 2, 8);
  EXPECT_GT(d.needed_prefill + d.needed_decode, prefill_ + decode_);
  EXPECT_NE(d.reason.find("GPU budget"), std::string::npos) << d.reason;
}

TEST_F(PlannerTest, UnavailableMetricsHoldTheCurrentSize) {
  prefill_ = 3;
  decode_ = 5;
  PlannerInput in;
  in.now = now_;
  in.signals_status = Status::Unavailable("prometheus http://127.0.0.1:9: connection refused");
  in.prefill = Role(3);
  in.decode = Role(5);
  const PlannerDecision d = planner_.Decide(in);
  EXPECT_EQ(d.kind, DecisionKind::kNoMetrics);
  EXPECT_EQ(d.prefill, 3);
  EXPECT_EQ(d.decode, 5);
  EXPECT_NE(d.reason.find("connection refused"), std::string::npos);
}

TEST_F(PlannerTest, PendingReplicasAreNotAddedTwiceForTheSameBreach) {
  prefill_ = 2;
  decode_ = 2;
  PlannerInput in;
  in.now = now_;
  in.signals = Load(1);
  in.signals.ttft_seconds = 5;  // breach
  in.signals.prefill.requests_waiting = 10;
  in.prefill = RoleState{3, 2, 1, 16, 2};  // one replica still starting
  in.decode = Role(2);
  const PlannerDecision d = planner_.Decide(in);
  EXPECT_EQ(d.prefill, 3) << d.reason;
  EXPECT_EQ(d.kind, DecisionKind::kPending);
}

TEST_F(PlannerTest, LatencyBreachAddsAReplicaWhenNothingIsPending) {
  PlannerInput in;
  in.now = now_;
  in.signals = Load(1);
  in.signals.ttft_seconds = 5;
  in.signals.prefill.requests_waiting = 10;
  in.prefill = Role(2);
  in.decode = Role(2);
  const PlannerDecision d = planner_.Decide(in);
  EXPECT_EQ(d.prefill, 3) << d.reason;
  EXPECT_NE(d.reason.find("TTFT"), std::string::npos);
}

TEST_F(PlannerTest, MixShiftMovesWorkersInPlaceInsteadOfStartingPods) {
  // Long outputs: decode heavy.
  auto signals = [](double prompt, double output) {
    PoolSignals s = Load(20);
    s.mean_prompt_tokens = prompt;
    s.mean_output_tokens = output;
    return s;
  };
  PlannerInput in;
  in.gpu_limit = 24;  // 12 replicas of 2 GPUs, all held
  in.prefill = Role(2);
  in.decode = Role(10);
  in.now = now_;
  // Prompt-heavy traffic now: prefill short, decode with surplus.
  in.signals = signals(8000, 20);
  const PlannerDecision d = planner_.Decide(in);
  EXPECT_EQ(d.kind, DecisionKind::kRebalance) << d.reason;
  EXPECT_GT(d.moves_to_prefill, 0);
  EXPECT_EQ(d.prefill + d.decode, 12);
  EXPECT_EQ(d.prefill, 2 + d.moves_to_prefill);
}

TEST_F(PlannerTest, MovesNeedTheSameGpusPerReplicaAndCanBeTurnedOff) {
  PlannerInput in;
  in.gpu_limit = 24;
  in.prefill = Role(2);
  in.decode = Role(10);
  in.now = now_;
  in.signals = Load(20);
  in.signals.mean_prompt_tokens = 8000;
  in.signals.mean_output_tokens = 20;
  in.rebalance_in_place = false;
  EXPECT_EQ(planner_.Decide(in).moves_to_prefill, 0);
  in.rebalance_in_place = true;
  in.decode.gpus_per_replica = 4;
  in.gpu_limit = 44;
  EXPECT_EQ(planner_.Decide(in).moves_to_prefill, 0);
}

TEST_F(PlannerTest, NoScaleDownWhileTheRoleMissesItsSlo) {
  prefill_ = 6;
  decode_ = 6;
  for (int i = 0; i < 30; ++i) {
    PlannerInput in;
    in.now = now_;
    in.signals = Load(0.5);
    in.signals.tpot_seconds = 0.5;  // decode breaching (say a noisy neighbour)
    in.prefill = Role(prefill_);
    in.decode = Role(decode_);
    const PlannerDecision d = planner_.Decide(in);
    prefill_ = d.prefill;
    decode_ = d.decode;
    now_ += seconds(15);
  }
  EXPECT_GE(decode_, 6);
  EXPECT_LT(prefill_, 6);  // the healthy role still scales down
}

}  // namespace
}  // namespace pdpool::controller::planner
