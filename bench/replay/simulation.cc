// Simulation: the discrete-event replay (see simulation.h).
//
// Fidelity notes (what is the real code, what is reproduced):
//  - Each worker's batching, admission, KV block allocation, preemption, reservations and
//    prefill_only retention are agent::Scheduler itself.
//  - A step's modeled time is PerfModel::StepTime over the step's (new tokens, cached context,
//    sample) list — exactly what SimBackend::Step returns as modeled_time (it builds the same
//    SeqWork list) — computed here without SimBackend::Step's per-block validation, which costs
//    O(context) per sequence per step and would dominate an hour-long replay. The backend itself
//    is built with NewSimBackend (its KV layout sizes the allocator, its PerfModel prices the
//    steps and the KV pushes); --verify-backend runs every step through SimBackend::Step too and
//    checks the modeled times agree.
//  - Worker selection reproduces agent::WorkerPool's rule (WorkerPool::Pick is a method of the
//    thread-safe pool of remote workers, not a pure function): prefill = fewest outstanding
//    prompt tokens, decode = lowest KV usage (used blocks / total, reservations included), ties
//    round-robin. The router sees each worker's state through a 200 ms poll plus its own
//    counters since; here it sees the exact state (no poll lag).
//  - Request flow as GenerationFlow::StartDisaggregated: pick a prefill worker; reserve the
//    prompt's KV on the best decode worker with room (a 503 skips to the next one); prefill; push
//    the KV (the prefill worker keeps its blocks until the push is done, as the worker server
//    does); the first token reaches the router when the push is done (TTFT); decode from the
//    reservation. No worker with room → the client gets a 503 and retries after Retry-After
//    (1 s); a reservation that expired before the push (prefill queued past the TTL) fails the
//    prefill and the router retries the request (kMaxPrefillAttempts in all).
#include "bench/replay/simulation.h"

#include <time.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <deque>
#include <limits>
#include <optional>
#include <queue>

#include "agent/engine/kv_block_allocator.h"
#include "agent/engine/scheduler.h"
#include "agent/engine/sim/sim_backend.h"
#include "bench/replay/virtual_clock.h"

namespace pdpool::bench::replay {
namespace {

using controller::planner::kNoValue;
using controller::planner::PoolSignals;
using controller::planner::RoleSignals;

constexpr int32_t kToken = 65;  // every prompt and sampled token (ignore_eos: values do not matter)
constexpr int kMaxPrefillAttempts = 3;  // agent::kMaxPrefillAttempts

enum class Role : uint8_t { kPrefill = 0, kDecode = 1 };

enum class WState : uint8_t {
  kPending,    // asked for, waiting for free GPUs (holds none)
  kLoading,    // holds its GPUs, loading the model
  kReady,      // serving
  kDraining,   // being removed: finishes in-flight work, takes none
  kMoving,     // moving in place to next_role: finishes in-flight work, takes none
  kSwitching,  // drained; switches role (move_s)
  kGone,
};

enum Phase { kPhasePrefill = 0, kPhaseDecode = 1, kPhaseMixed = 2 };

struct Counters {
  double prefill_tokens = 0;
  double decode_tokens = 0;
  double steps[3] = {0, 0, 0};
  double step_seconds[3] = {0, 0, 0};
};

struct Worker {
  int id = 0;
  Role role = Role::kPrefill;
  Role next_role = Role::kPrefill;
  WState state = WState::kPending;
  int gpus = 0;
  double ready_since = -1e18;  // for the warm-up filter of the role signals
  std::unique_ptr<agent::Backend> backend;
  const agent::PerfModel* perf = nullptr;
  std::unique_ptr<agent::KvBlockAllocator> allocator;
  std::unique_ptr<agent::Scheduler> scheduler;
  bool busy = false;
  std::optional<agent::ScheduledStep> step;
  StatusOr<agent::StepResult> result{agent::StepResult{}};
  std::vector<agent::SeqWork> work;
  int64_t outstanding_prefill = 0;  // prompt tokens admitted, not yet computed
  int64_t preemptions_seen = 0;
  int pending_transfers = 0;  // KV pushes out of this prefill worker under way
  Counters counters;
  std::deque<Counters> snapshots;  // at each policy tick, newest last
};

enum class EventType : uint8_t {
  kStepDone,
  kTransferDone,
  kWorkerReady,
  kSwitchDone,
  kRetry,
  kTick,
  kTimeline,
  kScoreFrom,
};

struct Event {
  int64_t t = 0;  // ns
  uint64_t seq = 0;
  EventType type = EventType::kStepDone;
  int32_t a = 0;
  bool operator>(const Event& o) const { return t != o.t ? t > o.t : seq > o.seq; }
};

enum class ReqState : uint8_t { kWaiting, kPrefill, kTransfer, kDecode, kDone, kFailed };

struct Request {
  int64_t arrival = 0;  // ns
  int32_t prompt = 0;
  int32_t output = 0;
  int32_t prefill_w = -1;
  int32_t decode_w = -1;
  uint64_t reservation = 0;
  int64_t first = 0;
  int64_t last = 0;
  int32_t tokens = 0;
  uint8_t attempts = 0;
  ReqState state = ReqState::kWaiting;
  std::vector<int32_t> blocks;  // the prefill worker's KV blocks while the push is under way
};

// One policy interval of router-side samples.
struct Bucket {
  double completions = 0;
  double prompt_sum = 0;
  double output_sum = 0;
  double duration_sum = 0;
  double ttft_sum = 0;
  double ttft_n = 0;
  double itl_num = 0;  // Σ (last − first)
  double itl_den = 0;  // Σ (tokens − 1)
  std::vector<double> ttft;
  std::vector<double> tpot;
};

double Sec(int64_t ns) { return static_cast<double>(ns) * 1e-9; }
int64_t Ns(double s) { return static_cast<int64_t>(std::llround(s * 1e9)); }
int64_t Ns(Duration d) { return d.count(); }

double ThreadCpuSeconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + ts.tv_nsec * 1e-9;
}

}  // namespace

