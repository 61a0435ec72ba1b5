// Calibration: parsing and validation of the sim backend's efficiency factors, and the built-in
// copy of agent/engine/sim/calibration.json (kept identical to the file by
// tests/unit/sim_perf_model_test.cc: edit both together).
#include "agent/engine/sim/calibration.h"

#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "agent/engine/sim/gpu_catalog.h"
#include "common/json.h"

namespace pdpool::agent {
namespace {

constexpr std::string_view kBuiltinJson = R"pdpool_json({
  "measured": false,
  "source": "Datasheet ceilings (gpu_catalog.cc) times ASSUMED efficiencies, NOT measured step times of pdpool's engine; only the H200 matmul_efficiency and hbm_efficiency come from a measurement (see gpus.H200.notes). To be fitted from cuda-backend step times on real GPUs in the CUDA engine issue, which sets measured: true, card and date.",
  "gpus": {
    "default": {
      "notes": "assumed: typical cuBLAS GEMM and decode-kernel fractions of datasheet peaks",
      "matmul_efficiency": 0.75,
      "hbm_efficiency": 0.85,
      "attention_efficiency": 0.5,
      "nvlink_efficiency": 0.8,
      "step_overhead_us": 40,
      "per_sequence_overhead_us": 2,
      "tp_allreduce_latency_us": 10
    },
    "H100": {
      "notes": "assumed, same fractions as the H200 measurement",
      "matmul_efficiency": 0.805,
      "hbm_efficiency": 0.883,
      "attention_efficiency": 0.55,
      "nvlink_efficiency": 0.8,
      "step_overhead_us": 30,
      "per_sequence_overhead_us": 2,
      "tp_allreduce_latency_us": 8
    },
    "H200": {
      "notes": "measured on a lent H200 (TARGETS.md): matmul_efficiency = 796/989 (cuBLAS bf16 8192^3 GEMM 796 TFLOP/s), hbm_efficiency = 4.24/4.8 (device-to-device copy 4.24 TB/s counting read and write, i.e. HBM traffic rate). The other fields are assumed.",
      "matmul_efficiency": 0.805,
      "hbm_efficiency": 0.883,
      "attention_efficiency": 0.55,
      "nvlink_efficiency": 0.8,
      "step_overhead_us": 30,
      "per_sequence_overhead_us": 2,
      "tp_allreduce_latency_us": 8
    },
    "B200": {
      "notes": "assumed",
      "matmul_efficiency": 0.75,
      "hbm_efficiency": 0.85,
      "attention_efficiency": 0.5,
      "nvlink_efficiency": 0.8,
      "step_overhead_us": 30,
      "per_sequence_overhead_us": 2,
      "tp_allreduce_latency_us": 8
    },
    "GB200": {
      "notes": "assumed",
      "matmul_efficiency": 0.75,
      "hbm_efficiency": 0.85,
      "attention_efficiency": 0.5,
      "nvlink_efficiency": 0.8,
      "step_overhead_us": 30,
      "per_sequence_overhead_us": 2,
      "tp_allreduce_latency_us": 8
    }
  }
}
)pdpool_json";

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

struct FieldSpec {
  const char* name;
  double GpuCalibration::*member;
  bool is_fraction;  // in (0, 1]; otherwise a non-negative number of microseconds
};

constexpr FieldSpec kFields[] = {
    {"matmul_efficiency", &GpuCalibration::matmul_efficiency, true},
    {"hbm_efficiency", &GpuCalibration::hbm_efficiency, true},
    {"attention_efficiency", &GpuCalibration::attention_efficiency, true},
    {"nvlink_efficiency", &GpuCalibration::nvlink_efficiency, true},
    {"step_overhead_us", &GpuCalibration::step_overhead_us, false},
    {"per_sequence_overhead_us", &GpuCalibration::per_sequence_overhead_us, false},
    {"tp_allreduce_latency_us", &GpuCalibration::tp_allreduce_latency_us, false},
};

// Fills `out` (already holding the inherited values) from one "gpus" entry.
Status ParseGpuEntry(const Json& entry, const std::string& where, bool require_all,
                     GpuCalibration* out) {
  if (!entry.is_object()) return Status::InvalidArgument(where + " must be an object");
  for (const auto& [key, value] : entry.items()) {
    if (key == "notes") {
      if (!value.is_string()) return Status::InvalidArgument(where + ".notes must be a string");
      out->notes = value.get<std::string>();
      continue;
    }
    const FieldSpec* field = nullptr;
    for (const FieldSpec& f : kFields) {
      if (key == f.name) field = &f;
    }
    if (field == nullptr) {
      std::string known = "notes";
      for (const FieldSpec& f : kFields) known += std::string(", ") + f.name;
      return Status::InvalidArgument(where + "." + key + ": unknown field; known: " + known);
    }
    if (!value.is_number()) {
      return Status::InvalidArgument(where + "." + key + " must be a number, got " + value.dump());
    }
    const double v = value.get<double>();
    if (field->is_fraction && !(v > 0 && v <= 1)) {
      return Status::InvalidArgument(where + "." + key + " must be in (0, 1], got " + value.dump());
    }
    if (!field->is_fraction && !(v >= 0 && std::isfinite(v))) {
      return Status::InvalidArgument(where + "." + key + " must be >= 0 (microseconds), got " +
                                     value.dump());
    }
    out->*(field->member) = v;
  }
  if (require_all) {
    for (const FieldSpec& f : kFields) {
      if (!entry.contains(f.name)) {
        return Status::InvalidArgument(where + "." + f.name +
                                       " is missing (the default entry needs every field)");
      }
    }
  }
  return Status::Ok();
}

}  // namespace

