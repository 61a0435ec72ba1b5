// WorkerServer: one worker of a pool (`pdpool-agent worker`): the HTTP side of an Engine. Serves
// the internal protocol of agent/worker/worker_protocol.h (reserve, prefill with KV push, decode
// stream, aggregated generate, info; all behind the pool token), the KV receiver of the tcp
// transport, and /healthz, /readyz, /metrics. Drain() is the SIGTERM path: stop admitting, let
// in-flight work finish within a grace period. Thread-safe.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <string>

#include "agent/engine/engine.h"
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

  int port() const;
  int kv_port() const;
  bool ready() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pdpool::agent
