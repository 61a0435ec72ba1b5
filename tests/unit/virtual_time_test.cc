// The serving code in virtual time: the real Scheduler over the sim backend on a FakeClock that
// advances by each step's modeled time — the loop the planner's trace replay drives. A whole
// burst of 70B requests on modeled H200s runs with no waiting, and its timeline is the sum of
// the modeled steps.
#include <gtest/gtest.h>

#include <map>

#include "agent/engine/kv_block_allocator.h"
#include "agent/engine/scheduler.h"
#include "agent/engine/sim/sim_backend.h"

namespace pdpool::agent {
namespace {

TEST(VirtualTimeTest, SchedulerOverSimBackendRunsOnAFakeClock) {
  SimBackendOptions options;
  options.model = *ModelConfigFromPreset("llama-3.1-70b");
  options.gpu = "H200";
  options.tensor_parallel = 4;
  options.max_blocks = 4096;
  auto backend = NewSimBackend(options);
  ASSERT_TRUE(backend.ok()) << backend.status().ToString();
  const PerfModel* perf = SimPerfModel(**backend);
  ASSERT_NE(perf, nullptr);

  FakeClock clock;
  KvBlockAllocator allocator((*backend)->kv_layout().num_blocks);
  SchedulerConfig config;
  config.block_size = (*backend)->kv_layout().block_size;
  config.max_model_len = 8192;
  config.max_batched_tokens = 4096;
  Scheduler scheduler(config, &allocator, &clock);

  const TimePoint start = clock.Now();
  constexpr int kRequests = 8;
  for (uint64_t id = 1; id <= kRequests; ++id) {
    SequenceRequest r;
    r.id = id;
    r.prompt.assign(512, 65);
    r.max_new_tokens = 64;
    r.ignore_eos = true;
    ASSERT_TRUE(scheduler.Add(r).ok());
  }
  std::map<uint64_t, TimePoint> first_token, finished;
  std::map<uint64_t, int> tokens;
  Duration modeled_total{0};
  int steps = 0;
  while (auto step = scheduler.Schedule()) {
    StatusOr<StepResult> result = (*backend)->Step(step->batch);
    ASSERT_TRUE(result.ok()) << result.status().ToString();
    ASSERT_GT(result->modeled_time, Duration::zero());
    clock.Advance(result->modeled_time);  // virtual time: the step "took" its modeled time
    modeled_total += result->modeled_time;
    ++steps;
    for (const SequenceEvent& e : scheduler.Commit(*step, result)) {
      if (e.token >= 0 && tokens[e.id]++ == 0) first_token[e.id] = e.time;
      if (e.finish != FinishReason::kNone) finished[e.id] = e.time;
    }
  }
  ASSERT_EQ(finished.size(), static_cast<size_t>(kRequests));
  for (uint64_t id = 1; id <= kRequests; ++id) EXPECT_EQ(tokens[id], 64) << id;
  EXPECT_EQ(clock.Now() - start, modeled_total);
  // The whole prompt burst fits one step's token budget: every request's first token comes
  // after exactly one prefill step of 8 × 512 tokens, as the performance model prices it.
  std::vector<SeqWork> prefill(kRequests, SeqWork{512, 0});
  for (uint64_t id = 1; id <= kRequests; ++id) {
    EXPECT_EQ(first_token[id] - start, perf->StepTime(prefill)) << id;
  }
  EXPECT_EQ(steps, 64);  // one prefill step, then 63 batched decode steps
  EXPECT_EQ(allocator.free_blocks(), allocator.total_blocks());
}

}  // namespace
}  // namespace pdpool::agent