std::string_view BuiltinCalibrationJson() { return kBuiltinJson; }

const GpuCalibration& Calibration::For(std::string_view gpu) const {
  auto it = gpus.find(Lower(gpu));
  if (it != gpus.end()) return it->second;
  if (auto spec = LookupGpu(gpu); spec.ok()) {
    it = gpus.find(Lower(spec->name));
    if (it != gpus.end()) return it->second;
  }
  it = gpus.find("default");
  if (it != gpus.end()) return it->second;
  static const GpuCalibration kFallback;
  return kFallback;
}

StatusOr<Calibration> ParseCalibration(std::string_view json_text, std::string_view origin) {
  const std::string prefix = std::string(origin) + ": ";
  Json doc;
  try {
    doc = Json::parse(json_text);
  } catch (const Json::exception& e) {
    return Status::InvalidArgument(prefix + "not valid JSON: " + e.what());
  }
  if (!doc.is_object()) return Status::InvalidArgument(prefix + "top level must be an object");

  Calibration cal;
  for (const auto& [key, value] : doc.items()) {
    if (key == "measured") {
      if (!value.is_boolean()) {
        return Status::InvalidArgument(prefix + "measured must be true or false");
      }
      cal.measured = value.get<bool>();
    } else if (key == "source" || key == "card" || key == "date" || key == "notes") {
      if (!value.is_string()) return Status::InvalidArgument(prefix + key + " must be a string");
      if (key == "source") cal.source = value.get<std::string>();
      if (key == "card") cal.card = value.get<std::string>();
      if (key == "date") cal.date = value.get<std::string>();
    } else if (key != "gpus") {
      return Status::InvalidArgument(
          prefix + key + ": unknown field; known: measured, source, card, date, notes, gpus");
    }
  }
  if (!doc.contains("measured")) return Status::InvalidArgument(prefix + "measured is missing");
  if (cal.source.empty()) {
    return Status::InvalidArgument(prefix + "source is missing (say where the numbers come from)");
  }
  if (cal.measured && (cal.card.empty() || cal.date.empty())) {
    return Status::InvalidArgument(prefix + "measured is true but card or date is missing");
  }

  const Json* gpus = JsonChild(doc, "gpus");
  if (gpus == nullptr || !gpus->is_object()) {
    return Status::InvalidArgument(prefix + "gpus must be an object keyed by GPU name");
  }
  const Json* def = JsonChild(*gpus, "default");
  if (def == nullptr) return Status::InvalidArgument(prefix + "gpus.default is missing");
  GpuCalibration base;
  if (Status s = ParseGpuEntry(*def, prefix + "gpus.default", /*require_all=*/true, &base);
      !s.ok()) {
    return s;
  }
  cal.gpus["default"] = base;
  for (const auto& [key, value] : gpus->items()) {
    if (key == "default") continue;
    auto spec = LookupGpu(key);
    if (!spec.ok()) {
      return Status::InvalidArgument(prefix + "gpus." + key + ": " + spec.status().message());
    }
    const std::string canonical = Lower(spec->name);
    if (cal.gpus.contains(canonical)) {
      return Status::InvalidArgument(prefix + "gpus." + key + ": a second entry for " + spec->name);
    }
    GpuCalibration entry = base;
    entry.notes.clear();
    if (Status s = ParseGpuEntry(value, prefix + "gpus." + key, /*require_all=*/false, &entry);
        !s.ok()) {
      return s;
    }
    cal.gpus[canonical] = std::move(entry);
  }
  return cal;
}

StatusOr<Calibration> LoadCalibration(std::string_view path_or_empty) {
  if (path_or_empty.empty())
    return ParseCalibration(BuiltinCalibrationJson(), "built-in calibration");
  const std::string path(path_or_empty);
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return Status::NotFound("calibration file " + path + ": cannot open: " + std::strerror(errno));
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return Status::InvalidArgument("calibration file " + path + ": read error");
  return ParseCalibration(text.str(), "calibration file " + path);
}

}  // namespace pdpool::agent
