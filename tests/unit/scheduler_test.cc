// Scheduler: continuous batching, chunked prefill, admission, preemption, reservations, aborts,
// on a fake backend and a fake clock.
#include "agent/engine/scheduler.h"

#include <gtest/gtest.h>

#include <map>

#include "agent/engine/kv_block_allocator.h"

namespace pdpool::agent {
namespace {

// Runs a step the way a real backend would check it, and "samples" a token that depends on the
// whole sequence so far (so recompute after preemption must reproduce the same KV history).
class FakeBackend {
 public:
  explicit FakeBackend(int block_size) : block_size_(block_size) {}
  StatusOr<StepResult> Step(const StepBatch& batch) {
    StepResult r;
    for (const SequenceStep& s : batch.sequences) {
      const int end = s.start_position + static_cast<int>(s.tokens.size());
      if (static_cast<int>(s.block_table.size()) * block_size_ < end) {
        return Status::InvalidArgument("block table too short");
      }
      auto& history = history_[s.seq_id];
      history.resize(s.start_position);  // recompute starts over
      history.insert(history.end(), s.tokens.begin(), s.tokens.end());
      int64_t h = 7;
      for (int32_t t : history) h = (h * 31 + t) % 250;
      r.next_tokens.push_back(s.sample ? static_cast<int32_t>(h) : -1);
    }
    return r;
  }

 private:
  int block_size_;
  std::map<uint64_t, std::vector<int32_t>> history_;
};

struct Harness {
  SchedulerConfig config;
  FakeClock clock;
  std::unique_ptr<KvBlockAllocator> allocator;
  std::unique_ptr<Scheduler> scheduler;
  std::unique_ptr<FakeBackend> backend;
  std::map<uint64_t, std::vector<int32_t>> tokens;
  std::map<uint64_t, FinishReason> finished;
  std::vector<ScheduledStep> steps;

