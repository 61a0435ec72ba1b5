// EventRecorder: writes core/v1 Events about objects ("Created ReplicaSet x", "InvalidSpec:
// ..."), as `kubectl describe` shows them. Writes happen on a background thread from a
// bounded queue so a slow API server never stalls a reconcile (like client-go's broadcaster,
// events are best effort: dropped when the queue is full, and counted). Repeats of the same
// (object, reason, message) within 10 minutes bump the existing Event's count.
// Thread-safe.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <thread>

#include "common/clock.h"
#include "common/kube/kube_client.h"

namespace pdpool::kube {

class EventRecorder {
 public:
  EventRecorder(KubeClient* client, std::string component, Clock* clock, size_t max_queue = 1000);
  ~EventRecorder();

  // type: "Normal" or "Warning". `object` needs apiVersion, kind, metadata.{name,namespace,uid}.
  void Record(const Json& object, const std::string& type, const std::string& reason,
              const std::string& message);
  // Waits until queued events are written (tests, shutdown), at most `timeout`; false when
  // some were still queued (they are then dropped with the recorder).
  bool Flush(Duration timeout = std::chrono::seconds(5));
  uint64_t dropped() const { return dropped_.load(); }

 private:
  struct Pending {
    Json involved;
    std::string ns, type, reason, message;
  };
  struct Seen {
    std::string event_name;
    int count = 0;
    TimePoint last;
  };
  void Loop();
  void Write(const Pending& p);

  KubeClient* client_;
  const std::string component_;
  Clock* clock_;
  const size_t max_queue_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::condition_variable idle_cv_;
  std::deque<Pending> queue_;
  bool busy_ = false;
  bool stop_ = false;
  std::map<std::string, Seen> seen_;  // written only by the loop thread
  std::atomic<uint64_t> dropped_{0};
  std::thread thread_;
};

}  // namespace pdpool::kube
