// LeaderElector: leader election on a coordination.k8s.io/v1 Lease, as client-go's
// leaderelection package does it. One replica holds the lease and renews it every retry
// period; the others take it over once it has not been renewed for leaseDurationSeconds, judged
// by their own clock from when they last saw the lease change. Writes are optimistic (the
// lease's resourceVersion): a Conflict just means another replica wrote first, and the attempt
// is retried next period. On a clean shutdown the leader releases the lease so that a successor
// takes over at once.
// Thread-safety: Run() is called from one thread; IsLeader, GetLeader and Kick from any.
// TryAcquireOrRenew and Release are serialized internally (for step-by-step tests).
#pragma once

#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "common/clock.h"
#include "common/json.h"
#include "common/kube/kube_client.h"
#include "common/status.h"

namespace pdpool::kube {

struct LeaderElectionConfig {
  std::string identity;  // unique per replica, e.g. the pod name
  std::string lease_namespace;
  std::string lease_name;
  // How long others wait, from when they last saw the lease renewed, before taking it over.
  Duration lease_duration = std::chrono::seconds(15);
  // The leader gives up if it has not renewed for this long; must be < lease_duration so it
  // stops acting before anyone else can have taken over.
  Duration renew_deadline = std::chrono::seconds(10);
  // Time between attempts to acquire or renew.
  Duration retry_period = std::chrono::seconds(2);
  // Acquire attempts wait retry_period * (1 + U[0, retry_jitter)) so candidates spread out.
  // Renewals are not jittered.
  double retry_jitter = 0.2;
  // Release the lease when Run is cancelled while leading.
  bool release_on_cancel = true;
  // While waiting, also re-read the clock at least this often (0: only when the wait is due in
  // real time or on Kick). For FakeClock tests.
  Duration clock_poll_interval = Duration::zero();

  // Called on Run's thread; must return promptly (start work on other threads).
  std::function<void()> on_started_leading;
  // Called on Run's thread when leadership ends (lost, or Run cancelled), only if it began.
  std::function<void()> on_stopped_leading;
  // Called when the observed holder changes to a new, non-empty identity (ours included).
  std::function<void(const std::string& identity)> on_new_leader;
};

class LeaderElector {
 public:
  // InvalidArgument when the config is unusable (empty identity or lease name/namespace,
  // non-positive durations, lease_duration <= renew_deadline,
  // renew_deadline <= retry_period * (1 + retry_jitter)). `client` and `clock` must outlive
  // the elector.
  static StatusOr<std::unique_ptr<LeaderElector>> Create(LeaderElectionConfig config,
                                                         KubeClient* client, Clock* clock);

  // Blocks: acquires the lease (retrying every retry period), calls on_started_leading, renews
  // until cancelled or until it cannot renew within renew_deadline (or sees another holder),
  // then calls on_stopped_leading. Returns Ok when cancelled (after releasing the lease if
  // leading and release_on_cancel), Unavailable when leadership was lost. After a loss the
  // caller should exit rather than run again: its caches may be stale.
  Status Run(CancelToken* cancel);

  // One attempt to acquire or renew the lease; true when we hold it afterwards.
  bool TryAcquireOrRenew();
  // Gives the lease up (holder empty, duration 1 s) if we hold it; true when written.
  bool Release();

  // True when the last lease record we saw names us and we renewed it within renew_deadline.
  bool IsLeader() const;
  // The holder in the last lease record we saw ("" if none).
  std::string GetLeader() const;
  // Wakes Run so it re-reads the clock (after FakeClock::Advance).
  void Kick();

 private:
  LeaderElector(LeaderElectionConfig config, KubeClient* client, Clock* clock);
  // Waits until the clock reaches `deadline`; false if cancelled first.
  bool WaitUntil(TimePoint deadline, CancelToken* cancel);
  Duration JitteredRetry();
  // Records the lease we saw or wrote; returns the new holder if it changed (to report).
  std::string ObserveLocked(const Json& lease, bool wrote);
  Json MakeSpec(const std::string& holder, int64_t duration_seconds, const std::string& acquire,
                const std::string& renew, int64_t transitions) const;
  void ReportNewLeader(const std::string& holder);

  const LeaderElectionConfig config_;
  KubeClient* const client_;
  Clock* const clock_;
  const std::string lease_ref_;  // "ns/name" for logs

  std::mutex step_mu_;  // serializes TryAcquireOrRenew / Release

  mutable std::mutex mu_;
  std::condition_variable cv_;
  Json observed_spec_;         // spec of the last lease record seen
  Json observed_lease_;        // the last lease object seen or written (for its resourceVersion)
  TimePoint observed_time_{};  // our clock when observed_spec_ last changed or we wrote it
  std::optional<TimePoint> last_renew_;  // start of our last successful acquire/renew
  std::string observed_holder_;
  std::string reported_leader_;
  uint64_t jitter_state_;
};

}  // namespace pdpool::kube