  explicit Harness(int blocks, SchedulerConfig c = {}) : config(c) {
    allocator = std::make_unique<KvBlockAllocator>(blocks);
    scheduler = std::make_unique<Scheduler>(config, allocator.get(), &clock);
    backend = std::make_unique<FakeBackend>(config.block_size);
  }
  void Absorb(const std::vector<SequenceEvent>& events) {
    for (const auto& e : events) {
      if (e.token >= 0) tokens[e.id].push_back(e.token);
      if (e.finish != FinishReason::kNone) finished[e.id] = e.finish;
    }
  }
  bool RunStep() {
    auto step = scheduler->Schedule();
    Absorb(scheduler->TakePendingEvents());
    if (!step) return false;
    steps.push_back(*step);
    Absorb(scheduler->Commit(*step, backend->Step(step->batch)));
    return true;
  }
  void RunAll(int limit = 10000) {
    for (int i = 0; i < limit && RunStep(); ++i) {
    }
  }
};

SequenceRequest Req(uint64_t id, int prompt_len, int max_new) {
  SequenceRequest r;
  r.id = id;
  for (int i = 0; i < prompt_len; ++i) r.prompt.push_back((i * 7 + static_cast<int>(id)) % 200);
  r.max_new_tokens = max_new;
  return r;
}

TEST(SchedulerTest, NewRequestsJoinTheRunningBatchBetweenSteps) {
  SchedulerConfig c;
  c.block_size = 4;
  Harness h(64, c);
  ASSERT_TRUE(h.scheduler->Add(Req(1, 5, 4)).ok());
  ASSERT_TRUE(h.RunStep());  // prefill of 1
  ASSERT_TRUE(h.scheduler->Add(Req(2, 3, 4)).ok());
  ASSERT_TRUE(h.RunStep());
  const ScheduledStep& second = h.steps.back();
  ASSERT_EQ(second.batch.sequences.size(), 2u);
  EXPECT_EQ(second.decode_tokens, 1);
  EXPECT_EQ(second.prefill_tokens, 3);
  h.RunAll();
  EXPECT_EQ(h.tokens[1].size(), 4u);
  EXPECT_EQ(h.tokens[2].size(), 4u);
  EXPECT_EQ(h.finished[1], FinishReason::kLength);
  EXPECT_EQ(h.allocator->free_blocks(), 64);
}

TEST(SchedulerTest, LongPromptsArePrefilledInChunksWithinTheTokenBudget) {
  SchedulerConfig c;
  c.block_size = 4;
  c.max_batched_tokens = 8;
  Harness h(64, c);
  ASSERT_TRUE(h.scheduler->Add(Req(1, 20, 2)).ok());
  h.RunAll();
  ASSERT_GE(h.steps.size(), 4u);
  EXPECT_EQ(h.steps[0].prefill_tokens, 8);
  EXPECT_FALSE(h.steps[0].batch.sequences[0].sample);
  EXPECT_EQ(h.steps[1].prefill_tokens, 8);
  EXPECT_EQ(h.steps[2].prefill_tokens, 4);
  EXPECT_TRUE(h.steps[2].batch.sequences[0].sample);
  EXPECT_EQ(h.tokens[1].size(), 2u);
}

TEST(SchedulerTest, ChunkedAndPreemptedRunsGiveTheSameTokensAsOneRequestAlone) {
  // Alone, with plenty of blocks.
  SchedulerConfig c;
  c.block_size = 4;
  std::map<uint64_t, std::vector<int32_t>> alone;
  for (uint64_t id = 1; id <= 3; ++id) {
    Harness h(64, c);
    ASSERT_TRUE(h.scheduler->Add(Req(id, 6, 10)).ok());
    h.RunAll();
    alone[id] = h.tokens[id];
  }
  // Together, with too few blocks for all three to finish at once: preemption + recompute.
  Harness h(10, c);
  for (uint64_t id = 1; id <= 3; ++id) ASSERT_TRUE(h.scheduler->Add(Req(id, 6, 10)).ok());
  h.RunAll();
  EXPECT_GT(h.scheduler->preemptions(), 0);
  for (uint64_t id = 1; id <= 3; ++id) {
    EXPECT_EQ(h.tokens[id].size(), 10u + 0) << id;
    // A preempted sequence re-emits nothing: tokens seen by the client are the final ones.
    EXPECT_EQ(h.tokens[id], alone[id]) << id;
    EXPECT_EQ(h.finished[id], FinishReason::kLength);
  }
  EXPECT_EQ(h.allocator->free_blocks(), 10);
}

TEST(SchedulerTest, AdmissionLimitsRejectClearly) {
  SchedulerConfig c;
  c.block_size = 4;
  c.max_model_len = 16;
  c.max_waiting = 2;
  Harness h(8, c);
  Status too_long = h.scheduler->Add(Req(1, 16, 1));
  EXPECT_EQ(too_long.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(too_long.message().find("max_model_len 16"), std::string::npos);
  EXPECT_EQ(h.scheduler->Add(Req(2, 0, 1)).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(h.scheduler->Add(Req(3, 4, 0)).code(), StatusCode::kInvalidArgument);
  ASSERT_TRUE(h.scheduler->Add(Req(4, 4, 1)).ok());
  ASSERT_TRUE(h.scheduler->Add(Req(5, 4, 1)).ok());
  EXPECT_EQ(h.scheduler->Add(Req(6, 4, 1)).code(), StatusCode::kUnavailable);
  EXPECT_EQ(h.scheduler->Add(Req(4, 4, 1)).code(), StatusCode::kInvalidArgument);  // id in use
  SchedulerConfig small = c;
  small.max_model_len = 1000;
  Harness tiny(2, small);  // 8 token slots
  Status no_room = tiny.scheduler->Add(Req(1, 9, 1));
  EXPECT_EQ(no_room.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(no_room.message().find("KV blocks"), std::string::npos);
}

TEST(SchedulerTest, EosStopsUnlessIgnored) {
  SchedulerConfig c;
  c.block_size = 4;
  Harness probe(64, c);
  ASSERT_TRUE(probe.scheduler->Add(Req(1, 5, 3)).ok());
  probe.RunAll();
  const int32_t second = probe.tokens[1][1];
  c.eos_token_id = second;
  Harness h(64, c);
  ASSERT_TRUE(h.scheduler->Add(Req(1, 5, 3)).ok());
  auto ignoring = Req(2, 5, 3);
  ignoring.id = 2;
  ignoring.prompt = Req(1, 5, 3).prompt;
  ignoring.ignore_eos = true;
  ASSERT_TRUE(h.scheduler->Add(ignoring).ok());
  h.RunAll();
  EXPECT_EQ(h.tokens[1].size(), 2u);
  EXPECT_EQ(h.finished[1], FinishReason::kStop);
  EXPECT_EQ(h.tokens[2].size(), 3u);
  EXPECT_EQ(h.finished[2], FinishReason::kLength);
}

TEST(SchedulerTest, AbortFreesBlocksEvenMidStep) {
  SchedulerConfig c;
  c.block_size = 4;
  Harness h(16, c);
  ASSERT_TRUE(h.scheduler->Add(Req(1, 8, 100)).ok());
  ASSERT_TRUE(h.scheduler->Add(Req(2, 8, 100)).ok());
  ASSERT_TRUE(h.RunStep());
  auto step = h.scheduler->Schedule();
  ASSERT_TRUE(step.has_value());
  h.scheduler->Abort(1);  // while its step runs
  h.Absorb(h.scheduler->Commit(*step, h.backend->Step(step->batch)));
  EXPECT_EQ(h.finished[1], FinishReason::kAborted);
  h.scheduler->Abort(2);  // between steps
  h.Absorb(h.scheduler->TakePendingEvents());
  EXPECT_EQ(h.finished[2], FinishReason::kAborted);
  EXPECT_TRUE(h.scheduler->idle());
  EXPECT_EQ(h.allocator->free_blocks(), 16);
}

TEST(SchedulerTest, PrefillOnlyKeepsTheKvBlocksForExport) {
  SchedulerConfig c;
  c.block_size = 4;
  Harness h(16, c);
  auto r = Req(1, 10, 1);
  r.prefill_only = true;
  ASSERT_TRUE(h.scheduler->Add(r).ok());
  h.RunAll();
  EXPECT_EQ(h.tokens[1].size(), 1u);
  EXPECT_EQ(h.finished[1], FinishReason::kLength);
  std::vector<int32_t> blocks = h.scheduler->TakeRetainedBlocks(1);
  EXPECT_EQ(blocks.size(), 3u);
  EXPECT_EQ(h.allocator->free_blocks(), 13);
  h.scheduler->ReleaseBlocks(blocks);
  EXPECT_EQ(h.allocator->free_blocks(), 16);
}

TEST(SchedulerTest, ReservationsExpireOnTheClockAndAreClaimedByDecode) {
  SchedulerConfig c;
  c.block_size = 4;
  Harness h(16, c);
  auto expiring = h.scheduler->Reserve(9, std::chrono::seconds(30));
  ASSERT_TRUE(expiring.ok());
  EXPECT_EQ(expiring->blocks.size(), 3u);
  EXPECT_EQ(h.allocator->free_blocks(), 13);
  h.clock.Advance(std::chrono::seconds(29));
  EXPECT_EQ(h.scheduler->ExpireReservations(), 0);
  h.clock.Advance(std::chrono::seconds(2));
  EXPECT_EQ(h.scheduler->ExpireReservations(), 1);
  EXPECT_EQ(h.allocator->free_blocks(), 16);

  auto r = h.scheduler->Reserve(6, std::chrono::seconds(30));
  ASSERT_TRUE(r.ok());
  SequenceRequest decode;
  decode.id = 5;
  decode.reservation_id = r->id;
  decode.first_token = 42;
  decode.max_new_tokens = 4;
  EXPECT_EQ(h.scheduler->Add(decode).code(), StatusCode::kInvalidArgument);  // not filled yet
  ASSERT_TRUE(h.scheduler->MarkReservationFilled(r->id).ok());
  decode.prompt = Req(5, 6, 1).prompt;
  ASSERT_TRUE(h.scheduler->Add(decode).ok());
  EXPECT_EQ(h.scheduler->reservations(), 0);
  EXPECT_FALSE(h.scheduler->ReleaseReservation(r->id));  // claimed: release is a no-op
  h.RunAll();
  EXPECT_EQ(h.tokens[5].size(), 3u);  // the first of 4 came from the prefill worker
  EXPECT_EQ(h.steps[0].decode_tokens, 1);
  EXPECT_EQ(h.allocator->free_blocks(), 16);
  EXPECT_EQ(h.scheduler->Reserve(100, std::chrono::seconds(1)).status().code(),
            StatusCode::kUnavailable);
}

// A decode sequence whose prompt KV came from a prefill worker: when blocks run out it can be
// recomputed only if the router sent the prompt along; otherwise it fails, clearly.
TEST(SchedulerTest, PreemptedImportedSequenceRecomputesOnlyWithItsPrompt) {
  for (bool with_prompt : {true, false}) {
    SchedulerConfig c;
    c.block_size = 4;
    Harness h(6, c);
    ASSERT_TRUE(h.scheduler->Add(Req(1, 4, 12)).ok());  // older: grows to 16 tokens
    ASSERT_TRUE(h.RunStep());
    auto r = h.scheduler->Reserve(4, std::chrono::seconds(30));
    ASSERT_TRUE(r.ok());
    ASSERT_TRUE(h.scheduler->MarkReservationFilled(r->id).ok());
    SequenceRequest decode;
    decode.id = 2;
    decode.reservation_id = r->id;
    decode.first_token = 9;
    decode.max_new_tokens = 12;
    if (with_prompt) decode.prompt = Req(2, 4, 1).prompt;
    ASSERT_TRUE(h.scheduler->Add(decode).ok());
    h.RunAll();
    EXPECT_GT(h.scheduler->preemptions(), 0);
    EXPECT_EQ(h.tokens[1].size(), 12u);
    EXPECT_EQ(h.finished[1], FinishReason::kLength);
    if (with_prompt) {
      EXPECT_EQ(h.finished[2], FinishReason::kLength);
      EXPECT_EQ(h.tokens[2].size(), 11u);  // + the first token from the prefill worker
    } else {
      EXPECT_EQ(h.finished[2], FinishReason::kError);
    }
    EXPECT_EQ(h.allocator->free_blocks(), 6);
  }
}

TEST(KvBlockAllocatorTest, AllOrNothingWithAccounting) {
  KvBlockAllocator a(4);
  auto two = a.Allocate(2);
  ASSERT_TRUE(two.has_value());
  EXPECT_DOUBLE_EQ(a.usage_ratio(), 0.5);
  EXPECT_FALSE(a.Allocate(3).has_value());
  EXPECT_EQ(a.free_blocks(), 2);
  a.Free(*two);
  EXPECT_EQ(a.used_blocks(), 0);
  EXPECT_EQ(BlocksForTokens(17, 16), 2);
  EXPECT_DEATH(a.Free(*two), "not in use");
}

}  // namespace
}  // namespace pdpool::agent