class Simulation::Impl {
 public:
  Impl(const Scenario& scenario, const std::vector<TraceRequest>& trace, ScalingPolicy* policy,
       SimulationOptions options)
      : sc_(scenario), trace_(trace), policy_(policy), opt_(options) {}

  StatusOr<RunResult> Run();
  const std::vector<RequestOutcome>& outcomes() const { return outcomes_; }

 private:
  // --- workers ---
  Status BuildWorker(Worker& w);
  int TpOf(Role r) const { return r == Role::kPrefill ? sc_.prefill_tp : sc_.decode_tp; }
  Worker& NewWorker(Role role);
  void BindPending();
  void SetHeld(int delta);
  void RebuildReadyLists();
  void Kick(Worker& w);
  void CheckDrained(Worker& w);
  void OnStepDone(Worker& w);
  void OnWorkerReady(Worker& w);
  void OnSwitchDone(Worker& w);

  // --- requests ---
  void Route(int32_t rid);
  Worker* PickPrefill();
  Worker* PickDecode(const std::vector<int32_t>& skip);
  void RetryLater(int32_t rid);
  void OnPrefillFinished(Worker& p, const agent::SequenceEvent& e);
  void OnTransferDone(int32_t rid);
  void Complete(int32_t rid);
  void Fail(int32_t rid);

  // --- policy ---
  void OnTick();
  PolicyInput BuildInput();
  RoleSignals RoleSignalsOf(Role role, double window_s);
  RoleView ViewOf(Role role) const;
  void Apply(const PolicyDecision& d);
  void MoveWorkers(Role from, Role to, int n);
  void Resize(Role role, int target);
  void RecordTimeline();

  void Push(int64_t t, EventType type, int32_t a) { events_.push(Event{t, next_seq_++, type, a}); }
  int64_t now() const { return now_; }

  const Scenario& sc_;
  const std::vector<TraceRequest>& trace_;
  ScalingPolicy* policy_;
  SimulationOptions opt_;

  VirtualClock clock_;
  int64_t now_ = 0;
  std::priority_queue<Event, std::vector<Event>, std::greater<Event>> events_;
  uint64_t next_seq_ = 0;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::vector<int32_t> ready_[2];  // ids of ready workers per role
  std::deque<int32_t> pending_;    // workers waiting for GPUs, FIFO
  uint64_t round_robin_ = 0;
  int gpus_held_ = 0;
  GpuAccounting gpu_;

  std::vector<Request> requests_;
  std::vector<RequestOutcome> outcomes_;
  int64_t finished_ = 0;  // done or failed
  size_t next_arrival_index_ = 0;

  Bucket current_;
  std::deque<Bucket> buckets_;  // closed intervals, newest last
  std::vector<double> scratch_;
  double last_timeline_t_ = 0;
  double gpu_seconds_before_scoring_ = 0;
  int64_t arrivals_since_timeline_ = 0;

  RunResult result_;
};

Simulation::Simulation(const Scenario& scenario, const std::vector<TraceRequest>& trace,
                       ScalingPolicy* policy, SimulationOptions options)
    : impl_(std::make_unique<Impl>(scenario, trace, policy, options)) {}
Simulation::~Simulation() = default;
StatusOr<RunResult> Simulation::Run() { return impl_->Run(); }
const std::vector<RequestOutcome>& Simulation::outcomes() const { return impl_->outcomes(); }

// ---------------------------------------------------------------------------------------------
// Workers

Status Simulation::Impl::BuildWorker(Worker& w) {
  agent::SimBackendOptions o;
  o.model = sc_.model;
  o.gpu = sc_.gpu;
  o.tensor_parallel = w.gpus;
  o.block_size = sc_.scheduler.block_size;
  o.gpu_memory_utilization = sc_.gpu_memory_utilization;
  auto backend = agent::NewSimBackend(o);
  if (!backend.ok()) return backend.status();
  w.backend = std::move(backend).value();
  w.perf = agent::SimPerfModel(*w.backend);
  w.allocator = std::make_unique<agent::KvBlockAllocator>(w.backend->kv_layout().num_blocks);
  w.scheduler = std::make_unique<agent::Scheduler>(sc_.scheduler, w.allocator.get(), &clock_);
  w.work.reserve(static_cast<size_t>(sc_.scheduler.max_running) + 8);
  return Status::Ok();
}

Worker& Simulation::Impl::NewWorker(Role role) {
  auto w = std::make_unique<Worker>();
  w->id = static_cast<int>(workers_.size());
  w->role = role;
  w->next_role = role;
  w->gpus = TpOf(role);
  w->snapshots.push_back(Counters{});  // the counters start at zero now
  workers_.push_back(std::move(w));
  return *workers_.back();
}

void Simulation::Impl::SetHeld(int delta) {
  if (opt_.fixed_budget) return;  // the whole budget is held throughout
  gpus_held_ += delta;
  gpu_.Set(Sec(now_), gpus_held_);
}

void Simulation::Impl::BindPending() {
  while (!pending_.empty()) {
    Worker& w = *workers_[static_cast<size_t>(pending_.front())];
    if (w.state != WState::kPending) {
      pending_.pop_front();
      continue;
    }
    if (gpus_held_ + w.gpus > sc_.gpus) break;  // FIFO, as pods wait for a node
    pending_.pop_front();
    w.state = WState::kLoading;
    SetHeld(w.gpus);
    Push(now_ + Ns(sc_.worker_start_s), EventType::kWorkerReady, w.id);
  }
}

