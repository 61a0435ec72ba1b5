// Manager: runs the controller process — leader election, the informers (InferencePool,
// ReplicaSet, Deployment, Service, pdpool's token Secrets, Pod, Node), event handlers that
// enqueue pool keys, the work queue and its workers calling the PoolReconciler, and the admin
// server (/healthz, /readyz, /metrics). Run() blocks until Stop() (SIGTERM) or lost leadership.
// Thread-safe: Stop() may be called from any thread (a signal-watching thread).
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "common/clock.h"
#include "common/kube/kube_client.h"
#include "common/status.h"

namespace pdpool::controller {

struct ManagerOptions {
  std::string watch_namespace;  // empty: all namespaces
  bool leader_elect = true;
  std::string leader_election_namespace = "default";
  std::string leader_election_id = "pdpool-controller";
  std::string identity;  // defaults to hostname_pid
  std::string admin_host = "0.0.0.0";
  int admin_port = 8080;  // /healthz /readyz /metrics; 0: any free port
  int workers = 8;
  // Workers ready for less than this are left out of the planner's capacity samples.
  Duration planner_warmup = std::chrono::seconds(60);
  // Shortest window of the planner's rates and percentiles (max with the pool's interval).
  Duration planner_window = std::chrono::seconds(60);
};

class Manager {
 public:
  Manager(kube::KubeClient* client, ManagerOptions options, Clock* clock = &RealClock::Instance());
  ~Manager();

  // Blocks. Ok after Stop(); an error if the admin server cannot bind or leadership is lost
  // (the process should exit and be restarted, as controller-runtime does).
  Status Run();
  void Stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pdpool::controller
