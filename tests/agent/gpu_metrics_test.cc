// A worker process's GPU series: with NVML (the fake of tests/fake_nvml, named by
// PDPOOL_NVML_LIBRARY in its environment) /metrics carries pdpool_worker_gpu_* for the GPUs
// CUDA_VISIBLE_DEVICES leaves it, passes promtool, and follows a role switch; without NVML the
// series are absent and the worker serves as before.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "agent/worker/worker_protocol.h"
#include "tests/agent/agent_env.h"

namespace pdpool::testing {
namespace {

namespace protocol = agent::protocol;

const std::string kGpu0 = "GPU-00000000-0000-0000-0000-000000000000";
const std::string kGpu1 = "GPU-00000000-0000-0000-0000-000000000001";

// Sets environment variables for the processes a test starts (they inherit this process's
// environment) and puts the old values back when it goes.
class ScopedEnv {
 public:
  void Set(const char* name, const std::string& value) {
    Save(name);
    setenv(name, value.c_str(), 1);
  }
  void Unset(const char* name) {
    Save(name);
    unsetenv(name);
  }
  ~ScopedEnv() {
    for (auto it = saved_.rbegin(); it != saved_.rend(); ++it) {
      if (it->second) {
        setenv(it->first, it->second->c_str(), 1);
      } else {
        unsetenv(it->first);
      }
    }
  }

 private:
  void Save(const char* name) {
    const char* v = std::getenv(name);
    saved_.emplace_back(name, v != nullptr ? std::optional<std::string>(v) : std::nullopt);
  }
  std::vector<std::pair<const char*, std::optional<std::string>>> saved_;
};

std::string Series(const std::string& name, const std::string& role, const std::string& gpu) {
  return name + "{gpu=\"" + gpu + "\",role=\"" + role + "\"}";
}

TEST(GpuMetricsTest, WorkerExportsTheGpusItSeesAndFollowsARoleSwitch) {
  ScopedEnv scoped;
  scoped.Set("PDPOOL_NVML_LIBRARY", PDPOOL_FAKE_NVML_LIBRARY);
  scoped.Set("CUDA_VISIBLE_DEVICES", "1");
  scoped.Unset("NVIDIA_VISIBLE_DEVICES");
  scoped.Set("FAKE_NVML_GPUS", "2");
  scoped.Set("FAKE_NVML_UTIL", "55");
  AgentEnv env;
  Process decode = env.StartWorker("decode");

  HttpResult m = env.Get(decode.port, "/metrics", false);
  ASSERT_EQ(m.status, 200);
  EXPECT_DOUBLE_EQ(
      AgentEnv::MetricValue(m.body, Series("pdpool_worker_gpu_utilization_ratio", "decode", kGpu1)),
      0.65);
  EXPECT_EQ(
      AgentEnv::MetricValue(m.body, Series("pdpool_worker_gpu_memory_used_bytes", "decode", kGpu1)),
      2147483648.0);
  EXPECT_EQ(AgentEnv::MetricValue(m.body,
                                  Series("pdpool_worker_gpu_memory_total_bytes", "decode", kGpu1)),
            85899345920.0);
  EXPECT_DOUBLE_EQ(
      AgentEnv::MetricValue(m.body, Series("pdpool_worker_gpu_power_watts", "decode", kGpu1)),
      251.0);
  EXPECT_EQ(m.body.find(kGpu0), std::string::npos) << "GPU 0 is not visible to the worker";
  const std::string file =
      env.BuildPath("agent-test-logs/gpu-metrics-" + std::to_string(decode.port) + ".txt");
  std::ofstream(file) << m.body;
  std::string out;
  EXPECT_EQ(AgentEnv::RunCommand("promtool check metrics < " + file, &out), 0) << out;

  ASSERT_EQ(env.Post(decode.port, protocol::kRolePath, {{protocol::kRoleField, "prefill"}}).status,
            200);
  const std::string after = env.Get(decode.port, "/metrics", false).body;
  EXPECT_EQ(
      AgentEnv::MetricValue(after, Series("pdpool_worker_gpu_utilization_ratio", "decode", kGpu1)),
      -1);
  EXPECT_DOUBLE_EQ(
      AgentEnv::MetricValue(after, Series("pdpool_worker_gpu_utilization_ratio", "prefill", kGpu1)),
      0.65);
}

TEST(GpuMetricsTest, NoNvmlNoGpuSeries) {
  ScopedEnv scoped;
  scoped.Set("PDPOOL_NVML_LIBRARY", "/nonexistent/libnvidia-ml.so.1");
  AgentEnv env;
  Process decode = env.StartWorker("decode");
  HttpResult m = env.Get(decode.port, "/metrics", false);
  ASSERT_EQ(m.status, 200);
  EXPECT_EQ(AgentEnv::MetricValue(m.body, "pdpool_worker_ready{role=\"decode\"}"), 1);
  EXPECT_EQ(m.body.find("pdpool_worker_gpu_"), std::string::npos) << m.body;
}

}  // namespace
}  // namespace pdpool::testing