void Simulation::Impl::RebuildReadyLists() {
  ready_[0].clear();
  ready_[1].clear();
  for (const auto& w : workers_) {
    if (w->state == WState::kReady) ready_[static_cast<int>(w->role)].push_back(w->id);
  }
}

void Simulation::Impl::Kick(Worker& w) {
  if (w.busy) return;
  if (w.state != WState::kReady && w.state != WState::kDraining && w.state != WState::kMoving) {
    return;
  }
  w.step = w.scheduler->Schedule();
  if (!w.step) {
    CheckDrained(w);
    return;
  }
  const auto& seqs = w.step->batch.sequences;
  w.work.resize(seqs.size());
  std::vector<int32_t>& next = w.result->next_tokens;
  next.resize(seqs.size());
  for (size_t i = 0; i < seqs.size(); ++i) {
    const agent::SequenceStep& s = seqs[i];
    w.work[i] = agent::SeqWork{static_cast<int>(s.tokens.size()), s.start_position, s.sample};
    next[i] = s.sample ? kToken : -1;
  }
  const Duration dt = w.perf->StepTime(w.work);
  if (opt_.verify_backend) {
    StatusOr<agent::StepResult> checked = w.backend->Step(w.step->batch);
    if (!checked.ok() || checked->modeled_time != dt) {
      std::fprintf(stderr, "pdpool-replay: sim backend disagrees on a step of %zu sequences: %s\n",
                   seqs.size(),
                   checked.ok() ? "modeled time differs" : checked.status().ToString().c_str());
      std::abort();
    }
  }
  w.busy = true;
  Push(now_ + std::max<int64_t>(1, Ns(dt)), EventType::kStepDone, w.id);
  const agent::ScheduledStep& st = *w.step;
  const int phase = st.decode_tokens == 0    ? kPhasePrefill
                    : st.prefill_tokens == 0 ? kPhaseDecode
                                             : kPhaseMixed;
  w.counters.steps[phase] += 1;
  w.counters.step_seconds[phase] += Sec(Ns(dt));
  w.counters.prefill_tokens += st.prefill_tokens;
  w.counters.decode_tokens += st.decode_tokens;
  ++result_.engine_steps;
  result_.sequence_steps += static_cast<int64_t>(seqs.size());
}

void Simulation::Impl::CheckDrained(Worker& w) {
  if (w.state != WState::kDraining && w.state != WState::kMoving) return;
  if (w.busy || w.pending_transfers > 0) return;
  w.scheduler->ExpireReservations();
  if (!w.scheduler->idle() || w.scheduler->reservations() > 0) return;
  if (w.state == WState::kDraining) {
    w.state = WState::kGone;
    SetHeld(-w.gpus);
    w.step.reset();
    w.scheduler.reset();
    w.allocator.reset();
    w.backend.reset();
    BindPending();
  } else {
    w.state = WState::kSwitching;
    Push(now_ + Ns(sc_.move_s), EventType::kSwitchDone, w.id);
  }
}

void Simulation::Impl::OnStepDone(Worker& w) {
  w.busy = false;
  std::vector<agent::SequenceEvent> events = w.scheduler->Commit(*w.step, w.result);
  // The step's prompt tokens are computed now (Scheduler::outstanding_prefill_tokens agrees).
  if (w.role == Role::kPrefill) w.outstanding_prefill -= w.step->prefill_tokens;
  if (w.scheduler->preemptions() != w.preemptions_seen) {
    result_.preemptions += w.scheduler->preemptions() - w.preemptions_seen;
    w.preemptions_seen = w.scheduler->preemptions();
    if (w.role == Role::kPrefill) w.outstanding_prefill = w.scheduler->outstanding_prefill_tokens();
  }
  if (w.role == Role::kPrefill) {
    for (const agent::SequenceEvent& e : events) {
      if (e.finish != agent::FinishReason::kNone) OnPrefillFinished(w, e);
    }
  } else {
    for (const agent::SequenceEvent& e : events) {
      const int32_t rid = static_cast<int32_t>(e.id - 1);
      Request& r = requests_[static_cast<size_t>(rid)];
      if (e.token >= 0) {
        ++r.tokens;
        r.last = now_;
      }
      if (e.finish == agent::FinishReason::kNone) continue;
      if (e.finish == agent::FinishReason::kLength || e.finish == agent::FinishReason::kStop) {
        Complete(rid);
      } else {
        Fail(rid);
      }
    }
  }
  Kick(w);
}

void Simulation::Impl::OnWorkerReady(Worker& w) {
  if (w.state != WState::kLoading) return;  // removed while loading
  if (Status s = BuildWorker(w); !s.ok()) {
    std::fprintf(stderr, "pdpool-replay: worker %d: %s\n", w.id, s.ToString().c_str());
    std::abort();  // the initial workers were built with the same options: a broken invariant
  }
  w.state = WState::kReady;
  w.ready_since = Sec(now_);
  RebuildReadyLists();
}

void Simulation::Impl::OnSwitchDone(Worker& w) {
  if (w.state != WState::kSwitching) return;
  w.role = w.next_role;
  w.state = WState::kReady;
  w.ready_since = Sec(now_);  // its samples start under the new role label: warm-up again
  w.outstanding_prefill = 0;
  RebuildReadyLists();
}

// ---------------------------------------------------------------------------------------------
// Requests

