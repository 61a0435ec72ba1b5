// Scheduler: see scheduler.h.
#include "agent/engine/scheduler.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>

namespace pdpool::agent {

const char* FinishReasonName(FinishReason r) {
  switch (r) {
    case FinishReason::kNone:
      return "";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kAborted:
      return "abort";
    case FinishReason::kError:
      return "error";
  }
  return "";
}

Scheduler::Scheduler(SchedulerConfig config, KvBlockAllocator* allocator, const Clock* clock)
    : config_(config), allocator_(allocator), clock_(clock) {}

Status Scheduler::Add(SequenceRequest request) {
  if (by_id_.count(request.id) != 0 || retained_.count(request.id) != 0) {
    return Status::InvalidArgument("sequence id " + std::to_string(request.id) + " is in use");
  }
  if (request.max_new_tokens < 1) {
    return Status::InvalidArgument("max_new_tokens must be at least 1, got " +
                                   std::to_string(request.max_new_tokens));
  }
  auto seq = std::make_unique<Sequence>();
  seq->id = request.id;
  seq->max_new_tokens = request.max_new_tokens;
  seq->sampling = request.sampling;
  seq->ignore_eos = request.ignore_eos;
  seq->prefill_only = request.prefill_only;

  if (request.reservation_id.has_value()) {
    auto it = reservations_.find(*request.reservation_id);
    if (it == reservations_.end()) {
      return Status::NotFound("reservation " + std::to_string(*request.reservation_id) +
                              " is unknown (expired, released, or already claimed)");
    }
    if (!it->second.filled) {
      return Status::InvalidArgument("reservation " + std::to_string(it->first) +
                                     " has not received its KV yet");
    }
    if (request.first_token < 0) {
      return Status::InvalidArgument("first_token is required with a reservation");
    }
    Reservation& r = it->second;
    seq->num_prompt = r.num_tokens;
    seq->can_recompute = static_cast<int32_t>(request.prompt.size()) == r.num_tokens;
    seq->tokens =
        seq->can_recompute ? std::move(request.prompt) : std::vector<int32_t>(r.num_tokens, 0);
    seq->tokens.push_back(request.first_token);
    seq->num_computed = r.num_tokens;
    seq->generated = 1;
    seq->blocks = std::move(r.blocks);
    reservations_.erase(it);
    seq->admit_order = next_admit_order_++;
    // The prefill worker's token may already end the sequence.
    const bool eos = !seq->ignore_eos && request.first_token == config_.eos_token_id;
    if (eos || seq->generated >= seq->max_new_tokens ||
        static_cast<int32_t>(seq->tokens.size()) >= config_.max_model_len) {
      Finish(*seq, eos ? FinishReason::kStop : FinishReason::kLength, "", &pending_events_);
      return Status::Ok();
    }
    by_id_[seq->id] = seq.get();
    running_.push_back(std::move(seq));
    return Status::Ok();
  }

  if (request.prompt.empty()) return Status::InvalidArgument("the prompt is empty");
  const int64_t prompt_len = static_cast<int64_t>(request.prompt.size());
  if (prompt_len + 1 > config_.max_model_len) {
    return Status::InvalidArgument("prompt of " + std::to_string(prompt_len) +
                                   " tokens leaves no room to generate within max_model_len " +
                                   std::to_string(config_.max_model_len));
  }
  if (BlocksForTokens(prompt_len + 1, config_.block_size) > allocator_->total_blocks()) {
    return Status::InvalidArgument("prompt of " + std::to_string(prompt_len) +
                                   " tokens needs more KV blocks than the " +
                                   std::to_string(allocator_->total_blocks()) + " this worker has");
  }
  if (waiting() >= config_.max_waiting) {
    return Status::Unavailable("waiting queue is full (" + std::to_string(config_.max_waiting) +
                               " requests)");
  }
  seq->tokens = std::move(request.prompt);
  seq->num_prompt = static_cast<int32_t>(prompt_len);
  by_id_[seq->id] = seq.get();
  waiting_.push_back(std::move(seq));
  return Status::Ok();
}

void Scheduler::Abort(uint64_t id) {
  auto found = by_id_.find(id);
  if (found == by_id_.end()) {
    auto retained = retained_.find(id);
    if (retained != retained_.end()) {
      allocator_->Free(retained->second);
      retained_.erase(retained);
    }
    return;
  }
  Sequence* seq = found->second;
  if (seq->in_step) {
    seq->aborted = true;  // Commit finishes it once the step is back
    return;
  }
  Finish(*seq, FinishReason::kAborted, "", &pending_events_);
  auto matches = [id](const SequencePtr& s) { return s->id == id; };
  waiting_.erase(std::remove_if(waiting_.begin(), waiting_.end(), matches), waiting_.end());
  running_.erase(std::remove_if(running_.begin(), running_.end(), matches), running_.end());
}

void Scheduler::FreeSequence(Sequence& seq) {
  if (!seq.blocks.empty()) allocator_->Free(seq.blocks);
  seq.blocks.clear();
}

void Scheduler::Finish(Sequence& seq, FinishReason reason, std::string error,
                       std::vector<SequenceEvent>* out) {
  if (seq.prefill_only && (reason == FinishReason::kLength || reason == FinishReason::kStop)) {
    retained_[seq.id] = std::move(seq.blocks);
    seq.blocks.clear();
  } else {
    FreeSequence(seq);
  }
  by_id_.erase(seq.id);
  SequenceEvent e;
  e.id = seq.id;
  e.finish = reason;
  e.error = std::move(error);
  e.time = clock_->Now();
  out->push_back(std::move(e));
}

bool Scheduler::PreemptNewestOtherThan(const Sequence& keep) {
  for (auto it = running_.rbegin(); it != running_.rend(); ++it) {
    Sequence& victim = **it;
    if (&victim == &keep || victim.in_step || victim.blocks.empty()) continue;
    ++preemptions_;
    if (!victim.can_recompute) {
      Finish(victim, FinishReason::kError,
             "preempted: out of KV blocks, and the prompt needed to recompute it is unknown",
             &pending_events_);
      running_.erase(std::next(it).base());
      return true;
    }
    FreeSequence(victim);
    victim.num_computed = 0;
    SequencePtr moved = std::move(*std::next(it).base());
    running_.erase(std::next(it).base());
    waiting_.push_front(std::move(moved));
    return true;
  }
  return false;
}

bool Scheduler::EnsureBlocks(Sequence& seq, int64_t tokens) {
  const int32_t need =
      BlocksForTokens(tokens, config_.block_size) - static_cast<int32_t>(seq.blocks.size());
  if (need <= 0) return true;
  while (allocator_->free_blocks() < need) {
    if (!PreemptNewestOtherThan(seq)) return false;
  }
  return allocator_->Extend(seq.blocks, need);
}

std::optional<ScheduledStep> Scheduler::Schedule() {
  ExpireReservations();
  if (running_.empty() && waiting_.empty()) return std::nullopt;
  ScheduledStep step;
  int32_t budget = config_.max_batched_tokens;

  auto add = [&](Sequence& seq, int32_t chunk) {
    SequenceStep s;
    s.seq_id = seq.id;
    s.tokens.assign(seq.tokens.begin() + seq.num_computed,
                    seq.tokens.begin() + seq.num_computed + chunk);
    s.start_position = seq.num_computed;
    s.block_table = seq.blocks;
    s.sample = seq.num_computed + chunk == static_cast<int32_t>(seq.tokens.size());
    s.sampling = seq.sampling;
    s.sample_index = seq.generated;
    if (seq.generated > 0 && chunk == 1 && s.sample) {
      ++step.decode_tokens;
    } else {
      step.prefill_tokens += chunk;
    }
    seq.in_step = true;
    step.batch.sequences.push_back(std::move(s));
    budget -= chunk;
  };

  // Running sequences first, oldest first: decode tokens, then unfinished prompt chunks.
  for (size_t i = 0; i < running_.size() && budget > 0;) {
    Sequence& seq = *running_[i];
    const int32_t remaining = static_cast<int32_t>(seq.tokens.size()) - seq.num_computed;
    const int32_t chunk = std::min(remaining, budget);
    const size_t before = running_.size();
    if (!EnsureBlocks(seq, int64_t{seq.num_computed} + chunk)) {
      // Nothing left to preempt: this one waits (recompute) unless it is alone.
      if (step.batch.sequences.empty() && running_.size() == 1) {
        Finish(seq, FinishReason::kError,
               "sequence needs more KV blocks than this worker has (" +
                   std::to_string(allocator_->total_blocks()) + ")",
               &pending_events_);
        running_.erase(running_.begin() + static_cast<std::ptrdiff_t>(i));
        continue;
      }
      ++preemptions_;
      if (!seq.can_recompute) {
        Finish(seq, FinishReason::kError,
               "preempted: out of KV blocks, and the prompt needed to recompute it is unknown",
               &pending_events_);
        running_.erase(running_.begin() + static_cast<std::ptrdiff_t>(i));
        continue;
      }
      FreeSequence(seq);
      seq.num_computed = 0;
      SequencePtr moved = std::move(running_[i]);
      running_.erase(running_.begin() + static_cast<std::ptrdiff_t>(i));
      waiting_.push_front(std::move(moved));
      continue;
    }
    // Preemption only removes sequences after i (newer, not in the step), so i stays valid.
    (void)before;
    add(seq, chunk);
    ++i;
  }

  // Then admit waiting sequences into the batch while the budget and the blocks allow. No
  // preemption for admissions: running work keeps its blocks.
  while (budget > 0 && !waiting_.empty() && running() < config_.max_running) {
    Sequence& seq = *waiting_.front();
    const int32_t remaining = static_cast<int32_t>(seq.tokens.size()) - seq.num_computed;
    const int32_t chunk = std::min(remaining, budget);
    const int32_t need = BlocksForTokens(int64_t{seq.num_computed} + chunk, config_.block_size) -
                         static_cast<int32_t>(seq.blocks.size());
    if (need > 0 && !allocator_->Extend(seq.blocks, need)) break;
    seq.admit_order = next_admit_order_++;
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
    add(*running_.back(), chunk);
  }

  if (step.batch.sequences.empty()) return std::nullopt;
  return step;
}

std::vector<SequenceEvent> Scheduler::Commit(const ScheduledStep& step,
                                             const StatusOr<StepResult>& result) {
  std::vector<SequenceEvent> events = TakePendingEvents();
  const TimePoint now = clock_->Now();
  for (size_t i = 0; i < step.batch.sequences.size(); ++i) {
    const SequenceStep& s = step.batch.sequences[i];
    auto found = by_id_.find(s.seq_id);
    if (found == by_id_.end()) continue;
    Sequence& seq = *found->second;
    seq.in_step = false;
    if (seq.aborted) {
      Finish(seq, FinishReason::kAborted, "", &events);
      continue;
    }
    if (!result.ok()) {
      Finish(seq, FinishReason::kError, result.status().ToString(), &events);
      continue;
    }
    seq.num_computed += static_cast<int32_t>(s.tokens.size());
    if (!s.sample) continue;
    const int32_t token = i < result->next_tokens.size() ? result->next_tokens[i] : -1;
    if (token < 0) {
      Finish(seq, FinishReason::kError, "backend returned no token", &events);
      continue;
    }
    seq.tokens.push_back(token);
    ++seq.generated;
    SequenceEvent e;
    e.id = seq.id;
    e.token = token;
    e.time = now;
    events.push_back(e);
    const bool eos = !seq.ignore_eos && token == config_.eos_token_id;
    if (eos) {
      Finish(seq, FinishReason::kStop, "", &events);
    } else if (seq.prefill_only || seq.generated >= seq.max_new_tokens ||
               static_cast<int32_t>(seq.tokens.size()) >= config_.max_model_len) {
      Finish(seq, FinishReason::kLength, "", &events);
    }
  }
  // Finished sequences are no longer indexed; drop them from the running batch.
  running_.erase(std::remove_if(running_.begin(), running_.end(),
                                [this](const SequencePtr& s) { return by_id_.count(s->id) == 0; }),
                 running_.end());
  for (SequenceEvent& e : TakePendingEvents()) events.push_back(std::move(e));
  return events;
}

std::vector<SequenceEvent> Scheduler::TakePendingEvents() {
  std::vector<SequenceEvent> out;
  out.swap(pending_events_);
  return out;
}

std::vector<int32_t> Scheduler::TakeRetainedBlocks(uint64_t id) {
  auto it = retained_.find(id);
  if (it == retained_.end()) return {};
  std::vector<int32_t> blocks = std::move(it->second);
  retained_.erase(it);
  return blocks;
}

void Scheduler::ReleaseBlocks(const std::vector<int32_t>& blocks) {
  if (!blocks.empty()) allocator_->Free(blocks);
}

StatusOr<Reservation> Scheduler::Reserve(int32_t num_tokens, Duration ttl) {
  if (num_tokens < 1 || num_tokens + 1 > config_.max_model_len) {
    return Status::InvalidArgument("cannot reserve KV for " + std::to_string(num_tokens) +
                                   " tokens: must be 1.." +
                                   std::to_string(config_.max_model_len - 1));
  }
  auto blocks = allocator_->Allocate(BlocksForTokens(num_tokens, config_.block_size));
  if (!blocks) {
    return Status::Unavailable("no free KV blocks for " + std::to_string(num_tokens) + " tokens (" +
                               std::to_string(allocator_->free_blocks()) + " of " +
                               std::to_string(allocator_->total_blocks()) + " blocks free)");
  }
  Reservation r;
  r.id = next_reservation_id_++;
  r.blocks = std::move(*blocks);
  r.num_tokens = num_tokens;
  r.expires = clock_->Now() + ttl;
  reservations_[r.id] = r;
  return r;
}

const Reservation* Scheduler::FindReservation(uint64_t id) const {
  auto it = reservations_.find(id);
  return it == reservations_.end() ? nullptr : &it->second;
}

bool Scheduler::ExtendReservation(uint64_t id, TimePoint expires) {
  auto it = reservations_.find(id);
  if (it == reservations_.end()) return false;
  it->second.expires = std::max(it->second.expires, expires);
  return true;
}

Status Scheduler::MarkReservationFilled(uint64_t id) {
  auto it = reservations_.find(id);
  if (it == reservations_.end()) {
    return Status::NotFound("reservation " + std::to_string(id) + " is unknown");
  }
  it->second.filled = true;
  return Status::Ok();
}

bool Scheduler::ReleaseReservation(uint64_t id) {
  auto it = reservations_.find(id);
  if (it == reservations_.end()) return false;
  allocator_->Free(it->second.blocks);
  reservations_.erase(it);
  return true;
}

int Scheduler::ExpireReservations() {
  const TimePoint now = clock_->Now();
  int expired = 0;
  for (auto it = reservations_.begin(); it != reservations_.end();) {
    if (it->second.expires <= now) {
      allocator_->Free(it->second.blocks);
      it = reservations_.erase(it);
      ++expired;
    } else {
      ++it;
    }
  }
  return expired;
}

int64_t Scheduler::outstanding_prefill_tokens() const {
  int64_t total = 0;
  for (const auto& s : waiting_) total += static_cast<int64_t>(s->tokens.size()) - s->num_computed;
  for (const auto& s : running_) {
    const int64_t remaining = static_cast<int64_t>(s->tokens.size()) - s->num_computed;
    if (remaining > 1) total += remaining;
  }
  return total;
}

}  // namespace pdpool::agent
