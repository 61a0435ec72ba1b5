// PoolSampler: InferencePool status and pod GPUs from the Kubernetes API (see pool_sampler.h).
#include "bench/live_replay/pool_sampler.h"

#include <algorithm>
#include <chrono>

#include "common/log.h"
#include "controller/placement.h"

namespace pdpool::bench::live_replay {
namespace {

int32_t StatusCount(const Json& pool, std::string_view role, std::string_view field) {
  const Json* v = JsonPath(pool, {"status", role, field});
  return v != nullptr && v->is_number_integer() ? v->get<int32_t>() : 0;
}

}  // namespace

int64_t GpusHeld(const Json& pod_list) {
  const Json* items = JsonChild(pod_list, "items");
  if (items == nullptr || !items->is_array()) return 0;
  int64_t gpus = 0;
  for (const Json& pod : *items) {
    if (JsonStringAt(pod, {"spec", "nodeName"}).empty()) continue;
    const std::string phase = JsonStringAt(pod, {"status", "phase"});
    if (phase == "Succeeded" || phase == "Failed") continue;
    gpus += controller::PodGpuRequest(pod);
  }
  return gpus;
}

PoolSample MakePoolSample(const Json& pool, const Json& pod_list) {
  PoolSample s;
  s.prefill_ready = StatusCount(pool, "prefill", "readyReplicas");
  s.prefill_desired = StatusCount(pool, "prefill", "desiredReplicas");
  s.decode_ready = StatusCount(pool, "decode", "readyReplicas");
  s.decode_desired = StatusCount(pool, "decode", "desiredReplicas");
  s.gpus = GpusHeld(pod_list);
  return s;
}

PoolSampler::PoolSampler(kube::KubeClient* client, std::string ns, std::string pool,
                         const Clock* clock)
    : client_(client),
      namespace_(std::move(ns)),
      pool_(std::move(pool)),
      display_name_(namespace_ + "/" + pool_),
      clock_(clock) {}

PoolSampler::~PoolSampler() { Stop(); }

StatusOr<PoolSample> PoolSampler::Fetch() const {
  auto pool = client_->Get(kube::kInferencePools, namespace_, pool_);
  if (!pool.ok()) {
    return Status(pool.status().code(),
                  "InferencePool " + display_name_ + ": " + pool.status().message());
  }
  kube::ListOptions options;
  options.label_selector = std::string(controller::wellknown::kPoolLabel) + "=" + pool_;
  auto pods = client_->List(kube::kPods, namespace_, options);
  if (!pods.ok()) {
    return Status(pods.status().code(),
                  "pods of InferencePool " + display_name_ + ": " + pods.status().message());
  }
  return MakePoolSample(*pool, *pods);
}

Status PoolSampler::SampleOnce(double t_s) {
  StatusOr<PoolSample> sample = Fetch();
  std::lock_guard lock(mu_);
  if (!sample.ok()) {
    ++failures_;
    last_error_ = sample.status().message();
    return sample.status();
  }
  latest_ = *sample;
  last_error_.clear();
  gpus_.Set(t_s, static_cast<int>(sample->gpus));
  return Status::Ok();
}

void PoolSampler::Start(TimePoint start, Duration interval) {
  std::lock_guard lock(mu_);
  stopping_ = false;
  thread_ = std::thread([this, start, interval] { Loop(start, interval); });
}

void PoolSampler::Stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  stop_cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void PoolSampler::Loop(TimePoint start, Duration interval) {
  bool failing = false;
  for (TimePoint next = start;;) {
    {
      std::unique_lock lock(mu_);
      if (stop_cv_.wait_until(lock, next, [this] { return stopping_; })) return;
    }
    Status s = SampleOnce(std::chrono::duration<double>(clock_->Now() - start).count());
    if (!s.ok() && !failing) {
      LogWarn("pool sample failed", {{"pool", display_name_}, {"error", s.message()}});
    }
    failing = !s.ok();
    // A slow API server delays the next sample; it does not cause a burst to catch up.
    next = std::max(next + interval, clock_->Now());
  }
}

std::optional<PoolSample> PoolSampler::Latest() const {
  std::lock_guard lock(mu_);
  return latest_;
}

std::string PoolSampler::last_error() const {
  std::lock_guard lock(mu_);
  return last_error_;
}

double PoolSampler::GpuSeconds(double t_end_s) const {
  std::lock_guard lock(mu_);
  return gpus_.GpuSeconds(t_end_s);
}

int PoolSampler::PeakGpus() const {
  std::lock_guard lock(mu_);
  return gpus_.peak();
}

int64_t PoolSampler::failures() const {
  std::lock_guard lock(mu_);
  return failures_;
}

}  // namespace pdpool::bench::live_replay
