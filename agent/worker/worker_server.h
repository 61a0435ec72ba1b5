// WorkerServer: one worker of a pool (`pdpool-agent worker`): the HTTP side of an Engine. Serves
// the internal protocol of agent/worker/worker_protocol.h (reserve, prefill with KV push, decode
// stream, aggregated generate, info; all behind the pool token), the KV receiver of the tcp
// transport, and /healthz, /readyz, /metrics. Drain() is the SIGTERM path: stop admitting, let
// in-flight work finish within a grace period. SwitchRole() (kRolePath, or the pod's labels
// file) moves a prefill worker to decode or back in place: stop admitting the old role's new
// work, let in-flight work finish within a grace period, switch; engine, weights and KV cache
// stay. KV pushes go over the transport kv_transport_select.h picks per handoff from the pool's
// setting (--kv-transport) and both workers' KV caches: tcp, or with a GPU KV cache cuda-ipc
// or nccl, whose control channels share the tcp receiver's port. Thread-safe.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <string>

#include "agent/engine/engine.h"
#include "agent/transport/kv_communicator.h"
#include "agent/transport/kv_ipc.h"
#include "agent/transport/kv_transport.h"
#include "agent/worker/worker_metrics.h"
#include "agent/worker/worker_role.h"
#include "common/status.h"

namespace pdpool::agent {

struct WorkerServerOptions {
  WorkerRole role = WorkerRole::kBoth;
  std::string served_model_name;
  std::string host = "0.0.0.0";
  int port = 8000;                           // 0: any free port
  std::string kv_host;                       // KV receiver listen address (default: host)
  int kv_port = 0;                           // 0: any free port
  std::string advertise_host = "127.0.0.1";  // how peers reach this worker (pod IP)
  std::string auth_token;
  int http_threads = 256;  // httplib holds one per open keep-alive connection
  std::chrono::milliseconds reservation_ttl{30'000};
  std::chrono::milliseconds request_timeout{600'000};
  std::chrono::milliseconds kv_io_timeout{10'000};
  std::chrono::milliseconds fault_kv_block_delay{0};  // tests: slow the KV push down
  // The pool's KV transport (spec.kvTransfer.transport): auto, tcp, cuda-ipc or nccl. A prefill
  // request's destination.transport overrides it.
  std::string kv_transport = "auto";
  std::string node_name;      // this worker's node ($PDPOOL_NODE_NAME), for auto's choice
  std::string nvlink_domain;  // its NVLink domain ($PDPOOL_NVLINK_DOMAIN), for auto's choice
  // GPU transports (null: not in this build). Used only with a backend whose KV cache is in
  // GPU memory (Backend::device_kv).
  std::shared_ptr<KvIpc> cuda_ipc;
  std::shared_ptr<KvCommunicatorFactory> nccl;
  // How long a role switch waits for the old role's in-flight work (--drain-timeout).
  std::chrono::milliseconds role_switch_drain_timeout{30'000};
};

struct RoleSwitchResult {
  WorkerRole role = WorkerRole::kBoth;      // the role now
  WorkerRole previous = WorkerRole::kBoth;  // the role before the call
  bool changed = false;                     // false: it had that role already
  int drained_requests = 0;    // old-role requests and reservations in flight when it began
  bool drain_complete = true;  // false: the grace period ran out first
  double switch_seconds = 0;
};

class WorkerServer {
 public:
  WorkerServer(WorkerServerOptions options, const Clock* clock);
  ~WorkerServer();

  // Serves /healthz (and 503 on /readyz) at once; the worker is ready after SetEngine.
  Status Start();
  // Hands over the engine once the weights are loaded; the worker becomes ready.
  void SetEngine(std::unique_ptr<Engine> engine);
  // Stops admitting (readyz 503, new requests 503), waits up to `grace` for in-flight requests
  // and reservations to finish. Returns true if everything finished in time.
  bool Drain(std::chrono::milliseconds grace);
  void Stop();

  // Switches between prefill and decode in place (see worker_protocol.h, kRolePath). Blocks
  // until the switch is done. Errors: InvalidArgument (a `both` worker, or `to` is both),
  // Conflict (a switch to the other role is in progress), Unavailable (shutting down).
  // `trigger` names the caller in the logs ("api", "labels-file").
  StatusOr<RoleSwitchResult> SwitchRole(WorkerRole to, const std::string& trigger);
  WorkerRole role() const;

  int port() const;
  int kv_port() const;
  bool ready() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pdpool::agent