Worker* Simulation::Impl::PickPrefill() {
  Worker* best = nullptr;
  int64_t best_score = std::numeric_limits<int64_t>::max();
  int ties = 0;
  for (int32_t id : ready_[0]) {
    Worker* w = workers_[static_cast<size_t>(id)].get();
    const int64_t score = std::max<int64_t>(0, w->outstanding_prefill);
    if (score < best_score) {
      best_score = score;
      best = w;
      ties = 1;
    } else if (score == best_score) {
      ++ties;
    }
  }
  if (ties > 1) {  // round-robin among the ties
    int pick = static_cast<int>(round_robin_++ % static_cast<uint64_t>(ties));
    for (int32_t id : ready_[0]) {
      Worker* w = workers_[static_cast<size_t>(id)].get();
      if (std::max<int64_t>(0, w->outstanding_prefill) == best_score && pick-- == 0) return w;
    }
  }
  return best;
}

Worker* Simulation::Impl::PickDecode(const std::vector<int32_t>& skip) {
  Worker* best = nullptr;
  double best_score = std::numeric_limits<double>::infinity();
  int ties = 0;
  auto score_of = [](const Worker& w) { return w.allocator->usage_ratio(); };
  for (int32_t id : ready_[1]) {
    if (std::find(skip.begin(), skip.end(), id) != skip.end()) continue;
    Worker* w = workers_[static_cast<size_t>(id)].get();
    const double score = score_of(*w);
    if (score < best_score - 1e-12) {
      best_score = score;
      best = w;
      ties = 1;
    } else if (score <= best_score + 1e-12) {
      ++ties;
    }
  }
  if (ties > 1) {
    int pick = static_cast<int>(round_robin_++ % static_cast<uint64_t>(ties));
    for (int32_t id : ready_[1]) {
      if (std::find(skip.begin(), skip.end(), id) != skip.end()) continue;
      Worker* w = workers_[static_cast<size_t>(id)].get();
      if (std::abs(score_of(*w) - best_score) <= 1e-12 && pick-- == 0) return w;
    }
  }
  return best;
}

void Simulation::Impl::RetryLater(int32_t rid) {
  Request& r = requests_[static_cast<size_t>(rid)];
  r.state = ReqState::kWaiting;
  r.prefill_w = -1;
  r.decode_w = -1;
  ++result_.client_retries;
  Push(now_ + Ns(sc_.retry_after_s), EventType::kRetry, rid);
}

void Simulation::Impl::Route(int32_t rid) {
  Request& r = requests_[static_cast<size_t>(rid)];
  if (Sec(now_ - r.arrival) > sc_.client_timeout_s) {
    Fail(rid);
    return;
  }
  Worker* p = PickPrefill();
  if (p == nullptr) {
    RetryLater(rid);
    return;
  }
  // Reserve the prompt's KV on the best decode worker with room.
  thread_local std::vector<int32_t> skip;
  skip.clear();
  Worker* d = nullptr;
  uint64_t reservation = 0;
  const int32_t blocks_needed = agent::BlocksForTokens(r.prompt, sc_.scheduler.block_size);
  for (;;) {
    d = PickDecode(skip);
    if (d == nullptr) break;
    // The worker answers 503 exactly when its allocator has too few free blocks; checking
    // first skips building that error (a backlogged replay retries millions of times).
    if (d->allocator->free_blocks() < blocks_needed &&
        r.prompt + 1 <= sc_.scheduler.max_model_len) {
      skip.push_back(d->id);
      continue;
    }
    StatusOr<agent::Reservation> res = d->scheduler->Reserve(
        r.prompt,
        std::chrono::duration_cast<Duration>(std::chrono::duration<double>(sc_.reservation_ttl_s)));
    if (res.ok()) {
      reservation = res->id;
      break;
    }
    if (res.status().code() == StatusCode::kInvalidArgument) {
      Fail(rid);  // can never run (prompt longer than max_model_len): a 400
      return;
    }
    skip.push_back(d->id);
  }
  if (d == nullptr) {
    RetryLater(rid);
    return;
  }
  if (p->scheduler->waiting() >= sc_.scheduler.max_waiting) {  // its queue is full: 503
    d->scheduler->ReleaseReservation(reservation);
    RetryLater(rid);
    return;
  }
  agent::SequenceRequest sr;
  sr.id = static_cast<uint64_t>(rid) + 1;
  sr.prompt.assign(static_cast<size_t>(r.prompt), kToken);
  sr.max_new_tokens = 1;
  sr.ignore_eos = true;
  sr.prefill_only = true;
  Status s = p->scheduler->Add(std::move(sr));
  if (!s.ok()) {
    d->scheduler->ReleaseReservation(reservation);
    if (s.code() == StatusCode::kUnavailable) {
      RetryLater(rid);
    } else {
      Fail(rid);
    }
    return;
  }
  ++r.attempts;
  r.state = ReqState::kPrefill;
  r.prefill_w = p->id;
  r.decode_w = d->id;
  r.reservation = reservation;
  p->outstanding_prefill += r.prompt;
  Kick(*p);
}

