// RouterMetrics: the router's Prometheus metrics (names are the contract in TARGETS.md):
// pdpool_router_requests_total{pool,code}, the ttft/tpot/e2e histograms, prompt and
// generation token counters, the in-flight gauge, plus prefill retries, worker errors and
// workers by role and state. Every label value is from a bounded set.
// Thread-safe (prometheus-cpp metrics are).
#pragma once

#include <array>
#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "agent/router/worker_pool.h"

namespace prometheus {
class Registry;
class Counter;
class Gauge;
class Histogram;
template <typename T>
class Family;
}  // namespace prometheus

namespace pdpool::agent {

class RouterMetrics {
 public:
  explicit RouterMetrics(std::string pool);
  ~RouterMetrics();

  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  // One finished client request to the API (/v1/...), by HTTP status.
  void CountRequest(int http_status);
  void ObserveTtft(double seconds);
  void ObserveTpot(double seconds);
  void ObserveE2e(double seconds);
  void AddPromptTokens(int64_t n);
  void AddGenerationTokens(int64_t n);
  void InflightAdd(int delta);
  void CountPrefillRetry();
  // A failed worker call; role of the worker, phase one of reserve|prefill|decode|generate.
  void CountWorkerError(WorkerRole role, const char* phase);
  // Sets pdpool_router_workers{role,state} from the pool's current view.
  void UpdateWorkers(const std::vector<WorkerPool::WorkerState>& workers);

  // Prometheus text format.
  std::string Serialize() const;

 private:
  std::string pool_;
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>* requests_;
  std::array<std::atomic<prometheus::Counter*>, 600> by_code_{};  // created on first use
  prometheus::Histogram* ttft_;
  prometheus::Histogram* tpot_;
  prometheus::Histogram* e2e_;
  prometheus::Counter* prompt_tokens_;
  prometheus::Counter* generation_tokens_;
  prometheus::Gauge* inflight_;
  prometheus::Counter* prefill_retries_;
  prometheus::Family<prometheus::Counter>* worker_errors_;
  prometheus::Family<prometheus::Gauge>* workers_;
  std::array<prometheus::Gauge*, 9> workers_by_role_state_{};  // role x state
};

}  // namespace pdpool::agent
