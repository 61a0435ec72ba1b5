// SimNode: one simulated GPU node of the local rack, acting as a minimal kubelet. It registers
// a Node (GPU capacity, NVLink-domain label, Ready), keeps it alive (a Lease in
// kube-node-lease renewed every heartbeat, the Ready condition's lastHeartbeatTime refreshed
// with it), re-registers the Node if it is deleted, and runs the pods bound to it through a
// PodRunner: a loopback pod IP each, status written through pods/status, and pods marked for
// deletion stopped within their grace period and then deleted, as a kubelet finalizes them.
// Thread-safe: Start and Stop from the owning thread; the accessors from any thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "agent/node/pod_runner.h"
#include "common/clock.h"
#include "common/json.h"
#include "common/kube/informer.h"
#include "common/kube/kube_client.h"
#include "common/log.h"
#include "common/status.h"

namespace pdpool::agent {

struct SimNodeOptions {
  std::string name;                           // Node name (DNS subdomain)
  int gpus = 4;                               // capacity nvidia.com/gpu
  std::string clique;                         // nvidia.com/gpu.clique; empty: label omitted
  std::string gpu_product = "NVIDIA-GB200";   // nvidia.com/gpu.product
  std::map<std::string, std::string> labels;  // extra labels; override the built-in ones
  std::string cpu = "64";                     // capacity cpu (a Kubernetes quantity)
  std::string memory = "512Gi";               // capacity memory
  int max_pods = 110;                         // capacity pods
  Duration heartbeat_interval = std::chrono::seconds(10);
  // Pod IPs are pod_ip_prefix + "2".."254": "127.<a>.<b>." (see NodeAgent for the scheme).
  std::string pod_ip_prefix = "127.1.0.";
  std::string host_ip = "127.0.0.1";
  Duration initial_backoff = std::chrono::seconds(1);
  Duration max_backoff = std::chrono::seconds(30);
  // Longest a wait goes without re-reading the clock, so a FakeClock advanced by a test is
  // noticed; waits on a RealClock end on time regardless.
  Duration clock_poll = std::chrono::seconds(1);
};

inline constexpr int kNodeLeaseDurationSeconds = 40;
inline constexpr const char* kNodeLeaseNamespace = "kube-node-lease";

class SimNode {
 public:
  SimNode(kube::KubeClient* client, const Clock* clock, SimNodeOptions options,
          std::unique_ptr<PodRunner> runner);
  ~SimNode();  // Stop()
  SimNode(const SimNode&) = delete;
  SimNode& operator=(const SimNode&) = delete;

  // Starts the heartbeat, pod watch and pod sync threads. Registration happens on the first
  // heartbeat, so Start never blocks on the API server.
  void Start();
  // Stops watching and heartbeating and joins the threads; pod stops already under way are
  // waited for. Then the runner's Shutdown decides what happens to the pods: a status-only
  // runner leaves them looking alive, as a kubelet restart leaves containers running; the
  // process runner stops them, since its processes cannot outlive the agent.
  void Stop();

  const std::string& name() const { return options_.name; }
  const SimNodeOptions& options() const { return options_; }
  bool registered() const { return registered_.load(); }
  // Successful heartbeats (lease renewed and node status posted).
  int64_t heartbeats() const { return heartbeats_.load(); }
  // Failed API calls, all kinds together.
  int64_t api_errors() const { return api_errors_.load(); }
  // Nothing left to do until the clock moves: the heartbeat waits for a later time, no pod
  // work is due or under way. Tests driving a FakeClock wait for this before Advance, so the
  // advance is not taken up by work that was still computing its next deadline.
  bool Quiescent() const;

  // The pod status this node reports for a pod in `run` state (exposed for tests): phase,
  // conditions (keeping lastTransitionTime of unchanged ones), IPs, containerStatuses.
  static Json BuildPodStatus(const Json& pod, const PodRunStatus& run, const std::string& pod_ip,
                             const std::string& host_ip, WallTime start_time, WallTime now);

