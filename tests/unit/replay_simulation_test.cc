// The replay harness's simulation (bench/replay/simulation.h): requests through the real
// scheduler on a virtual clock, timed exactly as the sim PerfModel prices each step and each KV
// push; GPU-seconds as GPUs held over time; scaling that waits for worker start, drains on
// scale-down, and moves workers in place — with no request lost.
#include <gtest/gtest.h>

#include <chrono>
#include <functional>

#include "bench/replay/simulation.h"
#include "bench/replay/static_peak_policy.h"

namespace pdpool::bench::replay {
namespace {

double Seconds(Duration d) { return std::chrono::duration<double>(d).count(); }

Scenario SmallScenario() {
  Scenario sc;
  sc.model_name = "llama-3.1-8b";
  sc.model = *agent::ModelConfigFromPreset("llama-3.1-8b");
  sc.gpu = "H100";
  sc.prefill_tp = 1;
  sc.decode_tp = 1;
  sc.gpus = 8;
  sc.scheduler.max_batched_tokens = 2048;
  sc.scheduler.max_running = 64;
  sc.scheduler.max_model_len = 4096;
  sc.ttft_s = 2;
  sc.tpot_s = 0.1;
  sc.worker_start_s = 30;
  return sc;
}

// A policy that follows a script: the decision at tick i is script(i, input).
class ScriptedPolicy final : public ScalingPolicy {
 public:
  ScriptedPolicy(int p, int d, double interval,
                 std::function<PolicyDecision(int, const PolicyInput&)> script)
      : p_(p), d_(d), interval_(interval), script_(std::move(script)) {}
  std::string Name() const override { return "scripted"; }
  double IntervalSeconds() const override { return interval_; }
  double SignalsWindowSeconds() const override { return window > 0 ? window : interval_; }
  int InitialPrefill() const override { return p_; }
  int InitialDecode() const override { return d_; }
  PolicyDecision Decide(const PolicyInput& in) override {
    inputs.push_back(in);
    return script_(tick_++, in);
  }
  std::vector<PolicyInput> inputs;
  double window = 0;

