// StatusOnlyPodRunner: a PodRunner that runs nothing. Every container of a started pod is
// reported running and ready at once, which is enough for the scheduler, ReplicaSet controller
// and pdpool's controller to see a healthy pod. Thread-safe.
#pragma once

#include <mutex>
#include <set>
#include <string>

#include "agent/node/pod_runner.h"
#include "common/clock.h"

namespace pdpool::agent {

class StatusOnlyPodRunner final : public PodRunner {
 public:
  explicit StatusOnlyPodRunner(const Clock* clock) : clock_(clock) {}

  void SetStatusListener(StatusListener listener) override;
  PodRunStatus Start(const PodStartRequest& request) override;
  void Stop(const std::string& uid, Duration grace_period) override;

  // Pods started and not yet stopped.
  size_t running_pods() const;

 private:
  const Clock* clock_;
  mutable std::mutex mu_;
  std::set<std::string> running_;
};

}  // namespace pdpool::agent