void Simulation::Impl::OnPrefillFinished(Worker& p, const agent::SequenceEvent& e) {
  const int32_t rid = static_cast<int32_t>(e.id - 1);
  Request& r = requests_[static_cast<size_t>(rid)];
  if (e.finish != agent::FinishReason::kLength && e.finish != agent::FinishReason::kStop) {
    Worker& d = *workers_[static_cast<size_t>(r.decode_w)];
    if (d.scheduler) d.scheduler->ReleaseReservation(r.reservation);
    CheckDrained(d);
    Fail(rid);
    return;
  }
  std::vector<int32_t> blocks = p.scheduler->TakeRetainedBlocks(e.id);
  Worker& d = *workers_[static_cast<size_t>(r.decode_w)];
  const int64_t bytes = p.backend->ModeledKvBytes(r.prompt);
  const int64_t transfer = Ns(p.backend->ModeledKvTransferTime(bytes));
  // The push starts by claiming the reservation (Engine::BeginImport extends its deadline); an
  // expired one fails the prefill (502) and the router retries the request. (A decode worker
  // being removed may be gone already: its unclaimed reservations expired, so it drained.)
  if (d.scheduler == nullptr || d.scheduler->FindReservation(r.reservation) == nullptr) {
    p.scheduler->ReleaseBlocks(blocks);
    CheckDrained(d);
    ++result_.prefill_retries;
    if (r.attempts < kMaxPrefillAttempts) {
      r.state = ReqState::kWaiting;
      Route(rid);
    } else {
      Fail(rid);
    }
    return;
  }
  d.scheduler->ExtendReservation(r.reservation,
                                 clock_.Now() + Duration(transfer) + std::chrono::seconds(30));
  r.blocks = std::move(blocks);
  r.state = ReqState::kTransfer;
  ++p.pending_transfers;
  Push(now_ + std::max<int64_t>(1, transfer), EventType::kTransferDone, rid);
}

void Simulation::Impl::OnTransferDone(int32_t rid) {
  Request& r = requests_[static_cast<size_t>(rid)];
  Worker& p = *workers_[static_cast<size_t>(r.prefill_w)];
  Worker& d = *workers_[static_cast<size_t>(r.decode_w)];
  // Neither can be gone: p has this push under way, d holds the reservation it extended.
  if (p.scheduler == nullptr || d.scheduler == nullptr) {
    std::fprintf(stderr, "pdpool-replay: worker %d or %d gone during a KV push\n", p.id, d.id);
    std::abort();
  }
  p.scheduler->ReleaseBlocks(r.blocks);
  std::vector<int32_t>().swap(r.blocks);
  --p.pending_transfers;
  r.first = now_;
  r.last = now_;
  r.tokens = 1;
  current_.ttft.push_back(Sec(r.first - r.arrival));
  current_.ttft_sum += Sec(r.first - r.arrival);
  current_.ttft_n += 1;
  if (r.output <= 1) {
    d.scheduler->ReleaseReservation(r.reservation);
    Complete(rid);
    CheckDrained(d);
  } else if (!d.scheduler->MarkReservationFilled(r.reservation).ok()) {
    Fail(rid);
    CheckDrained(d);
  } else {
    agent::SequenceRequest sr;
    sr.id = static_cast<uint64_t>(rid) + 1;
    sr.prompt.assign(static_cast<size_t>(r.prompt), kToken);  // for recompute if preempted
    sr.max_new_tokens = r.output;
    sr.ignore_eos = true;
    sr.reservation_id = r.reservation;
    sr.first_token = kToken;
    Status s = d.scheduler->Add(std::move(sr));
    if (!s.ok()) {
      d.scheduler->ReleaseReservation(r.reservation);
      Fail(rid);
      CheckDrained(d);
    } else {
      r.state = ReqState::kDecode;
      Kick(d);
    }
  }
  Kick(p);
  CheckDrained(p);
}

void Simulation::Impl::Complete(int32_t rid) {
  Request& r = requests_[static_cast<size_t>(rid)];
  r.state = ReqState::kDone;
  ++finished_;
  RequestOutcome o;
  o.arrival_s = Sec(r.arrival);
  o.prompt_tokens = r.prompt;
  o.output_tokens = r.output;
  o.completed = true;
  o.ttft_s = Sec(r.first - r.arrival);
  o.tpot_s = r.tokens > 1 ? Sec(r.last - r.first) / (r.tokens - 1) : 0.0;
  outcomes_.push_back(o);
  current_.completions += 1;
  current_.prompt_sum += r.prompt;
  current_.output_sum += r.tokens;
  current_.duration_sum += Sec(r.last - r.arrival);
  current_.tpot.push_back(o.tpot_s);
  if (r.tokens > 1) {
    current_.itl_num += Sec(r.last - r.first);
    current_.itl_den += r.tokens - 1;
  }
}

void Simulation::Impl::Fail(int32_t rid) {
  Request& r = requests_[static_cast<size_t>(rid)];
  if (r.state == ReqState::kDone || r.state == ReqState::kFailed) return;
  r.state = ReqState::kFailed;
  ++finished_;
  RequestOutcome o;
  o.arrival_s = Sec(r.arrival);
  o.prompt_tokens = r.prompt;
  o.output_tokens = r.output;
  o.completed = false;
  o.ttft_s = r.tokens > 0 ? Sec(r.first - r.arrival) : -1;
  outcomes_.push_back(o);
  current_.completions += 1;  // the router counts every finished request, any code
  current_.prompt_sum += r.prompt;
  current_.output_sum += r.tokens;
}

// ---------------------------------------------------------------------------------------------
// Policy

RoleView Simulation::Impl::ViewOf(Role role) const {
  RoleView v;
  v.gpus_per_replica = TpOf(role);
  for (const auto& wp : workers_) {
    const Worker& w = *wp;
    switch (w.state) {
      case WState::kPending:
      case WState::kLoading:
        if (w.role == role) ++v.starting;
        break;
      case WState::kReady:
        if (w.role == role) ++v.ready;
        break;
      case WState::kDraining:
        if (w.role == role) ++v.draining;
        break;
      case WState::kMoving:
      case WState::kSwitching:
        if (w.next_role == role) ++v.starting;
        if (w.role == role && w.state == WState::kMoving) ++v.draining;
        break;
      case WState::kGone:
        break;
    }
  }
  v.desired = v.ready + v.starting;
  return v;
}

