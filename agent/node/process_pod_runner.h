// ProcessPodRunner: a PodRunner that runs each container of a pod as a local process, as a
// kubelet would, scaled down to a simulated node of the local rack:
// - image → binary: pdpool/agent and pdpool/controller images run pdpool-agent and
//   pdpool-controller from the binary dir; any other image waits with ErrImageNeverPull
//   (container_image.h);
// - environment: the kubelet's, plus POD_NAME/POD_NAMESPACE/POD_IP and KUBERNETES_SERVICE_HOST/
//   PORT set to the API server the node agent uses (container_env.h);
// - volumes: secret (the service-account token Secret included), configMap, downwardAPI
//   (rewritten atomically when the pod's labels or annotations change, through Update),
//   emptyDir, hostPath (pod_volumes.h), bind-mounted at their mountPaths inside a private mount
//   namespace per container (container_process.h; the agent must run as root);
// - probes: startupProbe, readinessProbe and livenessProbe (httpGet, tcpSocket), with no
//   readinessProbe a container is ready once running (container_probe.h);
// - restarts per restartPolicy with the kubelet's crash-loop back-off, scaled by
//   RestartBackoffPolicy (restart_backoff.h), restartCount and lastState reported;
// - stopping: SIGTERM to each container's process group, SIGKILL after the grace period (at
//   least 2 s, the kubelet's minimum); Shutdown stops every pod, so nothing outlives the agent
//   (and a crashed agent's containers get SIGKILL from the kernel: PR_SET_PDEATHSIG).
// Files, under the node's directory `<node_dir>/pods/<namespace>_<pod>_<uid>/`:
//   volumes/<volume>/                 the volumes' contents (removed when the pod stops)
//   logs/<container>/<restart>.log    each run's stdout and stderr (kept, as kubelet logs are
//                                     kept for a while; the node's directory is the place to
//                                     clean)
// One thread per pod runs its containers (starts, waits for exits, probes, restarts) and calls
// the status listener on every change. Thread-safe, as PodRunner requires.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "agent/node/pod_data_source.h"
#include "agent/node/pod_runner.h"
#include "agent/node/restart_backoff.h"
#include "common/clock.h"

namespace pdpool::agent {

struct ProcessPodRunnerOptions {
  std::string node_name;
  std::string node_dir;    // this node's state directory (pods/ goes under it)
  std::string binary_dir;  // where pdpool-agent and pdpool-controller are
  // The API server containers reach (KUBERNETES_SERVICE_HOST/PORT); empty host: not set.
  std::string api_server_host;
  std::string api_server_port;
  RestartBackoffPolicy restart_backoff;
  // Longest a pod gets to stop when the whole node shuts down (its own grace period if shorter).
  Duration shutdown_grace = std::chrono::seconds(30);
  // Shortest time between SIGTERM and SIGKILL, even for a grace period of 0 (the kubelet's 2 s).
  Duration min_kill_grace = std::chrono::seconds(2);
  // How often a pod's thread looks for exited processes (the kubelet's PLEG relists every 1 s).
  // Each look is a waitid() per container: with dozens of pods per agent, a short interval
  // costs real CPU on a small machine.
  Duration poll_interval = std::chrono::seconds(1);
  // First retry of a pod whose volumes or container config cannot be set up yet (a Secret not
  // created yet, an image the node cannot have); doubles up to setup_retry_max.
  Duration setup_retry = std::chrono::seconds(1);
  Duration setup_retry_max = std::chrono::seconds(30);
};

class ProcessPodRunner final : public PodRunner {
 public:
  // `data` reads the Secrets and ConfigMaps pods refer to (ApiPodDataSource in the agent).
  ProcessPodRunner(const Clock* clock, PodDataSource data, ProcessPodRunnerOptions options);
  ~ProcessPodRunner() override;  // Shutdown()

  void SetStatusListener(StatusListener listener) override;
  PodRunStatus Start(const PodStartRequest& request) override;
  void Update(const Json& pod) override;
  void Stop(const std::string& uid, Duration grace_period) override;
  void Shutdown() override;

  // Pods started and not yet stopped.
  size_t running_pods() const;
  // `<node_dir>/pods/<namespace>_<name>_<uid>`.
  std::string PodDir(const Json& pod) const;

  class PodWorker;  // one pod's thread and state (process_pod_runner.cc)

 private:
  void Notify(const std::string& uid, const PodRunStatus& status);

  const Clock* const clock_;
  const PodDataSource data_;
  const ProcessPodRunnerOptions options_;

  mutable std::mutex mu_;
  StatusListener listener_;
  std::map<std::string, std::shared_ptr<PodWorker>> pods_;  // by uid
};

}  // namespace pdpool::agent
