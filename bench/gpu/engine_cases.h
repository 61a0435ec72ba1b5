// Engine benchmark cases (issue 4), shared by engine_bench (measures them on one GPU through the
// cuda backend) and sim_predict (predicts them with the sim backend's PerfModel, no GPU): the
// case list and --rows selection, what each case counts toward its roofline floor
// (../shared/TARGETS.md, Definitions), the TARGETS.md targets, the peer's numbers
// (../shared/bench/peer_hf_llama.py --json), and the report: one table and one JSON document
// whose format bench/gpu/fit_calibration.py reads. No CUDA here. Plain values and pure
// functions; thread-safe.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "agent/engine/sim/calibration.h"
#include "agent/engine/sim/gpu_catalog.h"
#include "agent/engine/sim/perf_model.h"
#include "agent/model/model_config.h"
#include "common/json.h"
#include "common/status.h"

namespace pdpool::bench::engine {

enum class Phase { kDecode, kPrefill };

// One timed Step of the backend. Decode: `batch` sequences of one new token each, every one
// with `context` tokens already in its KV cache. Prefill: one sequence of `tokens` new tokens
// from position 0 (batch 1, context 0).
struct EngineCase {
  Phase phase = Phase::kDecode;
  int batch = 1;
  int context = 0;
  int tokens = 1;

  // "decode:B:C" or "prefill:T" (what --rows takes and the JSON's "name").
  std::string Name() const;
  bool operator==(const EngineCase&) const = default;
};

EngineCase DecodeCase(int batch, int context);
EngineCase PrefillCase(int tokens);

// The grid: decode batch {1, 8, 32, 64} × context {1024, 2048}, prefill {512, 2048,
// 8192} tokens.
std::vector<EngineCase> DefaultCases();

// --rows: a comma list of "decode" (the default decode grid), "prefill" (the default prefill
// lengths), "decode:B:C", "prefill:T", or "all"; empty = all. Duplicates are dropped, order
// kept. Errors name the bad item.
StatusOr<std::vector<EngineCase>> SelectRows(std::string_view rows);

// The two measured ceilings (TARGETS.md: the floor uses measured rates, not the datasheet).
struct Ceilings {
  double copy_bytes = 0;        // bytes of the device-to-device copy (one buffer)
  double copy_ms = 0;           // median time of one copy
  double copy_bytes_per_s = 0;  // 2 · copy_bytes / time: read + write counted
  int gemm_n = 0;               // n of the n×n×n bf16 GEMM
  double gemm_ms = 0;           // median time of one GEMM
  double gemm_flops_per_s = 0;  // 2n³ / time
};

// What a case counts, following TARGETS.md "Definitions" exactly as written there (and as
// ../shared/bench/peer_hf_llama.py counts), with P = ModelConfig::ParamCount() (every weight:
// embedding and LM head included), L layers, H attention heads, d head_dim, B batch, C context,
// T new tokens per sequence, KV = 2·L·kv_heads·d·2 bytes per token (bf16):
//   FLOPs = 2·P·B·T + attention, attention = 2·2·L·H·d per (query, key) pair:
//           prefill T·T/2 pairs (causal), decode B·C pairs;
//   bytes = 2·P (bf16 weights, read once) + B·C·KV (KV read);
//   floor = max(FLOPs / measured GEMM rate, bytes / measured copy rate).
// This overcounts real work in two places, both as TARGETS.md does: the embedding table counts
// as read and multiplied although a step only gathers rows of it, and the LM head counts for
// every prefill token although it runs on the last one (≈13% of the 8B prefill FLOPs).
// `exact_flops` leaves both out (2·(P − embedding − LM head)·B·T + LM head on one token per
// sequence + attention), for reference only.
struct CaseCount {
  double flops = 0;
  double attention_flops = 0;  // the attention part of `flops`
  double bytes = 0;
  double exact_flops = 0;
};
CaseCount CountCase(const agent::ModelConfig& model, const EngineCase& c);
double FloorSeconds(const CaseCount& count, const Ceilings& ceilings);

// TARGETS.md "Engine" (Llama-3.1-8B shape only): decode batch 1 context 1024 ≥ 85% of the
// floor, decode batch 64 context 2048 ≥ 83%, prefill 8192 ≥ 87%. Other cases and presets: none.
struct Target {
  double min_fraction = 0;  // floor / measured must reach this
};
std::optional<Target> TargetFor(std::string_view preset, const EngineCase& c);

// The sim backend's prediction for a case: PerfModel::StepTime of the same work (decode: batch
// × SeqWork{1, context}; prefill: SeqWork{tokens, 0}), in seconds.
double SimPredictSeconds(const agent::PerfModel& model, const EngineCase& c);

// ../shared/bench/peer_hf_llama.py --json: {device, d2d_bw, bf16_peak, preset, params, rows:
// [{phase, batch, tokens, ms, ...}]} (decode rows: tokens = context).
struct PeerResults {
  std::string device;
  std::string preset;
  double copy_bytes_per_s = 0;
  double gemm_flops_per_s = 0;
  std::map<std::string, double> ms_by_case;  // by EngineCase::Name()
};
StatusOr<PeerResults> ParsePeerJson(const Json& doc, std::string_view origin);
StatusOr<PeerResults> LoadPeerJson(const std::string& path);

// One row of the report.
struct MeasuredRow {
  EngineCase c;
  std::vector<double> samples_ms;  // each timed Step; empty when not measured
  std::string error;               // why not measured (empty when measured)
  std::optional<double> sim_ms;    // PerfModel's prediction with `Report::sim_calibration`
  // Median, min and max of samples_ms (0 when empty).
  double MedianMs() const;
  double MinMs() const;
  double MaxMs() const;
};

struct Report {
  std::string tool;                         // "engine_bench" or "sim_predict"
  std::string date;                         // UTC, ISO 8601
  std::string device_name;                  // as the driver names it ("NVIDIA H200")
  std::optional<agent::GpuSpec> datasheet;  // the catalog entry of device_name, if any
  Json device;                              // more about the device (free form)
  Ceilings ceilings;
  std::string preset;
  agent::ModelConfig model;
  Json backend;                                          // the backend options used (free form)
  std::string timing;                                    // how rows were timed, one sentence
  std::optional<agent::GpuCalibration> sim_calibration;  // what sim_ms was predicted with
  std::vector<MeasuredRow> rows;
  std::optional<PeerResults> peer;
  std::string peer_source;  // path of the peer JSON
  bool complete = true;     // false while rows are still to come, or a run was cut short
  std::vector<std::string> notes;
};

// The JSON document fit_calibration.py reads. Per row: name, phase, batch, context, tokens,
// ms (median), ms_min, ms_max, samples_ms, error, flops, attention_flops, exact_flops, bytes,
// floor_ms, floor_fraction, target_fraction, target_met, sim_ms, peer_ms, peer_floor_fraction,
// ratio_vs_peer (pdpool ms / peer ms).
Json ReportToJson(const Report& report);
// A GPU's calibration entry as calibration.json writes it.
Json CalibrationJson(const agent::GpuCalibration& c);
// The table: ceilings, then one line per case, then footnotes on what was counted.
std::string RenderTable(const Report& report);

// Writes `text` to `path` through a temporary file and a rename (a reader never sees half).
Status WriteFileAtomically(const std::string& path, const std::string& text);

}  // namespace pdpool::bench::engine
