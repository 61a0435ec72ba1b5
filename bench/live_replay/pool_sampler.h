// PoolSampler: the pool's state as the Kubernetes API shows it, sampled every second on its own
// thread while the replay runs: the InferencePool's status.{prefill,decode}.{readyReplicas,
// desiredReplicas}, and the GPUs its pods hold. A pod (label pdpool.dev/pool=<pool>) holds its
// nvidia.com/gpu requests (or limits) from when it is bound to a node (spec.nodeName) until it
// has Succeeded or Failed or is gone, being deleted included: a terminating worker keeps its GPU
// until it exits. The samples feed the GPU-seconds of the run (bench/replay GpuAccounting).
// MakePoolSample and GpusHeld are pure; PoolSampler is thread-safe.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "bench/replay/outcome.h"
#include "common/clock.h"
#include "common/json.h"
#include "common/kube/kube_client.h"

namespace pdpool::bench::live_replay {

struct PoolSample {
  int32_t prefill_ready = 0;
  int32_t prefill_desired = 0;
  int32_t decode_ready = 0;
  int32_t decode_desired = 0;
  int64_t gpus = 0;
};

// GPUs held by the pods of a Pod List object (its items), as described above.
int64_t GpusHeld(const Json& pod_list);
// The sample of an InferencePool object and its pods' List.
PoolSample MakePoolSample(const Json& pool, const Json& pod_list);

class PoolSampler {
 public:
  // `client` and `clock` must outlive the sampler.
  PoolSampler(kube::KubeClient* client, std::string ns, std::string pool, const Clock* clock);
  ~PoolSampler();  // Stop()
  PoolSampler(const PoolSampler&) = delete;
  PoolSampler& operator=(const PoolSampler&) = delete;

  // Gets the pool and lists its pods; changes nothing (the check before a run). Errors name
  // the pool.
  StatusOr<PoolSample> Fetch() const;
  // Fetch(); on success that sample is the latest, and its GPU count holds from t_s (seconds
  // since the run's start, never decreasing) on.
  Status SampleOnce(double t_s);
  // Samples every `interval` from `start` on a thread of its own until Stop(). A failed sample
  // keeps the previous one; the first failure of a streak is logged.
  void Start(TimePoint start, Duration interval);
  void Stop();

  std::optional<PoolSample> Latest() const;
  // The failure of the last sample, "" when it succeeded.
  std::string last_error() const;
  // GPUs held over time, from the first successful sample to t_end_s.
  double GpuSeconds(double t_end_s) const;
  int PeakGpus() const;
  int64_t failures() const;
  const std::string& name() const { return display_name_; }  // "namespace/pool"

 private:
  void Loop(TimePoint start, Duration interval);

  kube::KubeClient* const client_;
  const std::string namespace_;
  const std::string pool_;
  const std::string display_name_;
  const Clock* const clock_;

  mutable std::mutex mu_;
  std::condition_variable stop_cv_;
  bool stopping_ = false;
  std::optional<PoolSample> latest_;
  std::string last_error_;
  int64_t failures_ = 0;
  replay::GpuAccounting gpus_;
  std::thread thread_;
};

}  // namespace pdpool::bench::live_replay
