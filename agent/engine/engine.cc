// Engine: see engine.h.
#include "agent/engine/engine.h"

#include <chrono>

#include "common/log.h"

namespace pdpool::agent {

Engine::Engine(std::unique_ptr<Backend> backend, SchedulerConfig config, const Clock* clock)
    : backend_(std::move(backend)),
      config_(config),
      clock_(clock),
      allocator_(backend_->kv_layout().num_blocks),
      scheduler_(config, &allocator_, clock) {}

Engine::~Engine() { Stop(); }

void Engine::Start() {
  std::lock_guard lock(mu_);
  if (thread_.joinable()) return;
  stop_ = false;
  thread_ = std::thread([this] { Loop(); });
}

void Engine::Stop() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  // Whatever is left is aborted, so no handler waits forever.
  std::vector<SequenceEvent> events;
  std::unordered_map<uint64_t, EventSink> sinks;
  {
    std::lock_guard lock(mu_);
    for (auto& [id, sink] : sinks_) scheduler_.Abort(id);
    events = scheduler_.TakePendingEvents();
    sinks.swap(sinks_);
  }
  for (const SequenceEvent& e : events) {
    auto it = sinks.find(e.id);
    if (it != sinks.end()) it->second(e);
  }
}

Status Engine::Submit(SequenceRequest request, EventSink sink) {
  std::vector<SequenceEvent> events;
  {
    std::lock_guard lock(mu_);
    if (stop_) return Status::Unavailable("engine is stopped");
    const uint64_t id = request.id;
    Status s = scheduler_.Add(std::move(request));
    if (!s.ok()) return s;
    sinks_[id] = std::move(sink);
    // A claimed reservation can finish at once (its first token ended it).
    events = scheduler_.TakePendingEvents();
    if (!events.empty()) Deliver(std::move(events));
  }
  cv_.notify_all();
  return Status::Ok();
}

void Engine::Abort(uint64_t id) {
  {
    std::lock_guard lock(mu_);
    scheduler_.Abort(id);
    Deliver(scheduler_.TakePendingEvents());
  }
  cv_.notify_all();
}

void Engine::Deliver(std::vector<SequenceEvent> events) {
  for (const SequenceEvent& e : events) {
    auto it = sinks_.find(e.id);
    if (it == sinks_.end()) continue;
    it->second(e);
    if (e.finish != FinishReason::kNone) sinks_.erase(it);
  }
}

StatusOr<Reservation> Engine::Reserve(int32_t num_tokens, Duration ttl) {
  std::lock_guard lock(mu_);
  if (stop_) return Status::Unavailable("engine is stopped");
  return scheduler_.Reserve(num_tokens, ttl);
}

bool Engine::ReleaseReservation(uint64_t id) {
  std::lock_guard lock(mu_);
  return scheduler_.ReleaseReservation(id);
}

Status Engine::BeginImport(uint64_t reservation, int32_t num_tokens, int32_t num_blocks,
                           Duration hold) {
  std::lock_guard lock(mu_);
  const Reservation* r = scheduler_.FindReservation(reservation);
  if (r == nullptr) {
    return Status::NotFound("reservation " + std::to_string(reservation) +
                            " is unknown (expired or released)");
  }
  if (r->filled) {
    return Status::InvalidArgument("reservation " + std::to_string(reservation) +
                                   " already holds its KV");
  }
  if (r->num_tokens != num_tokens || static_cast<int32_t>(r->blocks.size()) != num_blocks) {
    return Status::InvalidArgument(
        "reservation " + std::to_string(reservation) + " holds " + std::to_string(r->num_tokens) +
        " tokens in " + std::to_string(r->blocks.size()) + " blocks; the sender has " +
        std::to_string(num_tokens) + " tokens in " + std::to_string(num_blocks));
  }
  scheduler_.ExtendReservation(reservation, clock_->Now() + hold);
  return Status::Ok();
}

