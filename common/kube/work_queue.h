// WorkQueue: client-go's rate-limiting work queue of string keys ("namespace/name") that
// controllers' workers drain. Guarantees:
//   - a key is queued at most once (Add while queued is a no-op);
//   - a key is never handed to two workers at once: Add while it is being processed (between
//     Get and Done) only marks it dirty, and it is re-queued when Done is called;
//   - AddAfter/AddRateLimited delay a key on the injected Clock. A background thread moves due
//     keys into the queue; on FakeClock, tests call ProcessDueItems() after Advance (fully
//     deterministic) or Kick() to wake the thread.
// Thread-safety: all methods are thread-safe. Get blocks; everything else returns promptly.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <unordered_set>
#include <utility>

#include "common/clock.h"
#include "common/kube/rate_limiter.h"

namespace pdpool::kube {

struct WorkQueueOptions {
  // Delay for AddRateLimited; null means NewDefaultControllerRateLimiter(clock).
  std::unique_ptr<RateLimiter> rate_limiter;
  // Without the thread, delayed keys move into the queue only in ProcessDueItems().
  bool start_delay_thread = true;
  // The delay thread re-reads the clock at least this often, like client-go's 10 s heartbeat,
  // so it notices time a FakeClock was advanced by even without Kick().
  Duration max_delay_wait = std::chrono::seconds(10);
};

class WorkQueue {
 public:
  // `clock` must outlive the queue.
  explicit WorkQueue(Clock* clock, WorkQueueOptions options = {});
  ~WorkQueue();  // ShutDown() and join the delay thread.
  WorkQueue(const WorkQueue&) = delete;
  WorkQueue& operator=(const WorkQueue&) = delete;

  // Queues `key` unless it is already queued; if it is being processed it is queued after Done.
  // Ignored after ShutDown.
  void Add(const std::string& key);
  // Blocks until a key is available and marks it as being processed; the caller must call
  // Done(key). After ShutDown, keeps returning the keys still queued, then nullopt.
  std::optional<std::string> Get();
  // As Get, but gives up after `timeout` of real time (nullopt).
  std::optional<std::string> GetFor(Duration timeout);
  // Ends processing of `key`; re-queues it if it was Added meanwhile.
  void Done(const std::string& key);

  // Adds `key` once `delay` has passed on the clock. A key already waiting keeps the earlier
  // of its two due times. delay <= 0 is Add.
  void AddAfter(const std::string& key, Duration delay);
  // AddAfter(key, rate_limiter.When(key)).
  void AddRateLimited(const std::string& key);
  // Resets the rate limiter's failure count for `key`. Does not remove it from the queue.
  void Forget(const std::string& key);
  int NumRequeues(const std::string& key) const;

  // Keys queued and ready (excludes keys being processed and keys waiting for their delay).
  size_t Len() const;
  // Keys waiting for a delay to pass.
  size_t NumWaiting() const;

  // Moves every delayed key whose time has come (per the clock) into the queue. Returns how
  // many were moved.
  size_t ProcessDueItems();
  // Wakes the delay thread so it re-reads the clock now.
  void Kick();

  // Stops accepting keys and wakes every blocked Get.
  void ShutDown();
  bool ShuttingDown() const;

 private:
  void AddLocked(const std::string& key);
  // Takes the next key into processing, or nullopt when the queue is empty.
  std::optional<std::string> PopLocked();
  size_t ProcessDueItemsLocked();
  void DelayLoop();

  Clock* const clock_;
  const std::unique_ptr<RateLimiter> rate_limiter_;
  const Duration max_delay_wait_;

  mutable std::mutex mu_;
  std::condition_variable cv_;        // a key became ready, or shutdown
  std::condition_variable delay_cv_;  // delayed set changed, Kick, or shutdown
  std::deque<std::string> queue_;
  std::unordered_set<std::string> dirty_;       // needs processing (queued or re-add pending)
  std::unordered_set<std::string> processing_;  // handed out by Get, not yet Done
  std::map<std::string, TimePoint> waiting_;    // delayed key -> due time
  std::set<std::pair<TimePoint, std::string>> waiting_by_time_;
  bool shutting_down_ = false;
  std::thread delay_thread_;
};

}  // namespace pdpool::kube