 private:
  int p_, d_;
  double interval_;
  int tick_ = 0;
  std::function<PolicyDecision(int, const PolicyInput&)> script_;
};

TEST(ReplaySimulationTest, OneRequestTakesExactlyItsModeledTime) {
  const Scenario sc = SmallScenario();
  const std::vector<TraceRequest> trace = {{0.0, 100, 5}};
  FixedPolicy policy("fixed", 1, 1);
  SimulationOptions options;
  options.keep_outcomes = true;
  options.verify_backend = true;  // SimBackend::Step agrees with the replay's step times
  Simulation sim(sc, trace, &policy, options);
  auto result = sim.Run();
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  ASSERT_EQ(sim.outcomes().size(), 1u);
  const RequestOutcome& o = sim.outcomes()[0];
  ASSERT_TRUE(o.completed);

  auto perf = MakePerfModel(sc, 1);
  ASSERT_TRUE(perf.ok());
  const int64_t bytes = int64_t{100} * perf->KvBytesPerTokenPerGpu();
  const double ttft = Seconds(perf->StepTime({agent::SeqWork{100, 0, true}})) +
                      Seconds(perf->KvTransferTime(bytes));
  EXPECT_NEAR(o.ttft_s, ttft, 1e-8);
  // Four decode steps after the prefill's token, each one token after a growing context.
  double decode = 0;
  for (int k = 0; k < 4; ++k) decode += Seconds(perf->StepTime({agent::SeqWork{1, 100 + k, true}}));
  EXPECT_NEAR(o.tpot_s, decode / 4, 1e-8);
  EXPECT_EQ(result->summary.met_slo, 1);
  EXPECT_EQ(result->summary.good_output_tokens, 5);
  // Two 1-GPU workers held for the whole run.
  EXPECT_NEAR(result->summary.gpu_seconds, 2 * result->summary.duration_s, 1e-9);
  EXPECT_NEAR(result->summary.duration_s, ttft + decode, 1e-6);
}

std::vector<TraceRequest> Steady(double rate, double seconds, int prompt, int output) {
  std::vector<TraceRequest> t;
  for (int i = 0; i < static_cast<int>(rate * seconds); ++i) {
    t.push_back({i / rate, prompt, output});
  }
  return t;
}

TEST(ReplaySimulationTest, EveryRequestFinishesAndOneTokenOutputsNeedNoDecode) {
  const Scenario sc = SmallScenario();
  std::vector<TraceRequest> trace = Steady(20, 30, 300, 40);
  for (size_t i = 0; i < trace.size(); i += 7) trace[i].output_tokens = 1;
  FixedPolicy policy("fixed", 1, 1);
  Simulation sim(sc, trace, &policy);
  auto result = sim.Run();
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_EQ(result->summary.requests, static_cast<int64_t>(trace.size()));
  EXPECT_EQ(result->summary.completed, result->summary.requests);
  int64_t tokens = 0;
  for (const TraceRequest& r : trace) tokens += r.output_tokens;
  EXPECT_EQ(result->summary.output_tokens, tokens);
}

TEST(ReplaySimulationTest, ScaleUpServesOnlyAfterWorkerStartAndCountsGpusFromTheRequest) {
  Scenario sc = SmallScenario();
  sc.worker_start_s = 30;
  const std::vector<TraceRequest> trace = Steady(10, 100, 200, 20);
  ScriptedPolicy policy(1, 1, 10, [](int tick, const PolicyInput& in) {
    PolicyDecision d{in.prefill.desired, in.decode.desired, 0, "hold"};
    if (tick == 0) d.prefill = 2;  // at t = 10 s
    return d;
  });
  Simulation sim(sc, trace, &policy);
  auto result = sim.Run();
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_EQ(result->workers_started, 1);
  EXPECT_EQ(result->scale_actions, 1);
  EXPECT_EQ(result->summary.completed, result->summary.requests);
  // The policy saw the new worker starting, then ready 30 s after it was asked for.
  ASSERT_GE(policy.inputs.size(), 6u);
  EXPECT_EQ(policy.inputs[1].prefill.desired, 2);  // t = 20 s
  EXPECT_EQ(policy.inputs[1].prefill.ready, 1);
  EXPECT_EQ(policy.inputs[1].prefill.starting, 1);
  EXPECT_EQ(policy.inputs[2].prefill.ready, 1);  // t = 30 s: still loading
  EXPECT_EQ(policy.inputs[3].prefill.ready, 2);  // t = 40 s: serving
  EXPECT_EQ(policy.inputs[1].gpus_held, 3);
  // GPUs: 2 from t = 0, 3 from t = 10 s (the new worker holds its GPU while it loads).
  const double end = result->summary.duration_s;
  EXPECT_NEAR(result->summary.gpu_seconds, 2 * 10 + 3 * (end - 10), 1e-6);
  EXPECT_EQ(result->peak_gpus, 3);
}

TEST(ReplaySimulationTest, ScaleDownDrainsWithoutLosingRequests) {
  const Scenario sc = SmallScenario();
  const std::vector<TraceRequest> trace = Steady(30, 60, 500, 200);
  ScriptedPolicy policy(2, 3, 15, [](int tick, const PolicyInput& in) {
    PolicyDecision d{in.prefill.desired, in.decode.desired, 0, "hold"};
    if (tick == 0) d.decode = 1;  // two decode workers drain at t = 15 s
    return d;
  });
  Simulation sim(sc, trace, &policy);
  auto result = sim.Run();
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_EQ(result->summary.completed, result->summary.requests);
  EXPECT_EQ(result->summary.failed, 0);
  ASSERT_GE(policy.inputs.size(), 2u);
  EXPECT_EQ(policy.inputs[1].decode.desired, 1);
  // The drained workers held their GPUs a while after t = 15 s, then let them go.
  EXPECT_GT(result->summary.gpu_seconds, 5 * 15 + 3 * (result->summary.duration_s - 15));
  EXPECT_LT(result->summary.gpu_seconds, 5 * result->summary.duration_s);
}

TEST(ReplaySimulationTest, InPlaceMoveSwitchesRoleAfterItsDrainPlusMoveTime) {
  Scenario sc = SmallScenario();
  sc.move_s = 1;
  const std::vector<TraceRequest> trace = Steady(20, 60, 400, 50);
  ScriptedPolicy policy(1, 2, 5, [](int tick, const PolicyInput& in) {
    PolicyDecision d{in.prefill.desired, in.decode.desired, 0, "hold"};
    if (tick == 1) {  // t = 10 s
      d.prefill = 2;
      d.decode = 1;
      d.moves_to_prefill = 1;
    }
    return d;
  });
  Simulation sim(sc, trace, &policy);
  auto result = sim.Run();
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_EQ(result->moves, 1);
  EXPECT_EQ(result->workers_started, 0);  // no new pod
  EXPECT_EQ(result->summary.completed, result->summary.requests);
  ASSERT_GE(policy.inputs.size(), 4u);
  // The move is seconds (drain + 1 s): by the next decision the worker serves prefill.
  EXPECT_EQ(policy.inputs[2].prefill.desired, 2);
  EXPECT_EQ(policy.inputs[2].decode.desired, 1);
  EXPECT_EQ(policy.inputs[3].prefill.ready, 2);
  // GPUs never changed: 3 workers of 1 GPU throughout.
  EXPECT_NEAR(result->summary.gpu_seconds, 3 * result->summary.duration_s, 1e-6);
}

TEST(ReplaySimulationTest, SignalsReportTheWindowsLoad) {
  const Scenario sc = SmallScenario();
  const std::vector<TraceRequest> trace = Steady(10, 200, 300, 30);
  ScriptedPolicy policy(1, 1, 15, [](int, const PolicyInput& in) {
    return PolicyDecision{in.prefill.desired, in.decode.desired, 0, "hold"};
  });
  policy.window = 60;
  Simulation sim(sc, trace, &policy);
  auto result = sim.Run();
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  ASSERT_GE(policy.inputs.size(), 10u);
  const PolicyInput& in = policy.inputs[8];  // t = 135 s: warm workers, steady load
  EXPECT_NEAR(in.signals.request_rate, 10, 0.5);
  EXPECT_NEAR(in.signals.mean_prompt_tokens, 300, 1e-9);
  EXPECT_NEAR(in.signals.mean_output_tokens, 30, 1e-9);
  EXPECT_EQ(in.signals.prefill.warm_workers, 1);
  EXPECT_NEAR(in.signals.prefill.tokens_per_second, 3000, 150);
  EXPECT_NEAR(in.signals.decode.tokens_per_second, 290, 20);  // 29 of 30 tokens decode
  EXPECT_GT(in.signals.decode.mean_batch, 1);
  EXPECT_GT(in.signals.ttft_seconds, 0);
  EXPECT_LT(in.signals.ttft_seconds, sc.ttft_s);
  // Before the window fills (t = 30 s of a 60 s window) rates are over the time there was.
  EXPECT_NEAR(policy.inputs[1].signals.window_seconds, 30, 1e-9);
  EXPECT_NEAR(policy.inputs[1].signals.request_rate, 10, 0.7);
  EXPECT_NEAR(policy.inputs[1].signals.prefill.tokens_per_second, 3000, 250);
}

}  // namespace
}  // namespace pdpool::bench::replay
