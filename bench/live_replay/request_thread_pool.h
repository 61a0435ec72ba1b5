// RequestThreadPool: the threads the replay's requests run on, one request per thread (a
// streamed response blocks its thread until the last token). Grows on demand up to a limit and
// keeps idle threads for the next request. Submitting never blocks: past the limit it refuses,
// and the caller counts the request as failed ("client overloaded"), so an open-loop replay
// neither waits nor drops anything silently. Thread-safe.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "common/clock.h"

namespace pdpool::bench::live_replay {

class RequestThreadPool {
 public:
  explicit RequestThreadPool(int max_threads);
  // Waits for the running tasks to end, then joins every thread.
  ~RequestThreadPool();
  RequestThreadPool(const RequestThreadPool&) = delete;
  RequestThreadPool& operator=(const RequestThreadPool&) = delete;

  // Runs `task` on an idle thread, or on a new one while fewer than max_threads exist; false
  // (task not run) when every one of max_threads is busy.
  bool TrySubmit(std::function<void()> task);
  // Blocks until no task is running or queued, or until `deadline` (steady clock); true when
  // idle.
  bool WaitIdle(TimePoint deadline);
  int threads() const;
  int busy() const;  // tasks running or about to

 private:
  void Run();

  const int max_threads_;
  mutable std::mutex mu_;
  std::condition_variable work_cv_;
  std::condition_variable idle_cv_;
  std::deque<std::function<void()>> queue_;
  int running_ = 0;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace pdpool::bench::live_replay
