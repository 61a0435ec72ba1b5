// EventQueue: hands a sequence's events (tokens, finish) from the engine thread to the HTTP
// handler streaming them. Thread-safe; one producer, one consumer.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>

#include "agent/engine/scheduler.h"

namespace pdpool::agent {

class EventQueue {
 public:
  void Push(SequenceEvent e) {
    {
      std::lock_guard lock(mu_);
      events_.push_back(std::move(e));
    }
    cv_.notify_one();
  }
  // Waits until an event is available or `timeout` passes; false on timeout.
  bool Pop(SequenceEvent* out, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu_);
    if (!cv_.wait_for(lock, timeout, [this] { return !events_.empty(); })) return false;
    *out = std::move(events_.front());
    events_.pop_front();
    return true;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<SequenceEvent> events_;
};

}  // namespace pdpool::agent
