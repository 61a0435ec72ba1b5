// EventRecorder implementation.
#include "common/kube/event_recorder.h"

#include <random>

#include "common/log.h"

namespace pdpool::kube {

EventRecorder::EventRecorder(KubeClient* client, std::string component, Clock* clock,
                             size_t max_queue)
    : client_(client), component_(std::move(component)), clock_(clock), max_queue_(max_queue) {
  thread_ = std::thread([this] { Loop(); });
}

EventRecorder::~EventRecorder() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
    dropped_ += queue_.size();
    queue_.clear();  // best effort: shutdown does not wait on a slow API server
  }
  cv_.notify_all();
  thread_.join();
}

void EventRecorder::Record(const Json& object, const std::string& type, const std::string& reason,
                           const std::string& message) {
  Pending p;
  p.involved = {
      {"apiVersion", object.value("apiVersion", "")},
      {"kind", object.value("kind", "")},
      {"name", JsonGet<std::string>(object, "/metadata/name", "")},
      {"namespace", JsonGet<std::string>(object, "/metadata/namespace", "")},
      {"uid", JsonGet<std::string>(object, "/metadata/uid", "")},
      {"resourceVersion", JsonGet<std::string>(object, "/metadata/resourceVersion", "")},
  };
  p.ns = p.involved["namespace"].get<std::string>();
  if (p.ns.empty()) p.ns = "default";
  p.type = type;
  p.reason = reason;
  p.message = message;
  {
    std::lock_guard lock(mu_);
    if (queue_.size() >= max_queue_) {
      dropped_++;
      return;
    }
    queue_.push_back(std::move(p));
  }
  cv_.notify_one();
}

bool EventRecorder::Flush(Duration timeout) {
  std::unique_lock lock(mu_);
  return idle_cv_.wait_for(lock, timeout, [this] { return queue_.empty() && !busy_; });
}

void EventRecorder::Loop() {
  for (;;) {
    Pending p;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stop_ and drained
      p = std::move(queue_.front());
      queue_.pop_front();
      busy_ = true;
    }
    Write(p);
    {
      std::lock_guard lock(mu_);
      busy_ = false;
    }
    idle_cv_.notify_all();
  }
}

void EventRecorder::Write(const Pending& p) {
  const std::string ts = FormatRfc3339(clock_->WallNow());
  const std::string seen_key =
      p.involved["uid"].get<std::string>() + "|" + p.reason + "|" + p.message;
  auto it = seen_.find(seen_key);
  if (it != seen_.end() && clock_->Now() - it->second.last < std::chrono::minutes(10)) {
    it->second.count++;
    it->second.last = clock_->Now();
    Json patch = {{"count", it->second.count}, {"lastTimestamp", ts}};
    auto s = client_->Patch(kEvents, p.ns, it->second.event_name, PatchType::kMerge, patch);
    if (s.ok()) return;
    // The event expired on the server (TTL) or was deleted: write a new one below.
  }
  static thread_local std::mt19937_64 rng(std::random_device{}());
  char suffix[17];
  std::snprintf(suffix, sizeof suffix, "%016llx", static_cast<unsigned long long>(rng()));
  std::string name = p.involved["name"].get<std::string>() + "." + suffix;
  Json event = {
      {"apiVersion", "v1"},
      {"kind", "Event"},
      {"metadata", {{"name", name}, {"namespace", p.ns}}},
      {"involvedObject", p.involved},
      {"reason", p.reason},
      {"message", p.message},
      {"type", p.type},
      {"source", {{"component", component_}}},
      {"reportingComponent", component_},
      {"firstTimestamp", ts},
      {"lastTimestamp", ts},
      {"count", 1},
  };
  auto created = client_->Create(kEvents, p.ns, event);
  if (!created.ok()) {
    LogWarn("event write failed", {{"object", p.ns + "/" + p.involved["name"].get<std::string>()},
                                   {"reason", p.reason},
                                   {"error", created.status().ToString()}});
    return;
  }
  seen_[seen_key] = Seen{name, 1, clock_->Now()};
  if (seen_.size() > 10000) seen_.clear();  // bound memory; worst case a duplicate event
}

}  // namespace pdpool::kube