Status Engine::ImportBlock(uint64_t reservation, int32_t index, int32_t tokens,
                           std::string_view data) {
  // Both locks: the reservation cannot be freed (and its blocks reused) while the data lands.
  std::lock_guard lock(mu_);
  const Reservation* r = scheduler_.FindReservation(reservation);
  if (r == nullptr) {
    return Status::NotFound("reservation " + std::to_string(reservation) + " is gone");
  }
  if (index < 0 || index >= static_cast<int32_t>(r->blocks.size())) {
    return Status::InvalidArgument("block index " + std::to_string(index) + " out of range");
  }
  std::lock_guard backend_lock(backend_mu_);
  return backend_->ImportKvBlock(r->blocks[index], tokens, data);
}

Status Engine::FinishImport(uint64_t reservation) {
  std::lock_guard lock(mu_);
  return scheduler_.MarkReservationFilled(reservation);
}

void Engine::AbortImport(uint64_t reservation) {
  std::lock_guard lock(mu_);
  if (scheduler_.ReleaseReservation(reservation)) {
    LogWarn("KV transfer failed; reservation freed", {{"reservation", reservation}});
  }
}

StatusOr<std::vector<int32_t>> Engine::ReservationBlocks(uint64_t reservation) const {
  std::lock_guard lock(mu_);
  const Reservation* r = scheduler_.FindReservation(reservation);
  if (r == nullptr) {
    return Status::NotFound("reservation " + std::to_string(reservation) + " is gone");
  }
  return r->blocks;
}

std::vector<int32_t> Engine::TakeRetainedBlocks(uint64_t id) {
  std::lock_guard lock(mu_);
  return scheduler_.TakeRetainedBlocks(id);
}

Status Engine::ExportBlock(int32_t block, int32_t tokens, std::string* out) {
  std::lock_guard backend_lock(backend_mu_);
  return backend_->ExportKvBlock(block, tokens, out);
}

void Engine::ReleaseBlocks(const std::vector<int32_t>& blocks) {
  std::lock_guard lock(mu_);
  scheduler_.ReleaseBlocks(blocks);
}

EngineStats Engine::Stats() const {
  std::lock_guard lock(mu_);
  EngineStats s;
  s.running = scheduler_.running();
  s.waiting = scheduler_.waiting();
  s.reservations = scheduler_.reservations();
  s.kv_blocks_total = allocator_.total_blocks();
  s.kv_blocks_free = allocator_.free_blocks();
  s.kv_usage_ratio = allocator_.usage_ratio();
  s.outstanding_prefill_tokens = scheduler_.outstanding_prefill_tokens();
  s.preemptions = scheduler_.preemptions();
  return s;
}

void Engine::SetStepObserver(std::function<void(const StepReport&)> observer) {
  std::lock_guard lock(mu_);
  observer_ = std::move(observer);
}

void Engine::Loop() {
  std::unique_lock lock(mu_);
  while (!stop_) {
    std::optional<ScheduledStep> step = scheduler_.Schedule();
    Deliver(scheduler_.TakePendingEvents());
    if (!step) {
      // Idle: wake on new work, or now and then to expire unclaimed reservations.
      cv_.wait_for(lock, std::chrono::milliseconds(100));
      continue;
    }
    lock.unlock();
    const auto started = std::chrono::steady_clock::now();
    StatusOr<StepResult> result = [&] {
      std::lock_guard backend_lock(backend_mu_);
      return backend_->Step(step->batch);
    }();
    if (result.ok() && result->modeled_time > Duration::zero()) {
      // A modeled step lasts as long as it would on the modeled GPU.
      std::this_thread::sleep_until(started + result->modeled_time);
    }
    StepReport report;
    report.prefill_tokens = step->prefill_tokens;
    report.decode_tokens = step->decode_tokens;
    report.sequences = static_cast<int32_t>(step->batch.sequences.size());
    report.seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    report.ok = result.ok();
    if (!result.ok()) {
      LogError("engine step failed",
               {{"error", result.status().ToString()}, {"sequences", report.sequences}});
    }
    lock.lock();
    Deliver(scheduler_.Commit(*step, result));
    if (observer_) observer_(report);
  }
}

}  // namespace pdpool::agent
