// WorkerMetrics: the pdpool_worker_* series of TARGETS.md (label `role` on every series), fed
// by the engine's step observer, the request handlers and the KV transport. Prefill workers
// export the KV series too. A role switch in place (SetRole) keeps the one registry: counters
// and histograms of the old role stay (frozen, never reset: counters stay monotonic) and the
// new role's series appear beside them; the old role's gauges and its capacity
// (pdpool_worker_kv_blocks_total) are removed, so sums by role count the worker once.
// Thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "agent/engine/engine.h"
#include "agent/worker/gpu_monitor.h"

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

  // Labels everything from now on with `role` (see the header comment).
  void SetRole(const std::string& role);
  std::string role() const;

  void ObserveStep(const StepReport& step);
  // result: ok, error, rejected, aborted; kind: prefill, decode, generate
  void CountRequest(const std::string& kind, const std::string& result);
  // direction: send (prefill side) or receive (decode side)
  void ObserveKvTransfer(const std::string& direction, int64_t bytes, double seconds, bool ok);
  // Gauges sampled from the engine at scrape time.
  void SetEngineStats(const EngineStats& stats, bool ready);
  // GPU gauges sampled at scrape time: one set per reading (label `gpu`: its UUID); a field a
  // reading lacks, and a GPU no reading names, has no series.
  void SetGpuReadings(const std::vector<GpuReading>& readings);

 private:
  // The series of one role that are not looked up by extra labels on each use.
  struct RoleSeries {
    prometheus::Gauge* running = nullptr;
    prometheus::Gauge* waiting = nullptr;
    prometheus::Gauge* kv_usage = nullptr;
    prometheus::Gauge* kv_blocks_free = nullptr;
    prometheus::Gauge* reservations = nullptr;
    prometheus::Gauge* outstanding_prefill = nullptr;
    prometheus::Gauge* ready = nullptr;
    prometheus::Counter* kv_blocks_total = nullptr;
    prometheus::Counter* prefill_tokens = nullptr;
    prometheus::Counter* decode_tokens = nullptr;
    prometheus::Counter* preemptions = nullptr;
  };
  // Adds (or finds) `role`'s series; mu_ held.
  void AddRoleLocked(const std::string& role);
  // Removes the gauges and the capacity of `series`; mu_ held.
  void RemoveGaugesLocked(RoleSeries* series);
  // The GPU gauges of one GPU, labelled with role_.
  struct GpuSeries {
    prometheus::Gauge* utilization = nullptr;
    prometheus::Gauge* memory_used = nullptr;
    prometheus::Gauge* memory_total = nullptr;
    prometheus::Gauge* power = nullptr;
  };
  // Removes every GPU gauge; mu_ held.
  void RemoveGpuSeriesLocked();

  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Gauge>* running_;
  prometheus::Family<prometheus::Gauge>* waiting_;
  prometheus::Family<prometheus::Gauge>* kv_usage_;
  prometheus::Family<prometheus::Gauge>* kv_blocks_free_;
  prometheus::Family<prometheus::Gauge>* reservations_;
  prometheus::Family<prometheus::Gauge>* outstanding_prefill_;
  prometheus::Family<prometheus::Gauge>* ready_;
  prometheus::Family<prometheus::Counter>* kv_blocks_total_;
  prometheus::Family<prometheus::Counter>* prefill_tokens_;
  prometheus::Family<prometheus::Counter>* decode_tokens_;
  prometheus::Family<prometheus::Counter>* preemptions_;
  prometheus::Family<prometheus::Histogram>* step_seconds_;
  prometheus::Family<prometheus::Counter>* requests_;
  prometheus::Family<prometheus::Counter>* kv_bytes_;
  prometheus::Family<prometheus::Histogram>* kv_seconds_;
  prometheus::Family<prometheus::Counter>* kv_failures_;
  prometheus::Family<prometheus::Gauge>* gpu_utilization_;
  prometheus::Family<prometheus::Gauge>* gpu_memory_used_;
  prometheus::Family<prometheus::Gauge>* gpu_memory_total_;
  prometheus::Family<prometheus::Gauge>* gpu_power_;

  mutable std::mutex mu_;
  std::string role_;
  std::map<std::string, RoleSeries> series_;     // every role this worker has had
  RoleSeries* current_ = nullptr;                // series_[role_]
  std::map<std::string, GpuSeries> gpu_series_;  // by GPU UUID, role role_
  int64_t kv_blocks_ = -1;                       // capacity, once an engine reported it
  int64_t preemptions_seen_ = 0;
};

}  // namespace pdpool::agent
