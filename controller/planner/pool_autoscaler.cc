// PoolAutoscaler implementation: per-pool planner state, due-time bookkeeping, and the
// translation from a PoolSpec to planner settings.
#include "controller/planner/pool_autoscaler.h"

#include <sstream>

#include "agent/engine/sim/calibration.h"
#include "agent/engine/sim/gpu_catalog.h"
#include "agent/model/model_config.h"
#include "common/log.h"

namespace pdpool::controller::planner {

namespace {

Duration SecondsToDuration(double seconds) {
  return std::chrono::duration_cast<Duration>(std::chrono::duration<double>(seconds));
}

// Everything the planner is built from; a change rebuilds it.
std::string Fingerprint(const PoolSpec& spec, const std::string& gpu) {
  std::ostringstream out;
  out << spec.model.preset << '|' << gpu << '|' << spec.slo.ttft_seconds << '|'
      << spec.slo.tpot_seconds << '|' << spec.slo.percentile << '|' << spec.prefill.gpus_per_replica
      << '|' << spec.decode.gpus_per_replica << '|' << spec.autoscaling.interval_seconds << '|'
      << spec.autoscaling.scale_down_stabilization_seconds << '|'
      << spec.autoscaling.prometheus_url;
  return out.str();
}

StatusOr<agent::PerfModel> BuildPerf(const agent::ModelConfig& model, const agent::GpuSpec& gpu,
                                     const agent::Calibration& calibration, int tp) {
  return agent::PerfModel::Create(model, gpu, calibration.For(gpu.name), tp);
}

}  // namespace

struct PoolAutoscaler::PoolState {
  std::string fingerprint;
  std::unique_ptr<Planner> planner;
  std::unique_ptr<MetricsSource> source;
  WallTime last_evaluated{};
  int prefill = -1;  // the last decision's sizes (-1: none yet)
  int decode = -1;
};

PoolAutoscaler::PoolAutoscaler(AutoscalerOptions options, ControllerMetrics* metrics)
    : options_(std::move(options)), metrics_(metrics) {}

std::shared_ptr<PoolAutoscaler::PoolState> PoolAutoscaler::StateFor(const std::string& key) {
  std::lock_guard lock(mu_);
  auto& state = pools_[key];
  if (!state) state = std::make_shared<PoolState>();
  return state;
}

bool PoolAutoscaler::LastSizes(const std::string& ns, const std::string& name, int* prefill,
                               int* decode) {
  std::shared_ptr<PoolState> state;
  {
    std::lock_guard lock(mu_);
    auto it = pools_.find(ns + "/" + name);
    if (it == pools_.end()) return false;
    state = it->second;
  }
  if (state->prefill < 0) return false;
  *prefill = state->prefill;
  *decode = state->decode;
  return true;
}

void PoolAutoscaler::Forget(const std::string& ns, const std::string& name) {
  {
    std::lock_guard lock(mu_);
    if (pools_.erase(ns + "/" + name) == 0) return;
  }
  if (metrics_) metrics_->ForgetPool(ns, name);
}

AutoscaleResult PoolAutoscaler::Evaluate(const PoolView& view, WallTime now) {
  AutoscaleResult result;
  const PoolSpec& spec = *view.spec;
  const Duration interval = SecondsToDuration(spec.autoscaling.interval_seconds);
  const std::string gpu_name = view.gpu_product.empty() ? "h100" : view.gpu_product;
  std::shared_ptr<PoolState> state = StateFor(view.namespace_name + "/" + view.name);

  const std::string fingerprint = Fingerprint(spec, gpu_name);
  if (state->fingerprint != fingerprint || !state->planner) {
    state->planner.reset();
    state->fingerprint = fingerprint;
    state->last_evaluated = WallTime{};
    auto model = agent::ModelConfigFromPreset(spec.model.preset);
    auto gpu = agent::LookupGpu(gpu_name);
    auto calibration = agent::LoadCalibration("");
    if (!model.ok() || !gpu.ok() || !calibration.ok()) {
      const Status& bad = !model.ok() ? model.status()
                          : !gpu.ok() ? gpu.status()
                                      : calibration.status();
      result.error = Status::InvalidArgument("the planner cannot size this pool (model preset \"" +
                                             spec.model.preset + "\", GPU \"" + gpu_name +
                                             "\"): " + bad.message());
      state->fingerprint.clear();
      return result;
    }
    auto prefill = BuildPerf(*model, *gpu, *calibration, spec.prefill.gpus_per_replica);
    auto decode = BuildPerf(*model, *gpu, *calibration, spec.decode.gpus_per_replica);
    if (!prefill.ok() || !decode.ok()) {
      result.error = prefill.ok() ? decode.status() : prefill.status();
      state->fingerprint.clear();
      return result;
    }
    CapacitySettings capacity;
    capacity.ttft_seconds = spec.slo.ttft_seconds;
    capacity.tpot_seconds = spec.slo.tpot_seconds;
    capacity.percentile = spec.slo.percentile;
    PlannerSettings settings;
    settings.interval = interval;
    settings.scale_down_stabilization =
        SecondsToDuration(spec.autoscaling.scale_down_stabilization_seconds);
    state->planner = std::make_unique<Planner>(
        settings, CapacityModel(std::move(*prefill), std::move(*decode), capacity));
    state->source = options_.source_factory(spec.autoscaling.prometheus_url);
    LogInfo("planner ready", {{"pool", view.namespace_name + "/" + view.name},
                              {"gpu", gpu_name},
                              {"model", spec.model.preset},
                              {"metrics", state->source->Name()}});
  }

  if (state->last_evaluated != WallTime{} && now - state->last_evaluated < interval) {
    result.next_in = interval - (now - state->last_evaluated);
    return result;
  }
  state->last_evaluated = now;
  result.next_in = interval;
  result.evaluated = true;
  result.source_name = state->source->Name();

  MetricsQuery query;
  query.namespace_name = view.namespace_name;
  query.pool = view.name;
  query.percentile = spec.slo.percentile;
  query.window = std::max<Duration>(interval, options_.min_window);
  query.warmup = options_.warmup;
  query.pods = view.pods;

  PlannerInput input;
  input.now = now;
  auto signals = state->source->Read(query);
  if (signals.ok()) {
    input.signals = *signals;
    result.signals = *signals;
  } else {
    input.signals_status = signals.status();
  }
  result.metrics_status = input.signals_status;
  input.prefill = view.prefill;
  input.decode = view.decode;
  input.gpu_limit = view.gpu_limit;
  input.rebalance_in_place = spec.autoscaling.rebalance == "InPlace";
  result.decision = state->planner->Decide(input);
  state->prefill = result.decision.prefill;
  state->decode = result.decision.decode;
  if (metrics_) {
    metrics_->RecordPlannerDecision(view.namespace_name, view.name,
                                    DecisionKindName(result.decision.kind), result.decision.prefill,
                                    result.decision.decode, result.decision.predicted_request_rate);
  }
  return result;
}

}  // namespace pdpool::controller::planner
