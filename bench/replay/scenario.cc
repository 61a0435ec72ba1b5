// Scenario helpers (see scenario.h).
#include "bench/replay/scenario.h"

#include "agent/engine/sim/calibration.h"
#include "agent/engine/sim/gpu_catalog.h"

namespace pdpool::bench::replay {

StatusOr<agent::PerfModel> MakePerfModel(const Scenario& scenario, int tp) {
  auto gpu = agent::LookupGpu(scenario.gpu);
  if (!gpu.ok()) return Status::InvalidArgument("--gpu: " + gpu.status().message());
  auto calibration = agent::LoadCalibration("");
  if (!calibration.ok()) return calibration.status();
  return agent::PerfModel::Create(scenario.model, *gpu, calibration->For(gpu->name), tp);
}

}  // namespace pdpool::bench::replay
