// sim_predict: engine_bench's cases through the sim backend's PerfModel (no GPU), so that
// bench/gpu/fit_calibration.py can be checked against the C++ model it calibrates.
//
//   sim_predict --gpu H200 --calibration C.json --json OUT
//       A synthetic engine_bench report: every case "measured" at exactly the time PerfModel
//       predicts with that calibration (ceilings: datasheet × its efficiencies). Fitting it
//       must give the calibration back (tests/unit/fit_calibration_test.py).
//   sim_predict --bench-json IN --calibration C.json --json OUT
//       IN (an engine_bench report) with each row's sim_ms recomputed with that calibration,
//       e.g. to check a freshly fitted calibration.json against the measurements.
//
// Exit 0 on success, 1 on bad input. Single-threaded.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "agent/engine/sim/calibration.h"
#include "agent/engine/sim/gpu_catalog.h"
#include "agent/engine/sim/perf_model.h"
#include "agent/model/model_config.h"
#include "bench/gpu/engine_cases.h"
#include "common/json.h"

namespace {

using namespace pdpool;
using namespace pdpool::bench::engine;

struct Options {
  std::string gpu;
  std::string calibration;
  std::string preset = "llama-3.1-8b";
  std::string rows;
  std::string bench_json;
  std::string json_path;
};

int Fail(const std::string& message) {
  std::fprintf(stderr, "sim_predict: %s\n", message.c_str());
  return 1;
}

StatusOr<agent::PerfModel> MakeModel(const std::string& preset, const std::string& gpu,
                                     const agent::Calibration& calibration) {
  auto model = agent::ModelConfigFromPreset(preset);
  if (!model.ok()) return model.status();
  auto spec = agent::LookupGpu(gpu);
  if (!spec.ok()) return spec.status();
  return agent::PerfModel::Create(*model, *spec, calibration.For(spec->name), 1);
}

int Synthesize(const Options& opt, const agent::Calibration& calibration) {
  if (opt.gpu.empty()) return Fail("--gpu is required without --bench-json");
  auto perf = MakeModel(opt.preset, opt.gpu, calibration);
  if (!perf.ok()) return Fail(perf.status().message());
  auto cases = SelectRows(opt.rows);
  if (!cases.ok()) return Fail(cases.status().message());
  const agent::GpuSpec& spec = perf->gpu();
  const agent::GpuCalibration& cal = perf->calibration();
  Report report;
  report.tool = "sim_predict";
  report.date = "synthetic";
  report.device_name = "synthetic: sim PerfModel on " + spec.name;
  report.datasheet = spec;
  report.ceilings.copy_bytes = double(size_t{2} << 30);
  report.ceilings.copy_bytes_per_s = spec.hbm_bandwidth * cal.hbm_efficiency;
  report.ceilings.copy_ms = 2 * report.ceilings.copy_bytes / report.ceilings.copy_bytes_per_s * 1e3;
  report.ceilings.gemm_n = 8192;
  report.ceilings.gemm_flops_per_s = spec.bf16_flops * cal.matmul_efficiency;
  report.ceilings.gemm_ms = 2.0 * 8192 * 8192 * 8192 / report.ceilings.gemm_flops_per_s * 1e3;
  report.preset = opt.preset;
  report.model = perf->model();
  report.backend = Json{{"backend", "sim"}};
  report.timing = "none: every time is PerfModel::StepTime";
  report.sim_calibration = cal;
  for (const EngineCase& c : *cases) {
    MeasuredRow row;
    row.c = c;
    const double ms = SimPredictSeconds(*perf, c) * 1e3;
    row.samples_ms = {ms};
    row.sim_ms = ms;
    report.rows.push_back(std::move(row));
  }
  if (!opt.json_path.empty()) {
    if (Status s = WriteFileAtomically(opt.json_path, ReportToJson(report).dump(1) + "\n");
        !s.ok()) {
      return Fail(s.message());
    }
  }
  std::printf("%s", RenderTable(report).c_str());
  return 0;
}

int Predict(const Options& opt, const agent::Calibration& calibration) {
  std::ifstream in(opt.bench_json);
  if (!in) return Fail("--bench-json " + opt.bench_json + ": cannot open");
  std::stringstream text;
  text << in.rdbuf();
  Json doc;
  try {
    doc = Json::parse(text.str());
  } catch (const Json::exception& e) {
    return Fail("--bench-json " + opt.bench_json + ": not valid JSON: " + e.what());
  }
  const std::string preset = JsonStringAt(doc, {"model", "preset"});
  const std::string gpu = opt.gpu.empty() ? JsonStringAt(doc, {"gpu"}) : opt.gpu;
  if (preset.empty()) return Fail("--bench-json: model.preset is missing");
  if (gpu.empty()) return Fail("--bench-json: no catalog GPU in the report; pass --gpu");
  auto perf = MakeModel(preset, gpu, calibration);
  if (!perf.ok()) return Fail(perf.status().message());
  Json* rows = doc.contains("rows") ? &doc["rows"] : nullptr;
  if (rows == nullptr || !rows->is_array()) return Fail("--bench-json: rows must be an array");
  std::printf("%-16s %12s %12s\n", "case", "measured ms", "sim ms");
  for (Json& row : *rows) {
    const std::string name = JsonStringAt(row, {"name"});
    auto one = SelectRows(name);
    if (!one.ok() || one->size() != 1) return Fail("--bench-json: bad row name \"" + name + "\"");
    const double ms = SimPredictSeconds(*perf, one->front()) * 1e3;
    row["sim_ms"] = ms;
    const Json* measured = JsonChild(row, "ms");
    std::printf("%-16s %12s %12.4f\n", name.c_str(),
                measured != nullptr && measured->is_number()
                    ? std::to_string(measured->get<double>()).c_str()
                    : "-",
                ms);
  }
  doc["sim_calibration"] = CalibrationJson(perf->calibration());
  if (!opt.json_path.empty()) {
    if (Status s = WriteFileAtomically(opt.json_path, doc.dump(1) + "\n"); !s.ok()) {
      return Fail(s.message());
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  CLI::App app{"sim_predict: engine_bench's cases through the sim's PerfModel (no GPU)"};
  app.add_option("--gpu", opt.gpu, "catalog GPU (H100, H200, B200, GB200 or a product label)");
  app.add_option("--calibration", opt.calibration, "calibration JSON (default: built-in)");
  app.add_option("--preset", opt.preset, "model preset (synthesis)")->capture_default_str();
  app.add_option("--rows", opt.rows, "cases, as engine_bench --rows (synthesis)");
  app.add_option("--bench-json", opt.bench_json,
                 "an engine_bench report: recompute its sim_ms instead of synthesizing");
  app.add_option("--json", opt.json_path, "output JSON");
  CLI11_PARSE(app, argc, argv);
  auto calibration = agent::LoadCalibration(opt.calibration);
  if (!calibration.ok()) return Fail(calibration.status().message());
  return opt.bench_json.empty() ? Synthesize(opt, *calibration) : Predict(opt, *calibration);
}
