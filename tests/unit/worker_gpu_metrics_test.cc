// A worker's GPU series (pdpool_worker_gpu_*, labels role and gpu) in its /metrics text: fed
// from GpuMonitor over the fake NVML (tests/fake_nvml) they carry each GPU's values; without
// NVML they are absent; a GPU or a field that a sample lacks loses its series; a role switch
// moves them to the new role, so sums by role count each GPU once.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "agent/worker/gpu_monitor.h"
#include "agent/worker/worker_metrics.h"
#include "common/admin_server.h"

namespace pdpool::agent {
namespace {

const std::string kGpu0 = "GPU-00000000-0000-0000-0000-000000000000";
const std::string kGpu1 = "GPU-00000000-0000-0000-0000-000000000001";

// Value of one exposition line `series value`, or -1 when absent.
double Value(const std::string& text, const std::string& series) {
  size_t at = text.find("\n" + series + " ");
  if (at == std::string::npos) return -1;
  return std::stod(text.substr(at + series.size() + 2));
}

std::string Series(const std::string& name, const std::string& role, const std::string& gpu) {
  return name + "{gpu=\"" + gpu + "\",role=\"" + role + "\"}";
}

VisibleGpus All() {
  VisibleGpus v;
  v.all = true;
  return v;
}

TEST(WorkerMetricsGpuTest, ExportsTheFakeNvmlReadings) {
  WorkerMetrics m("decode");
  GpuMonitor monitor(PDPOOL_FAKE_NVML_LIBRARY, All());
  m.SetGpuReadings(monitor.Sample());
  const std::string text = SerializeMetrics(*m.registry());
  EXPECT_DOUBLE_EQ(Value(text, Series("pdpool_worker_gpu_utilization_ratio", "decode", kGpu0)),
                   0.37);
  EXPECT_DOUBLE_EQ(Value(text, Series("pdpool_worker_gpu_utilization_ratio", "decode", kGpu1)),
                   0.47);
  EXPECT_EQ(Value(text, Series("pdpool_worker_gpu_memory_used_bytes", "decode", kGpu0)),
            1073741824.0);
  EXPECT_EQ(Value(text, Series("pdpool_worker_gpu_memory_used_bytes", "decode", kGpu1)),
            2147483648.0);
  EXPECT_EQ(Value(text, Series("pdpool_worker_gpu_memory_total_bytes", "decode", kGpu1)),
            85899345920.0);
  EXPECT_DOUBLE_EQ(Value(text, Series("pdpool_worker_gpu_power_watts", "decode", kGpu0)), 250);
  EXPECT_DOUBLE_EQ(Value(text, Series("pdpool_worker_gpu_power_watts", "decode", kGpu1)), 251);
  EXPECT_NE(text.find("# TYPE pdpool_worker_gpu_utilization_ratio gauge"), std::string::npos);
}

TEST(WorkerMetricsGpuTest, NoNvmlNoGpuSeries) {
  WorkerMetrics m("prefill");
  GpuMonitor monitor("/nonexistent/libnvidia-ml.so.1", All());
  m.SetGpuReadings(monitor.Sample());
  EngineStats stats;
  m.SetEngineStats(stats, true);
  const std::string text = SerializeMetrics(*m.registry());
  EXPECT_EQ(Value(text, "pdpool_worker_ready{role=\"prefill\"}"), 1);
  EXPECT_EQ(text.find("pdpool_worker_gpu_"), std::string::npos) << text;
}

TEST(WorkerMetricsGpuTest, MissingGpusAndFieldsLoseTheirSeries) {
  WorkerMetrics m("decode");
  GpuReading a{kGpu0, 0.5, 10, 100, 300.0};
  GpuReading b{kGpu1, 0.25, 20, 100, 200.0};
  m.SetGpuReadings({a, b});
  a.power_watts.reset();
  a.utilization = 0.75;
  m.SetGpuReadings({a});
  std::string text = SerializeMetrics(*m.registry());
  EXPECT_EQ(Value(text, Series("pdpool_worker_gpu_utilization_ratio", "decode", kGpu0)), 0.75);
  EXPECT_EQ(Value(text, Series("pdpool_worker_gpu_memory_used_bytes", "decode", kGpu0)), 10);
  EXPECT_EQ(Value(text, Series("pdpool_worker_gpu_power_watts", "decode", kGpu0)), -1);
  EXPECT_EQ(text.find(kGpu1), std::string::npos) << text;

  // The field comes back with the next reading that has it.
  a.power_watts = 310.0;
  m.SetGpuReadings({a});
  text = SerializeMetrics(*m.registry());
  EXPECT_EQ(Value(text, Series("pdpool_worker_gpu_power_watts", "decode", kGpu0)), 310);

  m.SetGpuReadings({});
  text = SerializeMetrics(*m.registry());
  EXPECT_EQ(text.find("pdpool_worker_gpu_"), std::string::npos) << text;
}

TEST(WorkerMetricsGpuTest, RoleSwitchMovesTheGpuSeries) {
  WorkerMetrics m("decode");
  const GpuReading a{kGpu0, 0.5, 10, 100, 300.0};
  m.SetGpuReadings({a});
  m.SetRole("prefill");
  // Between the switch and the next scrape: the old role's gauges are gone already.
  std::string text = SerializeMetrics(*m.registry());
  EXPECT_EQ(text.find(kGpu0), std::string::npos) << text;

  m.SetGpuReadings({a});
  text = SerializeMetrics(*m.registry());
  for (const char* name :
       {"pdpool_worker_gpu_utilization_ratio", "pdpool_worker_gpu_memory_used_bytes",
        "pdpool_worker_gpu_memory_total_bytes", "pdpool_worker_gpu_power_watts"}) {
    EXPECT_EQ(Value(text, Series(name, "decode", kGpu0)), -1) << name;
    EXPECT_GE(Value(text, Series(name, "prefill", kGpu0)), 0) << name;
  }
}

}  // namespace
}  // namespace pdpool::agent
