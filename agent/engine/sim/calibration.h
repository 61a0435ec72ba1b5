// Calibration of the sim backend's performance model: per GPU, the fraction of each datasheet
// ceiling (gpu_catalog.h) that real kernels reach, plus fixed per-step overheads. The canonical
// values live in agent/engine/sim/calibration.json and are also compiled into the binary (a
// unit test keeps the two identical), so the agent runs without the file; a file given at run
// time replaces them. Plain values and pure functions; thread-safe.
#pragma once

#include <map>
#include <string>
#include <string_view>

#include "common/status.h"

namespace pdpool::agent {

struct GpuCalibration {
  double matmul_efficiency = 0.75;      // of datasheet bf16 FLOP/s, reached by the GEMMs
  double hbm_efficiency = 0.85;         // of datasheet HBM bandwidth, reached by decode
  double attention_efficiency = 0.5;    // of datasheet bf16 FLOP/s, reached by prefill attention
  double nvlink_efficiency = 0.8;       // of datasheet NVLink bandwidth (KV transfer, all-reduce)
  double step_overhead_us = 40;         // per step: launch, scheduling, host sync
  double per_sequence_overhead_us = 2;  // per sequence in a step: metadata, sampling
  double tp_allreduce_latency_us = 10;  // per all-reduce (2 per layer with tensor parallelism)
  std::string notes;                    // where the numbers come from

  bool operator==(const GpuCalibration&) const = default;
};

struct Calibration {
  bool measured = false;  // true only once fitted from cuda-backend runs on a real card
  std::string source;     // a sentence saying how the numbers were obtained
  std::string card;       // measured: the card (e.g. "NVIDIA H200"), else empty
  std::string date;       // measured: when, else empty
  // Keyed by lower-case canonical GPU name ("h200") and "default"; every entry complete (fields
  // a file leaves out of a GPU entry are taken from its "default").
  std::map<std::string, GpuCalibration> gpus;

  // The entry of `gpu` (canonical name or nvidia.com/gpu.product label, any case); "default"
  // when the GPU has none; built-in defaults when not even that exists.
  const GpuCalibration& For(std::string_view gpu) const;
};

// The JSON text compiled into the binary (identical to agent/engine/sim/calibration.json).
std::string_view BuiltinCalibrationJson();

// Parses calibration JSON; `origin` (a file name or "built-in calibration") prefixes every
// error, which also names the offending field ("gpus.H200.hbm_efficiency must be in (0, 1]").
StatusOr<Calibration> ParseCalibration(std::string_view json_text, std::string_view origin);

// Empty path → the built-in calibration; otherwise reads and parses that file.
StatusOr<Calibration> LoadCalibration(std::string_view path_or_empty);

}  // namespace pdpool::agent
