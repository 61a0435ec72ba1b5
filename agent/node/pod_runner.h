// PodRunner: what a simulated node does with the pods bound to it, behind one interface so
// the node agent's Kubernetes side (registration, heartbeats, pod status, deletion) is the same
// whether pods only look alive (StatusOnlyPodRunner) or run their container commands as local
// processes. The node assigns each pod its IP before Start; the runner reports container state
// (including readiness) as a PodRunStatus, once from Start and then on every change through the
// listener; Update hands a running pod's newer object (labels, annotations) to the runner.
// Implementations are thread-safe: Start, Update and Stop may be called concurrently for
// different pods from different threads, and the listener may be called from any thread but
// never from inside Start, Update, Stop or Shutdown.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "common/clock.h"
#include "common/json.h"

namespace pdpool::agent {

// How a container's previous run ended (status.containerStatuses[].lastState.terminated).
struct ContainerTermination {
  int exit_code = 0;
  std::string reason;  // "Completed", "Error", "StartError"
  std::string message;
  WallTime started_at{};
  WallTime finished_at{};
};

// One container's state, as the node reports it in status.containerStatuses.
struct ContainerRunState {
  enum class Phase { kWaiting, kRunning, kTerminated };

  std::string name;
  std::string image;
  std::string image_id;
  std::string container_id;  // "pdpool://<pod uid>/<container>" ("" before the first start)
  Phase phase = Phase::kWaiting;
  bool ready = false;    // readiness (a probe, or "running" when the container has none)
  bool started = false;  // startup finished
  int restart_count = 0;
  WallTime started_at{};   // kRunning, kTerminated
  WallTime finished_at{};  // kTerminated
  int exit_code = 0;       // kTerminated
  std::string reason;      // kWaiting: "ContainerCreating"; kTerminated: "Completed", "Error"
  std::string message;
  std::optional<ContainerTermination> last_termination;  // the run before this one
};

// The state of all of a pod's containers (spec.containers order).
struct PodRunStatus {
  std::vector<ContainerRunState> containers;
};

// What the node hands the runner to start one pod.
struct PodStartRequest {
  Json pod;             // the Pod as last seen from the API server (a copy)
  std::string uid;      // metadata.uid
  std::string pod_ip;   // assigned loopback address (127.x.y.z); containers listen here
  std::string host_ip;  // the node's address
  std::string node_name;
};

class PodRunner {
 public:
  // Called with the pod's uid and its full current state whenever a container changes state
  // after Start returned (became ready, exited, restarted).
  using StatusListener = std::function<void(const std::string& uid, const PodRunStatus&)>;

  virtual ~PodRunner() = default;

  // Set once, by the node, before the first Start.
  virtual void SetStatusListener(StatusListener listener) = 0;

  // Begins running the pod and returns its initial state without waiting for readiness.
  // Failures (a command that cannot start) are reported as container states (waiting or
  // terminated with a reason), as a kubelet reports them, not as an error. Also called for a
  // pod that was already running when the agent restarted: the pod's status tells the runner
  // what it reported before.
  virtual PodRunStatus Start(const PodStartRequest& request) = 0;

  // Stops the pod's containers: asks them to exit, waits up to `grace_period`, then kills
  // them. Blocks until they are gone; the runner forgets the pod afterwards. A uid the runner
  // does not know is a no-op.
  virtual void Stop(const std::string& uid, Duration grace_period) = 0;

  // The pod (by metadata.uid) changed in the API server while running: a runner that projects
  // the pod's metadata into its containers (downward-API volumes) brings them up to date.
  // A uid the runner does not know is a no-op.
  virtual void Update(const Json& /*pod*/) {}

  // The node is shutting down. A runner whose pods cannot outlive the agent (local processes)
  // stops them all, each within its grace period (capped by the runner), and returns when
  // they are gone; one whose pods only look alive does nothing, so they keep looking alive
  // for the next agent, as a kubelet restart leaves containers running.
  virtual void Shutdown() {}
};

}  // namespace pdpool::agent
