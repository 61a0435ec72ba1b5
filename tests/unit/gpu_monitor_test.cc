// GpuMonitor against a fake NVML (tests/fake_nvml, a shared library it dlopens like the real
// one): readings per visible GPU, which GPUs are visible (indices, UUIDs, all, none, the
// container runtime's list), and every failure giving no readings instead of a crash: no
// library, a library that is not NVML, init failing, a device failing, a query unsupported.
#include "agent/worker/gpu_monitor.h"

#include <dlfcn.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace pdpool::agent {
namespace {

constexpr const char* kFake = PDPOOL_FAKE_NVML_LIBRARY;
const std::string kGpu0 = "GPU-00000000-0000-0000-0000-000000000000";
const std::string kGpu1 = "GPU-00000000-0000-0000-0000-000000000001";

VisibleGpus All() {
  VisibleGpus v;
  v.all = true;
  return v;
}

VisibleGpus Ids(std::vector<std::string> ids, bool from_container_runtime = false) {
  VisibleGpus v;
  v.ids = std::move(ids);
  v.from_container_runtime = from_container_runtime;
  return v;
}

std::vector<std::string> Uuids(const std::vector<GpuReading>& readings) {
  std::vector<std::string> uuids;
  for (const GpuReading& r : readings) uuids.push_back(r.uuid);
  return uuids;
}

// Clears the fake's knobs and the variables GpuMonitor reads, and puts them back afterwards.
class GpuMonitorTest : public ::testing::Test {
 protected:
  static constexpr const char* kVariables[] = {"FAKE_NVML_GPUS",        "FAKE_NVML_INIT_ERROR",
                                               "FAKE_NVML_FAIL_DEVICE", "FAKE_NVML_NO_POWER",
                                               "FAKE_NVML_UTIL",        "FAKE_NVML_MEM_USED_MIB",
                                               "FAKE_NVML_POWER_MW",    "PDPOOL_NVML_LIBRARY",
                                               "CUDA_VISIBLE_DEVICES",  "NVIDIA_VISIBLE_DEVICES"};

  void SetUp() override {
    for (const char* name : kVariables) {
      const char* v = std::getenv(name);
      saved_.emplace_back(name, v != nullptr ? std::optional<std::string>(v) : std::nullopt);
      unsetenv(name);
    }
  }
  void TearDown() override {
    for (const auto& [name, value] : saved_) {
      if (value) {
        setenv(name, value->c_str(), 1);
      } else {
        unsetenv(name);
      }
    }
  }

