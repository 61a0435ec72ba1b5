// Rate limiters, modelled on client-go's workqueue rate limiters and flowcontrol token bucket:
//   - RateLimiter: decides how long a work-queue item waits before its next retry
//     (ItemExponentialFailureRateLimiter, BucketRateLimiter, MaxOfRateLimiter and
//     NewDefaultControllerRateLimiter = max(5 ms * 2^failures capped at 1000 s, 10 qps burst 100)).
//   - QpsLimiter: a token bucket for client-side QPS limiting of API calls.
// Time comes from an injected Clock, so all of it runs on FakeClock in tests.
// Thread-safety: every class here is thread-safe.
#pragma once

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/clock.h"
#include "common/kube/kube_client.h"
#include "common/status.h"

namespace pdpool::kube {

// Decides how long an item waits before it is retried. Thread-safe.
class RateLimiter {
 public:
  virtual ~RateLimiter() = default;
  // How long `key` should wait before its next attempt. Each call counts as one more failure.
  virtual Duration When(const std::string& key) = 0;
  // Clears the failure history of `key` (call after it was processed successfully).
  virtual void Forget(const std::string& key) = 0;
  // How many times When() was called for `key` since it was last forgotten.
  virtual int NumRequeues(const std::string& key) = 0;
};

// Per-item exponential backoff: base * 2^(failures so far), capped at max_delay. Thread-safe.
class ItemExponentialFailureRateLimiter final : public RateLimiter {
 public:
  explicit ItemExponentialFailureRateLimiter(Duration base_delay = std::chrono::milliseconds(5),
                                             Duration max_delay = std::chrono::seconds(1000));
  Duration When(const std::string& key) override;
  void Forget(const std::string& key) override;
  int NumRequeues(const std::string& key) override;

 private:
  const Duration base_delay_;
  const Duration max_delay_;
  std::mutex mu_;
  std::unordered_map<std::string, int> failures_;
};

// Token bucket: starts full with `burst` tokens and refills at `qps` tokens per second of
// clock time. qps <= 0 means unlimited. Thread-safe.
class QpsLimiter {
 public:
  // `clock` must outlive the limiter. While a Wait() is blocked the clock is re-read when the
  // time a token is due has passed in real time, when Kick() is called, and at least every
  // `clock_poll_interval` if that is positive (for FakeClock tests that do not Kick).
  QpsLimiter(double qps, int burst, Clock* clock, Duration clock_poll_interval = Duration::zero());

  // Takes a token if one is available now; never blocks.
  bool TryAcquire();
  // Blocks until a token is available and takes it. Returns Cancelled (taking no token) if
  // `cancel` fires first.
  Status Wait(CancelToken* cancel = nullptr);
  // Takes a token now even if that puts the bucket in debt; returns how long the caller must
  // wait before acting on it (zero if a token was available). Never blocks.
  Duration Reserve();
  // Wakes blocked Wait() calls so they re-read the clock (after FakeClock::Advance).
  void Kick();

  double qps() const { return qps_; }
  int burst() const { return burst_; }

 private:
  void RefillLocked(TimePoint now);

  const double qps_;
  const int burst_;
  Clock* const clock_;
  const Duration poll_;
  std::mutex mu_;
  std::condition_variable cv_;
  double tokens_;
  TimePoint last_;
};

// Overall limit across all items: each When() reserves a token from a QpsLimiter and returns the
// time until it is due. NumRequeues is always 0; Forget does nothing. Thread-safe.
class BucketRateLimiter final : public RateLimiter {
 public:
  BucketRateLimiter(double qps, int burst, Clock* clock);
  Duration When(const std::string& key) override;
  void Forget(const std::string&) override {}
  int NumRequeues(const std::string&) override { return 0; }

 private:
  QpsLimiter bucket_;
};

// The longest delay of several limiters; Forget/NumRequeues go to all of them (NumRequeues is
// the maximum). Thread-safe.
class MaxOfRateLimiter final : public RateLimiter {
 public:
  explicit MaxOfRateLimiter(std::vector<std::unique_ptr<RateLimiter>> limiters);
  Duration When(const std::string& key) override;
  void Forget(const std::string& key) override;
  int NumRequeues(const std::string& key) override;

 private:
  std::vector<std::unique_ptr<RateLimiter>> limiters_;
};

// client-go's DefaultControllerRateLimiter: max(per-item 5 ms * 2^n up to 1000 s, 10 qps burst
// 100).
std::unique_ptr<RateLimiter> NewDefaultControllerRateLimiter(Clock* clock);

}  // namespace pdpool::kube