RoleSignals Simulation::Impl::RoleSignalsOf(Role role, double window_s) {
  RoleSignals s;
  const double window_start = Sec(now_) - window_s;
  double tokens = 0, steps = 0, step_seconds = 0, decode_tokens = 0, decode_steps = 0;
  double waiting = 0, running = 0, kv = 0;
  const int phase = role == Role::kPrefill ? kPhasePrefill : kPhaseDecode;
  for (const auto& wp : workers_) {
    Worker& w = *wp;
    if (w.role != role || !w.scheduler) continue;
    if (w.state != WState::kReady && w.state != WState::kDraining && w.state != WState::kMoving) {
      continue;
    }
    if (w.ready_since + sc_.metrics_warmup_s > window_start + 1e-9) continue;  // not warm
    // The window's start is the oldest snapshot kept (the tick `window_s` ago).
    const Counters& then = w.snapshots.empty() ? Counters{} : w.snapshots.front();
    const Counters& c = w.counters;
    ++s.warm_workers;
    tokens += role == Role::kPrefill ? c.prefill_tokens - then.prefill_tokens
                                     : c.decode_tokens - then.decode_tokens;
    steps += c.steps[phase] - then.steps[phase];
    step_seconds += c.step_seconds[phase] - then.step_seconds[phase];
    decode_tokens += c.decode_tokens - then.decode_tokens;
    decode_steps += (c.steps[kPhaseDecode] - then.steps[kPhaseDecode]) +
                    (c.steps[kPhaseMixed] - then.steps[kPhaseMixed]);
    waiting += w.scheduler->waiting();
    running += w.scheduler->running();
    kv += w.allocator->usage_ratio();
  }
  if (s.warm_workers == 0 || window_s <= 0) return s;
  s.tokens_per_second = tokens / window_s;
  s.requests_waiting = waiting;
  s.requests_running = running;
  s.kv_usage_ratio = kv / s.warm_workers;
  s.steps_per_second = steps / window_s;
  s.mean_step_seconds = steps > 0 ? step_seconds / steps : kNoValue;
  if (role == Role::kDecode)
    s.mean_batch = decode_steps > 0 ? decode_tokens / decode_steps : kNoValue;
  return s;
}

PolicyInput Simulation::Impl::BuildInput() {
  PolicyInput in;
  in.now_s = Sec(now_);
  in.wall_now = clock_.WallNow();
  const double interval = policy_->IntervalSeconds();
  const size_t k = static_cast<size_t>(
      std::max(1.0, std::ceil(policy_->SignalsWindowSeconds() / interval - 1e-9)));
  const size_t n = std::min(k, buckets_.size());
  const double window_s = std::min(static_cast<double>(k) * interval, Sec(now_));
  Bucket sum;
  scratch_.clear();
  for (size_t i = buckets_.size() - n; i < buckets_.size(); ++i) {
    const Bucket& b = buckets_[i];
    sum.completions += b.completions;
    sum.prompt_sum += b.prompt_sum;
    sum.output_sum += b.output_sum;
    sum.duration_sum += b.duration_sum;
    sum.ttft_sum += b.ttft_sum;
    sum.ttft_n += b.ttft_n;
    sum.itl_num += b.itl_num;
    sum.itl_den += b.itl_den;
  }
  PoolSignals& s = in.signals;
  s.window_end = in.wall_now;
  s.window_seconds = window_s;
  if (window_s > 0) s.request_rate = sum.completions / window_s;
  if (sum.completions > 0) {
    s.mean_prompt_tokens = sum.prompt_sum / sum.completions;
    s.mean_output_tokens = sum.output_sum / sum.completions;
  }
  for (size_t i = buckets_.size() - n; i < buckets_.size(); ++i) {
    scratch_.insert(scratch_.end(), buckets_[i].ttft.begin(), buckets_[i].ttft.end());
  }
  if (!scratch_.empty()) s.ttft_seconds = Percentile(&scratch_, sc_.percentile);
  scratch_.clear();
  for (size_t i = buckets_.size() - n; i < buckets_.size(); ++i) {
    scratch_.insert(scratch_.end(), buckets_[i].tpot.begin(), buckets_[i].tpot.end());
  }
  if (!scratch_.empty()) s.tpot_seconds = Percentile(&scratch_, sc_.percentile);
  s.inflight_requests = static_cast<double>(
      static_cast<int64_t>(std::min(requests_.size(), next_arrival_index_)) - finished_);
  s.prefill = RoleSignalsOf(Role::kPrefill, window_s);
  s.decode = RoleSignalsOf(Role::kDecode, window_s);
  if (sum.ttft_n > 0) in.mean_ttft_s = sum.ttft_sum / sum.ttft_n;
  if (sum.itl_den > 0) in.mean_itl_s = sum.itl_num / sum.itl_den;
  if (sum.completions > 0) in.mean_request_seconds = sum.duration_sum / sum.completions;
  in.prefill = ViewOf(Role::kPrefill);
  in.decode = ViewOf(Role::kDecode);
  in.gpu_budget = sc_.gpus;
  in.gpus_held = opt_.fixed_budget ? sc_.gpus : gpus_held_;
  in.fixed_budget = opt_.fixed_budget;
  return in;
}