 private:
  std::vector<std::pair<const char*, std::optional<std::string>>> saved_;
};

TEST(GpuMonitorVisibleTest, ParsesCudaAndNvidiaVisibleDevices) {
  VisibleGpus v = ParseVisibleGpus(nullptr, nullptr);
  EXPECT_TRUE(v.all);

  v = ParseVisibleGpus("0,2", nullptr);
  EXPECT_FALSE(v.all);
  EXPECT_EQ(v.ids, (std::vector<std::string>{"0", "2"}));
  EXPECT_FALSE(v.from_container_runtime);

  v = ParseVisibleGpus(" GPU-abc , 1 ,MIG-def", nullptr);
  EXPECT_EQ(v.ids, (std::vector<std::string>{"GPU-abc", "1", "MIG-def"}));

  for (const char* none : {"", "none", "void", " ", "-1"}) {
    v = ParseVisibleGpus(none, nullptr);
    EXPECT_FALSE(v.all) << none;
    EXPECT_TRUE(v.ids.empty()) << none;
  }
  // As in CUDA, the list stops at the first entry that is neither an index nor a UUID.
  v = ParseVisibleGpus("0,-1,2", nullptr);
  EXPECT_EQ(v.ids, (std::vector<std::string>{"0"}));
  v = ParseVisibleGpus("all", nullptr);
  EXPECT_TRUE(v.all);

  // CUDA_VISIBLE_DEVICES wins, even empty.
  v = ParseVisibleGpus("1", "0,1");
  EXPECT_EQ(v.ids, (std::vector<std::string>{"1"}));
  v = ParseVisibleGpus("", "all");
  EXPECT_FALSE(v.all);
  EXPECT_TRUE(v.ids.empty());

  v = ParseVisibleGpus(nullptr, "GPU-x,GPU-y");
  EXPECT_EQ(v.ids, (std::vector<std::string>{"GPU-x", "GPU-y"}));
  EXPECT_TRUE(v.from_container_runtime);
  v = ParseVisibleGpus(nullptr, "all");
  EXPECT_TRUE(v.all);
  v = ParseVisibleGpus(nullptr, "void");
  EXPECT_FALSE(v.all);
  EXPECT_TRUE(v.ids.empty());
}

TEST_F(GpuMonitorTest, ReadsUtilizationMemoryAndPowerOfEveryGpu) {
  GpuMonitor monitor(kFake, All());
  const std::vector<GpuReading> readings = monitor.Sample();
  ASSERT_EQ(readings.size(), 2u);
  EXPECT_TRUE(monitor.available());
  EXPECT_EQ(readings[0].uuid, kGpu0);
  EXPECT_EQ(readings[1].uuid, kGpu1);
  EXPECT_DOUBLE_EQ(readings[0].utilization.value(), 0.37);
  EXPECT_DOUBLE_EQ(readings[1].utilization.value(), 0.47);
  EXPECT_EQ(readings[0].memory_used_bytes.value(), 1ull << 30);
  EXPECT_EQ(readings[1].memory_used_bytes.value(), 2ull << 30);
  EXPECT_EQ(readings[0].memory_total_bytes.value(), 80ull << 30);
  EXPECT_DOUBLE_EQ(readings[0].power_watts.value(), 250.0);
  EXPECT_DOUBLE_EQ(readings[1].power_watts.value(), 251.0);

  // Each sample reads the GPUs afresh.
  setenv("FAKE_NVML_UTIL", "90", 1);
  setenv("FAKE_NVML_POWER_MW", "700500", 1);
  const std::vector<GpuReading> later = monitor.Sample();
  ASSERT_EQ(later.size(), 2u);
  EXPECT_DOUBLE_EQ(later[0].utilization.value(), 0.9);
  EXPECT_DOUBLE_EQ(later[1].utilization.value(), 1.0);  // 100%: NVML's ceiling
  EXPECT_DOUBLE_EQ(later[0].power_watts.value(), 700.5);
}

TEST_F(GpuMonitorTest, ReportsOnlyTheVisibleGpusByIndexOrUuid) {
  setenv("FAKE_NVML_GPUS", "4", 1);
  EXPECT_EQ(Uuids(GpuMonitor(kFake, Ids({"1"})).Sample()), (std::vector<std::string>{kGpu1}));
  // In the list's order; a GPU listed twice (index and UUID) once.
  EXPECT_EQ(Uuids(GpuMonitor(kFake, Ids({kGpu1, "0", "1"})).Sample()),
            (std::vector<std::string>{kGpu1, kGpu0}));
  // Unknown devices are left out; the others still reported.
  EXPECT_EQ(Uuids(GpuMonitor(kFake, Ids({"7", "GPU-nope", "0"})).Sample()),
            (std::vector<std::string>{kGpu0}));
  EXPECT_EQ(GpuMonitor(kFake, All()).Sample().size(), 4u);

  GpuMonitor none(kFake, Ids({}));
  EXPECT_TRUE(none.Sample().empty());
  EXPECT_FALSE(none.available());
}

TEST_F(GpuMonitorTest, ReadsVisibilityFromTheEnvironment) {
  setenv("FAKE_NVML_GPUS", "3", 1);
  setenv("NVIDIA_VISIBLE_DEVICES", "all", 1);
  setenv("CUDA_VISIBLE_DEVICES", "2,0", 1);
  EXPECT_EQ(Uuids(GpuMonitor(kFake).Sample()),
            (std::vector<std::string>{"GPU-00000000-0000-0000-0000-000000000002", kGpu0}));
  setenv("CUDA_VISIBLE_DEVICES", "none", 1);
  EXPECT_TRUE(GpuMonitor(kFake).Sample().empty());

  unsetenv("CUDA_VISIBLE_DEVICES");
  setenv("NVIDIA_VISIBLE_DEVICES", kGpu1.c_str(), 1);
  EXPECT_EQ(Uuids(GpuMonitor(kFake).Sample()), (std::vector<std::string>{kGpu1}));
  // Host indices: the container runtime exposed exactly these three, renumbered from 0.
  setenv("NVIDIA_VISIBLE_DEVICES", "3,5,6", 1);
  EXPECT_EQ(GpuMonitor(kFake).Sample().size(), 3u);
  // A process outside such a container sees every GPU: the indices are its own.
  setenv("NVIDIA_VISIBLE_DEVICES", "1", 1);
  EXPECT_EQ(Uuids(GpuMonitor(kFake).Sample()), (std::vector<std::string>{kGpu1}));
}

TEST_F(GpuMonitorTest, LibraryFromEnvironmentVariable) {
  setenv("PDPOOL_NVML_LIBRARY", kFake, 1);
  GpuMonitor monitor("", All());
  EXPECT_EQ(monitor.Sample().size(), 2u);
}

TEST_F(GpuMonitorTest, NoLibraryNoReadings) {
  GpuMonitor monitor("/nonexistent/libnvidia-ml.so.1", All());
  EXPECT_TRUE(monitor.Sample().empty());
  EXPECT_TRUE(monitor.Sample().empty());
  EXPECT_FALSE(monitor.available());

  // A library that loads but is not NVML.
  GpuMonitor not_nvml("libm.so.6", All());
  EXPECT_TRUE(not_nvml.Sample().empty());
  EXPECT_FALSE(not_nvml.available());
}

TEST_F(GpuMonitorTest, InitFailureNoReadingsAndNoRetry) {
  setenv("FAKE_NVML_INIT_ERROR", "9", 1);  // NVML_ERROR_DRIVER_NOT_LOADED
  GpuMonitor monitor(kFake, All());
  EXPECT_TRUE(monitor.Sample().empty());
  EXPECT_FALSE(monitor.available());
  unsetenv("FAKE_NVML_INIT_ERROR");
  EXPECT_TRUE(monitor.Sample().empty());
}

TEST_F(GpuMonitorTest, FailingDeviceIsLeftOutAndComesBack) {
  GpuMonitor monitor(kFake, All());
  ASSERT_EQ(monitor.Sample().size(), 2u);
  setenv("FAKE_NVML_FAIL_DEVICE", "0", 1);
  EXPECT_EQ(Uuids(monitor.Sample()), (std::vector<std::string>{kGpu1}));
  EXPECT_EQ(Uuids(monitor.Sample()), (std::vector<std::string>{kGpu1}));
  unsetenv("FAKE_NVML_FAIL_DEVICE");
  EXPECT_EQ(monitor.Sample().size(), 2u);

  // Failing from the start: never resolved, the other GPU still reported.
  setenv("FAKE_NVML_FAIL_DEVICE", "1", 1);
  EXPECT_EQ(Uuids(GpuMonitor(kFake, All()).Sample()), (std::vector<std::string>{kGpu0}));
}

TEST_F(GpuMonitorTest, UnsupportedQueryLeavesOnlyThatFieldEmpty) {
  setenv("FAKE_NVML_NO_POWER", "1", 1);
  const std::vector<GpuReading> readings = GpuMonitor(kFake, All()).Sample();
  ASSERT_EQ(readings.size(), 2u);
  EXPECT_TRUE(readings[0].power_watts.has_value());
  EXPECT_FALSE(readings[1].power_watts.has_value());
  EXPECT_DOUBLE_EQ(readings[1].utilization.value(), 0.47);
  EXPECT_EQ(readings[1].memory_used_bytes.value(), 2ull << 30);
}

TEST_F(GpuMonitorTest, ShutsNvmlDownWhenDestroyed) {
  // The test's own handle keeps the fake loaded (and its counter) across the monitor's dlclose.
  void* fake = dlopen(kFake, RTLD_NOW | RTLD_LOCAL);
  ASSERT_NE(fake, nullptr) << dlerror();
  auto init_count = reinterpret_cast<int (*)()>(dlsym(fake, "FakeNvmlInitCount"));
  ASSERT_NE(init_count, nullptr);
  {
    GpuMonitor monitor(kFake, All());
    EXPECT_EQ(init_count(), 0);  // nothing loaded before the first sample
    monitor.Sample();
    monitor.Sample();
    EXPECT_EQ(init_count(), 1);
  }
  EXPECT_EQ(init_count(), 0);
  {
    GpuMonitor nothing_visible(kFake, Ids({}));
    nothing_visible.Sample();
  }
  EXPECT_EQ(init_count(), 0);
  dlclose(fake);
}

TEST_F(GpuMonitorTest, ConcurrentSamples) {
  GpuMonitor monitor(kFake, All());
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 200; ++i) {
        if (monitor.Sample().size() != 2) wrong.fetch_add(1);
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(wrong.load(), 0);
}

}  // namespace
}  // namespace pdpool::agent