 private:
  enum class PodPhase {
    kNew,       // seen, not started
    kRunning,   // runner started it
    kStopping,  // runner's Stop under way (on its own thread)
    kStopped,   // runner stopped it (or it finished)
    kIgnored,   // found already Succeeded/Failed: left alone
  };
  struct PodState {
    kube::ObjectPtr pod;  // latest object seen
    bool gone = false;    // deleted from the API server
    PodPhase phase = PodPhase::kNew;
    std::string ip;  // assigned pod IP ("" none)
    std::optional<PodRunStatus> run;
    WallTime start_time{};
    int failures = 0;          // consecutive API failures, for backoff
    bool delete_sent = false;  // the finalizing delete succeeded; its DELETED event follows
    kube::ObjectPtr given;     // the object last handed to the runner (Start or Update)
  };

  // Heartbeats and registration.
  void HeartbeatLoop();
  bool Heartbeat();
  bool Register();
  Status PostNodeStatus();
  Status RenewLease();
  Json BuildNode() const;
  Json BuildNodeStatus(WallTime now) const;
  void RememberConditionTimes(const Json& node);

  // Pods.
  void OnPodEvent(const kube::ObjectPtr& pod, bool deleted);
  void OnRunnerStatus(const std::string& uid, const PodRunStatus& run);
  void SyncLoop();
  void SyncPod(const std::string& uid);
  void StartStopLocked(const std::string& uid, PodState& state, Duration grace);
  void EnqueueLocked(const std::string& uid, Duration delay = Duration::zero());
  void RetryLocked(const std::string& uid, PodState& state);
  void JoinFinishedStoppersLocked(std::vector<std::thread>* out);

  // Pod IPs from this node's range, owned by pod uid.
  void RecoverPodIps();
  bool ParseOwnIp(const std::string& ip, int* octet) const;
  bool ReserveIpLocked(const std::string& ip, const std::string& uid);
  std::string IpOwnedByLocked(const std::string& uid) const;
  std::string AllocateIpLocked(const std::string& uid);
  void ReleaseIpsLocked(const std::string& uid);

  // Heartbeat thread: waits on the clock until `deadline`; false when stopping.
  bool WaitUntil(TimePoint deadline);
  Duration Backoff(int failures) const;

  // Logs an API failure once per streak of failures of `op` on `object` (warn; repeats at
  // debug), counts every failure, and logs the recovery.
  void ReportResult(const std::string& op, const Status& status, const std::string& object);
  void ForgetFailures(const std::string& object);

  kube::KubeClient* const client_;
  const Clock* const clock_;
  const SimNodeOptions options_;
  const std::unique_ptr<PodRunner> runner_;

  kube::CancelToken cancel_;
  std::unique_ptr<kube::Informer> informer_;
  std::thread heartbeat_thread_;
  std::thread informer_thread_;
  std::thread sync_thread_;

  std::atomic<bool> registered_{false};
  std::atomic<int64_t> heartbeats_{0};
  std::atomic<int64_t> api_errors_{0};

  // Heartbeat-thread state (only that thread touches it).
  bool node_exists_ = false;
  std::string node_uid_;
  std::optional<Json> lease_;
  WallTime registered_at_{};
  std::map<std::string, std::string> condition_transition_;  // type → lastTransitionTime

  std::mutex log_mu_;
  std::map<std::string, std::string> failing_ops_;  // op → last error, while failing

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool started_ = false;
  bool stopping_ = false;
  TimePoint heartbeat_waits_until_ = TimePoint::min();  // min() while heartbeating
  bool sync_busy_ = false;
  std::map<std::string, PodState> pods_;  // by uid
  struct QueueEntry {
    TimePoint due;
    uint64_t seq;  // first in, first out among entries that are due
  };
  std::map<std::string, QueueEntry> queue_;  // uid → when to sync
  uint64_t next_seq_ = 0;
  std::map<std::string, std::thread> stoppers_;
  std::vector<std::string> finished_stoppers_;
  std::vector<std::string> ip_owner_;  // last octet → pod uid ("" free)
  int ip_cursor_ = 2;
};

}  // namespace pdpool::agent
