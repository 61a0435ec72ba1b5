// Rate limiter implementations: per-item exponential backoff, token bucket, max-of.
#include "common/kube/rate_limiter.h"

#include <algorithm>
#include <cmath>

namespace pdpool::kube {

ItemExponentialFailureRateLimiter::ItemExponentialFailureRateLimiter(Duration base_delay,
                                                                     Duration max_delay)
    : base_delay_(base_delay), max_delay_(max_delay) {}

Duration ItemExponentialFailureRateLimiter::When(const std::string& key) {
  int exp;
  {
    std::lock_guard lock(mu_);
    exp = failures_[key]++;
  }
  // Computed in floating point so that many failures saturate at max_delay_ instead of
  // overflowing the shift.
  double ns = static_cast<double>(base_delay_.count()) * std::pow(2.0, exp);
  if (!std::isfinite(ns) || ns >= static_cast<double>(max_delay_.count())) return max_delay_;
  return Duration(static_cast<Duration::rep>(ns));
}

void ItemExponentialFailureRateLimiter::Forget(const std::string& key) {
  std::lock_guard lock(mu_);
  failures_.erase(key);
}

int ItemExponentialFailureRateLimiter::NumRequeues(const std::string& key) {
  std::lock_guard lock(mu_);
  auto it = failures_.find(key);
  return it == failures_.end() ? 0 : it->second;
}

QpsLimiter::QpsLimiter(double qps, int burst, Clock* clock, Duration clock_poll_interval)
    : qps_(qps),
      burst_(std::max(burst, 1)),  // a bucket that can never hold a token would block forever
      clock_(clock),
      poll_(clock_poll_interval),
      tokens_(std::max(burst, 1)),
      last_(clock->Now()) {}

void QpsLimiter::RefillLocked(TimePoint now) {
  if (now <= last_) return;
  double secs = std::chrono::duration<double>(now - last_).count();
  tokens_ = std::min(static_cast<double>(burst_), tokens_ + secs * qps_);
  last_ = now;
}

bool QpsLimiter::TryAcquire() {
  if (qps_ <= 0) return true;
  std::lock_guard lock(mu_);
  RefillLocked(clock_->Now());
  if (tokens_ < 1.0) return false;
  tokens_ -= 1.0;
  return true;
}

Duration QpsLimiter::Reserve() {
  if (qps_ <= 0) return Duration::zero();
  std::lock_guard lock(mu_);
  RefillLocked(clock_->Now());
  tokens_ -= 1.0;
  if (tokens_ >= 0) return Duration::zero();
  return std::chrono::duration_cast<Duration>(std::chrono::duration<double>(-tokens_ / qps_));
}

Status QpsLimiter::Wait(CancelToken* cancel) {
  if (qps_ <= 0) {
    if (cancel != nullptr && cancel->cancelled()) return Status::Cancelled("rate limiter wait");
    return Status::Ok();
  }
  // Registered outside mu_: the token runs callbacks under its own lock, which then takes mu_.
  int reg = cancel != nullptr ? cancel->Register([this] { Kick(); }) : 0;
  Status result;
  {
    std::unique_lock lock(mu_);
    while (true) {
      if (cancel != nullptr && cancel->cancelled()) {
        result = Status::Cancelled("rate limiter wait");
        break;
      }
      RefillLocked(clock_->Now());
      if (tokens_ >= 1.0) {
        tokens_ -= 1.0;
        break;
      }
      auto need = std::chrono::duration_cast<Duration>(
          std::chrono::duration<double>((1.0 - tokens_) / qps_));
      if (need <= Duration::zero()) need = Duration(1);
      if (poll_ > Duration::zero()) need = std::min(need, poll_);
      cv_.wait_for(lock, need);
    }
  }
  if (cancel != nullptr) cancel->Unregister(reg);
  return result;
}

void QpsLimiter::Kick() {
  std::lock_guard lock(mu_);
  cv_.notify_all();
}

BucketRateLimiter::BucketRateLimiter(double qps, int burst, Clock* clock)
    : bucket_(qps, burst, clock) {}

Duration BucketRateLimiter::When(const std::string&) { return bucket_.Reserve(); }

MaxOfRateLimiter::MaxOfRateLimiter(std::vector<std::unique_ptr<RateLimiter>> limiters)
    : limiters_(std::move(limiters)) {}

Duration MaxOfRateLimiter::When(const std::string& key) {
  Duration longest = Duration::zero();
  // Every limiter is asked, so each one counts the failure / spends its token.
  for (auto& l : limiters_) longest = std::max(longest, l->When(key));
  return longest;
}

void MaxOfRateLimiter::Forget(const std::string& key) {
  for (auto& l : limiters_) l->Forget(key);
}

int MaxOfRateLimiter::NumRequeues(const std::string& key) {
  int n = 0;
  for (auto& l : limiters_) n = std::max(n, l->NumRequeues(key));
  return n;
}

std::unique_ptr<RateLimiter> NewDefaultControllerRateLimiter(Clock* clock) {
  std::vector<std::unique_ptr<RateLimiter>> limiters;
  limiters.push_back(std::make_unique<ItemExponentialFailureRateLimiter>(
      std::chrono::milliseconds(5), std::chrono::seconds(1000)));
  limiters.push_back(std::make_unique<BucketRateLimiter>(10.0, 100, clock));
  return std::make_unique<MaxOfRateLimiter>(std::move(limiters));
}

}  // namespace pdpool::kube