void Simulation::Impl::MoveWorkers(Role from, Role to, int n) {
  // The least loaded ready workers of `from` move (the shortest drains).
  std::vector<Worker*> candidates;
  for (int32_t id : ready_[static_cast<int>(from)]) {
    candidates.push_back(workers_[static_cast<size_t>(id)].get());
  }
  auto load = [from](const Worker* w) {
    return from == Role::kPrefill ? static_cast<double>(w->outstanding_prefill)
                                  : w->allocator->usage_ratio();
  };
  std::stable_sort(candidates.begin(), candidates.end(),
                   [&](const Worker* a, const Worker* b) { return load(a) < load(b); });
  for (int i = 0; i < n && i < static_cast<int>(candidates.size()); ++i) {
    Worker* w = candidates[static_cast<size_t>(i)];
    w->state = WState::kMoving;
    w->next_role = to;
    ++result_.moves;
  }
  RebuildReadyLists();
  for (int i = 0; i < n && i < static_cast<int>(candidates.size()); ++i) {
    CheckDrained(*candidates[static_cast<size_t>(i)]);
  }
}

void Simulation::Impl::Resize(Role role, int target) {
  const RoleView v = ViewOf(role);
  if (target > v.desired) {
    for (int i = v.desired; i < target; ++i) {
      Worker& w = NewWorker(role);
      pending_.push_back(w.id);
      ++result_.workers_started;
    }
    BindPending();
    return;
  }
  int remove = v.desired - target;
  if (remove <= 0) return;
  // Pods not serving yet go first (newest first), then the least loaded ready ones drain.
  for (auto it = workers_.rbegin(); it != workers_.rend() && remove > 0; ++it) {
    Worker& w = **it;
    if (w.role != role) continue;
    if (w.state == WState::kPending) {
      w.state = WState::kGone;
      --remove;
    } else if (w.state == WState::kLoading) {
      w.state = WState::kGone;
      SetHeld(-w.gpus);
      --remove;
    }
  }
  if (remove > 0) {
    std::vector<Worker*> candidates;
    for (int32_t id : ready_[static_cast<int>(role)]) {
      candidates.push_back(workers_[static_cast<size_t>(id)].get());
    }
    auto load = [role](const Worker* w) {
      return role == Role::kPrefill ? static_cast<double>(w->outstanding_prefill)
                                    : w->allocator->usage_ratio();
    };
    std::stable_sort(candidates.begin(), candidates.end(),
                     [&](const Worker* a, const Worker* b) { return load(a) < load(b); });
    for (int i = 0; i < remove && i < static_cast<int>(candidates.size()); ++i) {
      candidates[static_cast<size_t>(i)]->state = WState::kDraining;
    }
    RebuildReadyLists();
    for (int i = 0; i < remove && i < static_cast<int>(candidates.size()); ++i) {
      CheckDrained(*candidates[static_cast<size_t>(i)]);
    }
  }
  BindPending();
}

void Simulation::Impl::Apply(const PolicyDecision& d) {
  const RoleView p0 = ViewOf(Role::kPrefill);
  const RoleView d0 = ViewOf(Role::kDecode);
  if (d.moves_to_prefill > 0) {
    MoveWorkers(Role::kDecode, Role::kPrefill, d.moves_to_prefill);
  } else if (d.moves_to_prefill < 0) {
    MoveWorkers(Role::kPrefill, Role::kDecode, -d.moves_to_prefill);
  }
  if (!opt_.fixed_budget) {
    Resize(Role::kPrefill, std::max(0, d.prefill));
    Resize(Role::kDecode, std::max(0, d.decode));
  }
  const RoleView p1 = ViewOf(Role::kPrefill);
  const RoleView d1 = ViewOf(Role::kDecode);
  const bool changed = p1.desired != p0.desired || d1.desired != d0.desired;
  if (p1.desired != p0.desired && d.moves_to_prefill == 0) ++result_.scale_actions;
  if (d1.desired != d0.desired && d.moves_to_prefill == 0) ++result_.scale_actions;
  if ((changed || opt_.record_every_decision) && result_.decisions.size() < 5000) {
    char head[64];
    std::snprintf(head, sizeof head, "t=%.0fs ", Sec(now_));
    result_.decisions.push_back(head + d.reason);
  }
}

void Simulation::Impl::OnTick() {
  // Close the interval: router samples into a bucket, worker counters into snapshots.
  const double interval = policy_->IntervalSeconds();
  const size_t k = static_cast<size_t>(
      std::max(1.0, std::ceil(policy_->SignalsWindowSeconds() / interval - 1e-9)));
  buckets_.push_back(std::move(current_));
  current_ = Bucket{};
  while (buckets_.size() > k) buckets_.pop_front();
  PolicyInput in = BuildInput();
  // Snapshots after the signals were read: the oldest kept is the window's start next time.
  for (const auto& wp : workers_) {
    Worker& w = *wp;
    if (w.state == WState::kGone) continue;
    w.snapshots.push_back(w.counters);
    while (w.snapshots.size() > k) w.snapshots.pop_front();
  }
  const PolicyDecision d = policy_->Decide(in);
  Apply(d);
  Push(now_ + Ns(interval), EventType::kTick, 0);
}

void Simulation::Impl::RecordTimeline() {
  TimelinePoint p;
  p.t_s = Sec(now_);
  const RoleView pv = ViewOf(Role::kPrefill);
  const RoleView dv = ViewOf(Role::kDecode);
  p.prefill_ready = pv.ready;
  p.decode_ready = dv.ready;
  p.prefill_desired = pv.desired;
  p.decode_desired = dv.desired;
  p.gpus_held = opt_.fixed_budget ? sc_.gpus : gpus_held_;
  const double dt = p.t_s - last_timeline_t_;
  p.arrivals_per_s = dt > 0 ? static_cast<double>(arrivals_since_timeline_) / dt : 0;
  arrivals_since_timeline_ = 0;
  last_timeline_t_ = p.t_s;
  result_.timeline.push_back(p);
}

