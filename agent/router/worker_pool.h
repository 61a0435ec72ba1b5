// WorkerPool: the workers a router knows (from discovery), their last polled info, health and
// router-side load, and the choice of a worker per request:
//   prefill: fewest outstanding prompt tokens (polled outstanding_prefill_tokens, plus the
//            prompt tokens the router has sent since that poll);
//   decode and both: lowest KV usage (polled used blocks, plus the blocks the router has
//            reserved since that poll);
// ties go round-robin. A worker's role is the one its last poll reported (a role switch in
// place shows there first), else discovery's. A worker is usable once a poll of kInfoPath says
// ready, not draining and not switching role; a failed call or poll takes it out of rotation for a
// backoff that doubles with consecutive failures (a successful call resets it). Thread-safe: every
// method may be called from any thread; no lock is held during I/O.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "agent/router/worker_client.h"
#include "common/clock.h"
#include "common/status.h"

namespace pdpool::agent {

// A worker as discovery reports it.
struct WorkerSpec {
  std::string address;  // host:port
  WorkerRole role = WorkerRole::kBoth;
  bool operator==(const WorkerSpec&) const = default;
};

struct WorkerPoolOptions {
  // Each poll is an info request per worker; the router also counts its own in-flight work per
  // worker between polls.
  std::chrono::milliseconds poll_interval{500};
  std::chrono::milliseconds failure_backoff{500};
  std::chrono::milliseconds max_failure_backoff{10'000};
  WorkerClientOptions client;
};

// One known worker. Requests hold it by shared_ptr, so discovery removing it never pulls it
// from under a request in flight.
class RouterWorker {
 public:
  RouterWorker(WorkerSpec spec, const WorkerClientOptions& client_options)
      : spec_(std::move(spec)), client_(spec_.address, client_options) {}

  const std::string& address() const { return spec_.address; }
  WorkerClient& client() { return client_; }

  // Router-side load, added and removed by ScopedLoad.
  std::atomic<int64_t>& prefill_tokens() { return prefill_tokens_; }
  std::atomic<int64_t>& reserved_tokens() { return reserved_tokens_; }

 private:
  friend class WorkerPool;

  WorkerSpec spec_;
  WorkerClient client_;
  std::atomic<int64_t> prefill_tokens_{0};   // prompt tokens in prefill calls now
  std::atomic<int64_t> reserved_tokens_{0};  // prompt + max tokens of live reservations

  // Guarded by WorkerPool::mu_.
  std::optional<WorkerInfoReply> info_;  // last successful poll
  int64_t prefill_tokens_at_poll_ = 0;
  int64_t reserved_tokens_at_poll_ = 0;
  int consecutive_failures_ = 0;
  TimePoint unhealthy_until_{};
};

// Adds `amount` to a counter of a worker for its lifetime. Move-only.
class ScopedLoad {
 public:
  ScopedLoad() = default;
  ScopedLoad(std::shared_ptr<RouterWorker> worker, std::atomic<int64_t>* counter, int64_t amount)
      : worker_(std::move(worker)), counter_(counter), amount_(amount) {
    counter_->fetch_add(amount_, std::memory_order_relaxed);
  }
  ScopedLoad(ScopedLoad&& other) noexcept { *this = std::move(other); }
  ScopedLoad& operator=(ScopedLoad&& other) noexcept {
    if (this != &other) {
      Reset();
      worker_ = std::move(other.worker_);
      counter_ = other.counter_;
      amount_ = other.amount_;
      other.counter_ = nullptr;
    }
    return *this;
  }
  ~ScopedLoad() { Reset(); }
  void Reset() {
    if (counter_ != nullptr) counter_->fetch_sub(amount_, std::memory_order_relaxed);
    counter_ = nullptr;
    worker_.reset();
  }

 private:
  std::shared_ptr<RouterWorker> worker_;  // keeps the counter alive
  std::atomic<int64_t>* counter_ = nullptr;
  int64_t amount_ = 0;
};

class WorkerPool {
 public:
  enum class Mode { kNone, kDisaggregated, kAggregated };

  WorkerPool(const Clock* clock, WorkerPoolOptions options);
  ~WorkerPool();  // StopPolling()

  // Replaces the known set; workers still present keep their info, health and load.
  void SetWorkers(const std::vector<WorkerSpec>& specs);

  // The best usable worker of `role` not in `exclude`, or null.
  std::shared_ptr<RouterWorker> Pick(WorkerRole role,
                                     const std::vector<const RouterWorker*>& exclude = {});
  // Disaggregated when a usable prefill and a usable decode worker exist, else aggregated
  // when a usable both worker exists, else none.
  Mode CurrentMode() const;
  bool Ready() const { return CurrentMode() != Mode::kNone; }
  // The smallest max_model_len that usable workers report; 0 when none reports one.
  int MaxModelLen() const;

  // Call outcomes. Failures other than the worker rejecting the request itself (4xx) take it
  // out of rotation for a while.
  void ReportFailure(RouterWorker* worker, const Status& status);
  void ReportSuccess(RouterWorker* worker);
  // A poll result for `worker` (the poller; tests). load_* are the router-side counters read
  // just before the poll was sent.
  void UpdateInfo(RouterWorker* worker, const StatusOr<WorkerInfoReply>& info,
                  int64_t prefill_tokens_at_poll, int64_t reserved_tokens_at_poll);

  // Polls every worker's kInfoPath once (sequentially, each bounded by the control timeout).
  void PollOnce();
  // Polls every poll_interval on a background thread until StopPolling.
  void StartPolling();
  void StopPolling();
  // Blocks until a poll round completes after this call (tests; bounded by `timeout`).
  bool WaitForPoll(std::chrono::milliseconds timeout);

  // WorkerClient::AbortCalls on every worker (shutdown).
  void AbortCalls();

  struct WorkerState {
    std::string address;
    WorkerRole role;
    const char* state;  // "ready", "unhealthy", "not_ready"
  };
  std::vector<WorkerState> Describe() const;
  std::vector<std::shared_ptr<RouterWorker>> Workers() const;

 private:
  WorkerRole RoleLocked(const RouterWorker& w) const;
  bool UsableLocked(const RouterWorker& w, TimePoint now) const;
  double ScoreLocked(const RouterWorker& w, WorkerRole role) const;

  const Clock* clock_;
  const WorkerPoolOptions options_;

  mutable std::mutex mu_;
  std::vector<std::shared_ptr<RouterWorker>> workers_;
  // Per role: requests pick a prefill and a decode worker in turn, and one shared counter
  // would hand every prefill pick the same parity (the same worker of two tied ones).
  uint64_t round_robin_[3] = {0, 0, 0};

  std::mutex poll_mu_;
  std::condition_variable poll_cv_;
  bool stop_polling_ = false;
  uint64_t poll_rounds_ = 0;
  std::thread poller_;
};

}  // namespace pdpool::agent
