// RouterServer: the pool's OpenAI-compatible front door (`pdpool-agent router`):
// POST /v1/completions and /v1/chat/completions (JSON or SSE), GET /v1/models, /healthz,
// /readyz (ready while a usable prefill+decode pair or a both worker exists), /metrics.
// Each request is validated, tokenized, run through a GenerationFlow and answered; failures
// are OpenAI error bodies (503 with Retry-After when no worker can take it).
// Thread-safe: Start/Shutdown from the owning thread; requests run on the server's pool.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>

#include "agent/router/router_metrics.h"
#include "agent/router/worker_pool.h"
#include "common/clock.h"
#include "common/status.h"

namespace pdpool::agent {

struct RouterServerOptions {
  std::string host = "0.0.0.0";
  int port = 8080;  // 0: any free port (see port())
  std::string served_model_name;
  int max_model_len = 0;  // 0: the workers' (info max_model_len)
  size_t max_body_bytes = 1 << 20;
  // Request threads. A streaming request holds one for its whole life.
  int threads = 1024;
  // Completion requests served at once; one more is refused at once with 503 and Retry-After
  // (load shedding), so the threads left over always answer /healthz, /readyz and /metrics: a
  // router saturated with streams must not fail its liveness probe and be restarted. 0: threads
  // minus a quarter of them, at most 64 kept free.
  int max_inflight = 0;
  // SIGTERM: how long in-flight requests may take to finish before they are cut.
  std::chrono::milliseconds drain_timeout{30'000};
  std::string api_key;  // non-empty: clients must send Authorization: Bearer <api_key>
};

class RouterServer {
 public:
  // `pool`, `metrics` and `clock` must outlive the server.
  RouterServer(RouterServerOptions options, WorkerPool* pool, RouterMetrics* metrics,
               const Clock* clock);
  ~RouterServer();  // Shutdown()

  // Binds and serves on background threads.
  Status Start();
  int port() const;
  bool ready() const;
  // Client requests being served now.
  int64_t inflight() const;

  // Stops taking requests (new ones get 503, /readyz fails), waits for those in flight up to
  // drain_timeout, cancels what is left, and stops the server. Idempotent.
  void Shutdown();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pdpool::agent