StatusOr<RunResult> Simulation::Impl::Run() {
  const auto wall_start = std::chrono::steady_clock::now();
  const double cpu_start = ThreadCpuSeconds();
  result_ = RunResult{};
  result_.policy = policy_->Name();
  outcomes_.clear();
  outcomes_.reserve(trace_.size());
  requests_.assign(trace_.size(), Request{});
  for (size_t i = 0; i < trace_.size(); ++i) {
    requests_[i].arrival = Ns(trace_[i].arrival_s);
    requests_[i].prompt = trace_[i].prompt_tokens;
    requests_[i].output = trace_[i].output_tokens;
  }
  // The initial configuration, warm.
  const int p0 = policy_->InitialPrefill();
  const int d0 = policy_->InitialDecode();
  result_.initial_prefill = p0;
  result_.initial_decode = d0;
  if (p0 < 1 || d0 < 1) {
    return Status::InvalidArgument(policy_->Name() + ": the initial configuration needs at " +
                                   "least one prefill and one decode worker");
  }
  if (p0 * sc_.prefill_tp + d0 * sc_.decode_tp > sc_.gpus) {
    return Status::InvalidArgument(
        policy_->Name() + ": initial " + std::to_string(p0) + " prefill x " +
        std::to_string(sc_.prefill_tp) + " + " + std::to_string(d0) + " decode x " +
        std::to_string(sc_.decode_tp) + " GPUs exceed --gpus " + std::to_string(sc_.gpus));
  }
  gpu_.Set(0, opt_.fixed_budget ? sc_.gpus : 0);
  for (int i = 0; i < p0 + d0; ++i) {
    Worker& w = NewWorker(i < p0 ? Role::kPrefill : Role::kDecode);
    if (Status s = BuildWorker(w); !s.ok()) return s;
    w.state = WState::kReady;
    SetHeld(w.gpus);
  }
  RebuildReadyLists();
  if (policy_->IntervalSeconds() > 0) {
    Push(Ns(policy_->IntervalSeconds()), EventType::kTick, 0);
  }
  if (opt_.timeline_period_s > 0) Push(0, EventType::kTimeline, 0);
  const double score_from = std::max(0.0, sc_.score_from_s);
  if (score_from > 0) Push(Ns(score_from), EventType::kScoreFrom, 0);

  next_arrival_index_ = 0;
  const int64_t total = static_cast<int64_t>(requests_.size());
  while (finished_ < total) {
    const bool have_arrival = next_arrival_index_ < requests_.size();
    const int64_t ta =
        have_arrival ? requests_[next_arrival_index_].arrival : std::numeric_limits<int64_t>::max();
    if (events_.empty() && !have_arrival) break;  // nothing can happen any more
    if (have_arrival && (events_.empty() || ta < events_.top().t)) {
      now_ = std::max(now_, ta);
      clock_.Set(TimePoint(Duration(now_)));
      const int32_t rid = static_cast<int32_t>(next_arrival_index_++);
      ++arrivals_since_timeline_;
      Route(rid);
      continue;
    }
    const Event e = events_.top();
    events_.pop();
    now_ = std::max(now_, e.t);
    clock_.Set(TimePoint(Duration(now_)));
    switch (e.type) {
      case EventType::kStepDone:
        OnStepDone(*workers_[static_cast<size_t>(e.a)]);
        break;
      case EventType::kTransferDone:
        OnTransferDone(e.a);
        break;
      case EventType::kWorkerReady:
        OnWorkerReady(*workers_[static_cast<size_t>(e.a)]);
        break;
      case EventType::kSwitchDone:
        OnSwitchDone(*workers_[static_cast<size_t>(e.a)]);
        break;
      case EventType::kRetry:
        Route(e.a);
        break;
      case EventType::kTick:
        OnTick();
        break;
      case EventType::kScoreFrom:
        gpu_seconds_before_scoring_ = gpu_.GpuSeconds(Sec(now_));
        break;
      case EventType::kTimeline:
        RecordTimeline();
        Push(now_ + Ns(opt_.timeline_period_s), EventType::kTimeline, 0);
        break;
    }
  }
  // Anything left (no worker could ever take it) fails.
  for (size_t i = 0; i < requests_.size(); ++i) {
    if (requests_[i].state != ReqState::kDone && requests_[i].state != ReqState::kFailed) {
      Fail(static_cast<int32_t>(i));
    }
  }
  RecordTimeline();
  // Scored: requests arriving from score_from on, GPU time from then to the end.
  const double end_s = std::max(Sec(now_), score_from);
  const double gpu_seconds = opt_.fixed_budget
                                 ? sc_.gpus * (end_s - score_from)
                                 : gpu_.GpuSeconds(end_s) - gpu_seconds_before_scoring_;
  std::vector<RequestOutcome> scored;
  if (score_from > 0) {
    scored.reserve(outcomes_.size());
    for (const RequestOutcome& o : outcomes_) {
      if (o.arrival_s >= score_from) scored.push_back(o);
    }
  }
  result_.summary = Summarize(score_from > 0 ? scored : outcomes_,
                              SloLimits{sc_.ttft_s, sc_.tpot_s}, gpu_seconds, end_s - score_from);
  result_.peak_gpus = opt_.fixed_budget ? sc_.gpus : gpu_.peak();
  result_.wall_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - wall_start).count();
  result_.cpu_seconds = ThreadCpuSeconds() - cpu_start;
  if (!opt_.keep_outcomes) std::vector<RequestOutcome>().swap(outcomes_);
  return std::move(result_);
}

}  // namespace pdpool::bench::replay
