// WorkerMetrics: the pdpool_worker_* series of TARGETS.md (label `role` on every series), fed
// by the engine's step observer, the request handlers and the KV transport. Prefill workers
// export the KV series too. Thread-safe (prometheus-cpp metrics are).
#pragma once

#include <memory>
#include <string>

#include "agent/engine/engine.h"

namespace prometheus {
class Registry;
class Counter;
class Gauge;
class Histogram;
template <typename T>
class Family;
}  // namespace prometheus

namespace pdpool::agent {

class WorkerMetrics {
 public:
  explicit WorkerMetrics(const std::string& role);
  ~WorkerMetrics();

  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  void ObserveStep(const StepReport& step);
  // result: ok, error, rejected, aborted; kind: prefill, decode, generate
  void CountRequest(const std::string& kind, const std::string& result);
  // direction: send (prefill side) or receive (decode side)
  void ObserveKvTransfer(const std::string& direction, int64_t bytes, double seconds, bool ok);
  // Gauges sampled from the engine at scrape time.
  void SetEngineStats(const EngineStats& stats, bool ready);

 private:
  std::string role_;
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Gauge* running_;
  prometheus::Gauge* waiting_;
  prometheus::Gauge* kv_usage_;
  prometheus::Counter* kv_blocks_total_;
  bool kv_blocks_counted_ = false;
  prometheus::Gauge* kv_blocks_free_;
  prometheus::Gauge* reservations_;
  prometheus::Gauge* outstanding_prefill_;
  prometheus::Gauge* ready_;
  prometheus::Counter* prefill_tokens_;
  prometheus::Counter* decode_tokens_;
  prometheus::Counter* preemptions_;
  int64_t preemptions_seen_ = 0;
  prometheus::Family<prometheus::Histogram>* step_seconds_;
  prometheus::Family<prometheus::Counter>* requests_;
  prometheus::Family<prometheus::Counter>* kv_bytes_;
  prometheus::Family<prometheus::Histogram>* kv_seconds_;
  prometheus::Family<prometheus::Counter>* kv_failures_;
};

}  // namespace pdpool::agent
