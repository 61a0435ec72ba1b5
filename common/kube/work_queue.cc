// WorkQueue implementation: a deque plus dirty/processing sets (client-go's Type), a delayed
// set ordered by due time (client-go's delayingType) and a rate limiter.
#include "common/kube/work_queue.h"

#include <algorithm>

namespace pdpool::kube {

WorkQueue::WorkQueue(Clock* clock, WorkQueueOptions options)
    : clock_(clock),
      rate_limiter_(options.rate_limiter ? std::move(options.rate_limiter)
                                         : NewDefaultControllerRateLimiter(clock)),
      max_delay_wait_(options.max_delay_wait > Duration::zero() ? options.max_delay_wait
                                                                : std::chrono::seconds(10)) {
  if (options.start_delay_thread) delay_thread_ = std::thread([this] { DelayLoop(); });
}

WorkQueue::~WorkQueue() {
  ShutDown();
  if (delay_thread_.joinable()) delay_thread_.join();
}

void WorkQueue::Add(const std::string& key) {
  std::lock_guard lock(mu_);
  AddLocked(key);
}

void WorkQueue::AddLocked(const std::string& key) {
  if (shutting_down_) return;
  if (!dirty_.insert(key).second) return;   // already queued, or re-add already pending
  if (processing_.count(key) != 0) return;  // Done() will queue it
  queue_.push_back(key);
  cv_.notify_one();
}

std::optional<std::string> WorkQueue::PopLocked() {
  if (queue_.empty()) return std::nullopt;
  std::string key = std::move(queue_.front());
  queue_.pop_front();
  processing_.insert(key);
  dirty_.erase(key);
  return key;
}

std::optional<std::string> WorkQueue::Get() {
  std::unique_lock lock(mu_);
  cv_.wait(lock, [this] { return !queue_.empty() || shutting_down_; });
  return PopLocked();
}

std::optional<std::string> WorkQueue::GetFor(Duration timeout) {
  std::unique_lock lock(mu_);
  cv_.wait_for(lock, timeout, [this] { return !queue_.empty() || shutting_down_; });
  return PopLocked();
}

void WorkQueue::Done(const std::string& key) {
  std::lock_guard lock(mu_);
  processing_.erase(key);
  // Added while it was being processed: its turn comes now. Also after ShutDown, like
  // client-go, so a drain sees the latest request for every key.
  if (dirty_.count(key) != 0) {
    queue_.push_back(key);
    cv_.notify_one();
  }
}

void WorkQueue::AddAfter(const std::string& key, Duration delay) {
  if (delay <= Duration::zero()) {
    Add(key);
    return;
  }
  std::lock_guard lock(mu_);
  if (shutting_down_) return;
  TimePoint due = clock_->Now() + delay;
  auto it = waiting_.find(key);
  if (it != waiting_.end()) {
    if (it->second <= due) return;  // keep the earlier due time
    waiting_by_time_.erase({it->second, key});
    it->second = due;
  } else {
    waiting_.emplace(key, due);
  }
  waiting_by_time_.emplace(due, key);
  delay_cv_.notify_all();
}

void WorkQueue::AddRateLimited(const std::string& key) { AddAfter(key, rate_limiter_->When(key)); }

void WorkQueue::Forget(const std::string& key) { rate_limiter_->Forget(key); }

int WorkQueue::NumRequeues(const std::string& key) const { return rate_limiter_->NumRequeues(key); }

size_t WorkQueue::Len() const {
  std::lock_guard lock(mu_);
  return queue_.size();
}

size_t WorkQueue::NumWaiting() const {
  std::lock_guard lock(mu_);
  return waiting_.size();
}

size_t WorkQueue::ProcessDueItems() {
  std::lock_guard lock(mu_);
  return ProcessDueItemsLocked();
}

size_t WorkQueue::ProcessDueItemsLocked() {
  TimePoint now = clock_->Now();
  size_t moved = 0;
  while (!waiting_by_time_.empty() && waiting_by_time_.begin()->first <= now) {
    std::string key = waiting_by_time_.begin()->second;
    waiting_by_time_.erase(waiting_by_time_.begin());
    waiting_.erase(key);
    AddLocked(key);
    ++moved;
  }
  return moved;
}

void WorkQueue::Kick() {
  std::lock_guard lock(mu_);
  delay_cv_.notify_all();
}

void WorkQueue::ShutDown() {
  std::lock_guard lock(mu_);
  shutting_down_ = true;
  waiting_.clear();
  waiting_by_time_.clear();
  cv_.notify_all();
  delay_cv_.notify_all();
}

bool WorkQueue::ShuttingDown() const {
  std::lock_guard lock(mu_);
  return shutting_down_;
}

void WorkQueue::DelayLoop() {
  std::unique_lock lock(mu_);
  while (!shutting_down_) {
    ProcessDueItemsLocked();
    // The due time is on clock_, the wait on real time: they agree for RealClock. For a
    // FakeClock the bounded wait (and Kick) makes the thread re-read the clock.
    Duration wait = max_delay_wait_;
    if (!waiting_by_time_.empty()) {
      wait = std::min(wait, waiting_by_time_.begin()->first - clock_->Now());
    }
    if (wait > Duration::zero()) delay_cv_.wait_for(lock, wait);
  }
}

}  // namespace pdpool::kube
