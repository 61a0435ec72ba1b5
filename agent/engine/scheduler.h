// Scheduler: decides what the engine runs next (TensorRT-LLM's split: scheduling apart from
// execution). Continuous batching over a paged KV cache: every step runs one token for each
// decoding sequence and fills the rest of the token budget with prompt chunks, so new requests
// join a running batch between steps. Admission limits (waiting queue, running sequences,
// context length); when KV blocks run out, the newest sequence is preempted and recomputed later
// (vLLM's recompute policy). It also keeps the KV reservations of disaggregated serving (blocks
// a decode worker holds for a prompt whose KV a prefill worker is pushing) and expires unclaimed
// ones. Time comes from the injected Clock, so the same code runs in real and virtual time.
// Not thread-safe: the Engine calls it under its lock.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "agent/engine/backend.h"
#include "agent/engine/kv_block_allocator.h"
#include "common/clock.h"
#include "common/status.h"

namespace pdpool::agent {

struct SchedulerConfig {
  int32_t block_size = 16;
  int32_t max_model_len = 4096;       // prompt + generated tokens
  int32_t max_running = 256;          // sequences in the running batch
  int32_t max_waiting = 1024;         // admitted but not yet running
  int32_t max_batched_tokens = 2048;  // tokens per step (decode tokens + prompt chunks)
  int32_t eos_token_id = -1;          // -1: none
};

enum class FinishReason { kNone, kLength, kStop, kAborted, kError };
const char* FinishReasonName(FinishReason r);

struct SequenceRequest {
  uint64_t id = 0;  // unique among live sequences
  std::vector<int32_t> prompt;
  int32_t max_new_tokens = 16;
  SamplingParams sampling;
  bool ignore_eos = false;
  // Stop after the first sampled token and keep the prompt's KV blocks for export (a prefill
  // worker's request). Collect them with TakeRetainedBlocks.
  bool prefill_only = false;
  // Disaggregated decode: the prompt's KV is already in this reservation's blocks and
  // first_token was sampled by the prefill worker. `prompt` (when given) allows recompute if the
  // sequence is ever preempted; without it a preempted sequence fails.
  std::optional<uint64_t> reservation_id;
  int32_t first_token = -1;
};

struct SequenceEvent {
  uint64_t id = 0;
  int32_t token = -1;  // a generated token, or -1
  FinishReason finish = FinishReason::kNone;
  std::string error;  // when finish == kError
  TimePoint time{};
};

// What Schedule picked for one step, handed back to Commit with the backend's result.
struct ScheduledStep {
  StepBatch batch;
  int32_t prefill_tokens = 0;  // prompt tokens in this step
  int32_t decode_tokens = 0;   // decode sequences in this step
};

struct Reservation {
  uint64_t id = 0;
  std::vector<int32_t> blocks;
  int32_t num_tokens = 0;
  bool filled = false;  // the KV was written (MarkReservationFilled)
  TimePoint expires{};
};

class Scheduler {
 public:
  Scheduler(SchedulerConfig config, KvBlockAllocator* allocator, const Clock* clock);

  // Admits a request to the waiting queue. ResourceExhausted-like failures are kUnavailable
  // (queue full, retry elsewhere); requests that can never run are kInvalidArgument.
  Status Add(SequenceRequest request);
  // Cancels a waiting or running sequence: its blocks are freed and it finishes kAborted.
  // Unknown ids are ignored.
  void Abort(uint64_t id);

  // The next step, or nullopt when there is nothing to run.
  std::optional<ScheduledStep> Schedule();
  // Applies a step's result: appends sampled tokens, finishes sequences, frees their blocks.
  // Returns the events to deliver, in order. A failed step (error) fails its sequences.
  std::vector<SequenceEvent> Commit(const ScheduledStep& step, const StatusOr<StepResult>& result);
  // Events produced outside a step (aborts, preemption failures); drained by the engine.
  std::vector<SequenceEvent> TakePendingEvents();

  // KV blocks of a finished prefill_only sequence, now owned by the caller (free them with
  // ReleaseBlocks once exported). Empty when unknown.
  std::vector<int32_t> TakeRetainedBlocks(uint64_t id);
  void ReleaseBlocks(const std::vector<int32_t>& blocks);

  // Reservations. Reserve fails with kUnavailable when the blocks are not free.
  StatusOr<Reservation> Reserve(int32_t num_tokens, Duration ttl);
  const Reservation* FindReservation(uint64_t id) const;
  // Moves an unclaimed reservation's deadline (a transfer into it is under way); false if unknown.
  bool ExtendReservation(uint64_t id, TimePoint expires);
  Status MarkReservationFilled(uint64_t id);
  // Frees an unclaimed reservation; false when unknown (already claimed, released or expired).
  bool ReleaseReservation(uint64_t id);
  // Frees reservations past their deadline; returns how many.
  int ExpireReservations();

  int32_t running() const { return static_cast<int32_t>(running_.size()); }
  int32_t waiting() const { return static_cast<int32_t>(waiting_.size()); }
  int32_t reservations() const { return static_cast<int32_t>(reservations_.size()); }
  // Prompt tokens admitted but not yet computed (the router's prefill load signal).
  int64_t outstanding_prefill_tokens() const;
  int64_t preemptions() const { return preemptions_; }
  bool idle() const { return running_.empty() && waiting_.empty(); }
  const SchedulerConfig& config() const { return config_; }

 private:
  struct Sequence {
    uint64_t id = 0;
    std::vector<int32_t> tokens;  // prompt + generated
    int32_t num_prompt = 0;
    int32_t num_computed = 0;  // tokens whose KV is in `blocks`
    int32_t generated = 0;
    int32_t max_new_tokens = 0;
    bool can_recompute = true;
    bool prefill_only = false;
    bool ignore_eos = false;
    bool aborted = false;
    bool in_step = false;
    SamplingParams sampling;
    std::vector<int32_t> blocks;
    uint64_t admit_order = 0;
  };
  using SequencePtr = std::unique_ptr<Sequence>;

  // Makes room for `tokens` KV slots in `seq`, preempting newer sequences when needed; false
  // when even that cannot free enough.
  bool EnsureBlocks(Sequence& seq, int64_t tokens);
  bool PreemptNewestOtherThan(const Sequence& keep);
  void Finish(Sequence& seq, FinishReason reason, std::string error,
              std::vector<SequenceEvent>* out);
  void FreeSequence(Sequence& seq);

  SchedulerConfig config_;
  KvBlockAllocator* allocator_;
  const Clock* clock_;
  std::deque<SequencePtr> waiting_;
  std::vector<SequencePtr> running_;               // admission order
  std::unordered_map<uint64_t, Sequence*> by_id_;  // waiting and running
  std::unordered_map<uint64_t, std::vector<int32_t>> retained_;
  std::map<uint64_t, Reservation> reservations_;
  std::vector<SequenceEvent> pending_events_;
  uint64_t next_reservation_id_ = 1;
  uint64_t next_admit_order_ = 0;
  int64_t preemptions_ = 0;
};

}  // namespace pdpool::agent
