// RequestThreadPool: a growing pool of request threads (see request_thread_pool.h).
#include "bench/live_replay/request_thread_pool.h"

namespace pdpool::bench::live_replay {

RequestThreadPool::RequestThreadPool(int max_threads) : max_threads_(max_threads) {}

RequestThreadPool::~RequestThreadPool() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  work_cv_.notify_all();
  for (std::thread& t : threads_) t.join();
}

bool RequestThreadPool::TrySubmit(std::function<void()> task) {
  std::lock_guard lock(mu_);
  // Every queued task has a free thread to take it: running + queued never exceeds threads.
  const size_t committed = static_cast<size_t>(running_) + queue_.size();
  if (committed >= threads_.size()) {
    if (static_cast<int>(threads_.size()) >= max_threads_) return false;
    threads_.emplace_back([this] { Run(); });
  }
  queue_.push_back(std::move(task));
  work_cv_.notify_one();
  return true;
}

bool RequestThreadPool::WaitIdle(TimePoint deadline) {
  std::unique_lock lock(mu_);
  return idle_cv_.wait_until(lock, deadline, [this] { return running_ == 0 && queue_.empty(); });
}

int RequestThreadPool::threads() const {
  std::lock_guard lock(mu_);
  return static_cast<int>(threads_.size());
}

int RequestThreadPool::busy() const {
  std::lock_guard lock(mu_);
  return running_ + static_cast<int>(queue_.size());
}

void RequestThreadPool::Run() {
  std::unique_lock lock(mu_);
  while (true) {
    work_cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping, and nothing left to run
    std::function<void()> task = std::move(queue_.front());
    queue_.pop_front();
    ++running_;
    lock.unlock();
    task();
    lock.lock();
    --running_;
    if (running_ == 0 && queue_.empty()) idle_cv_.notify_all();
  }
}

}  // namespace pdpool::bench::live_replay
