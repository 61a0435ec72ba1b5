// Tests for the simulated node (agent/node): what it makes the API server show — the Node with
// its capacity, labels and Ready condition, the Lease renewed on the (fake) clock, pods
// reported Running/Ready with unique loopback IPs, pods marked for deletion deleted, the Node
// re-registered after deletion — against the in-memory FakeKubeClient and a FakeClock.
#include "agent/node/sim_node.h"

#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <thread>

#include "agent/node/node_agent.h"
#include "agent/node/status_only_pod_runner.h"
#include "common/clock.h"
#include "tests/fakes/fake_kube_client.h"

namespace pdpool::agent {
namespace {

using kube::FakeKubeClient;
using std::chrono::seconds;

// Polls `cond` until it holds or the (real-time) deadline passes.
bool Eventually(const std::function<bool()>& cond,
                std::chrono::milliseconds timeout = std::chrono::milliseconds(5000)) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (cond()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return cond();
}

std::string Str(const Json& doc, const char* pointer) {
  return JsonGet<std::string>(doc, pointer, "");
}

const Json* FindCondition(const Json& obj, const std::string& type) {
  const Json* conds = nullptr;
  try {
    conds = &obj.at("status").at("conditions");
  } catch (...) {
    return nullptr;
  }
  for (const Json& c : *conds) {
    if (Str(c, "/type") == type) return &c;
  }
  return nullptr;
}

bool ConditionTrue(const Json& obj, const std::string& type) {
  const Json* c = FindCondition(obj, type);
  return c != nullptr && Str(*c, "/status") == "True";
}

Json PodManifest(const std::string& name, const std::string& node) {
  return {
      {"apiVersion", "v1"},
      {"kind", "Pod"},
      {"metadata", {{"name", name}, {"namespace", "serving"}}},
      {"spec",
       {{"nodeName", node},
        {"containers", Json::array({{{"name", "worker"},
                                     {"image", "ghcr.io/pdpool/agent:0.1.0"},
                                     {"resources", {{"limits", {{"nvidia.com/gpu", "4"}}}}}}})}}}};
}

SimNodeOptions TestOptions(const std::string& name = "gb200-0") {
  SimNodeOptions o;
  o.name = name;
  o.gpus = 4;
  o.clique = "nvl72-a";
  o.labels = {{"team", "inference"}};
  o.pod_ip_prefix = "127.1.0.";
  o.clock_poll = std::chrono::milliseconds(1);
  return o;
}

class SimNodeTest : public ::testing::Test {
 protected:
  // Starts one node with a StatusOnlyPodRunner (kept as runner_ for inspection).
  void StartNode(SimNodeOptions options = TestOptions()) {
    auto runner = std::make_unique<StatusOnlyPodRunner>(&clock_);
    runner_ = runner.get();
    node_ = std::make_unique<SimNode>(&client_, &clock_, std::move(options), std::move(runner));
    node_->Start();
  }

  StatusOr<Json> GetNode(const std::string& name = "gb200-0") {
    return client_.Get(kube::kNodes, "", name);
  }
  StatusOr<Json> GetLease(const std::string& name = "gb200-0") {
    return client_.Get(kube::kLeases, kNodeLeaseNamespace, name);
  }
  StatusOr<Json> GetPod(const std::string& name) {
    return client_.Get(kube::kPods, "serving", name);
  }
  bool PodRunningReady(const std::string& name) {
    auto pod = GetPod(name);
    return pod.ok() && Str(*pod, "/status/phase") == "Running" && ConditionTrue(*pod, "Ready");
  }
  // Advances the fake clock once the node has nothing left to do at the current time.
  void AdvanceWhenQuiescent(Duration d) {
    ASSERT_TRUE(Eventually([&] { return node_->Quiescent(); }));
    clock_.Advance(d);
  }
  bool NodeReady(const std::string& name = "gb200-0") {
    auto node = GetNode(name);
    return node.ok() && ConditionTrue(*node, "Ready");
  }

  FakeClock clock_;
  FakeKubeClient client_{&clock_};
  StatusOnlyPodRunner* runner_ = nullptr;
  std::unique_ptr<SimNode> node_;  // declared last: stopped before the client goes
};

TEST_F(SimNodeTest, RegistersNodeWithCapacityLabelsAndReady) {
  StartNode();
  ASSERT_TRUE(Eventually([&] { return NodeReady(); }));
  Json node = *GetNode();

  const Json& labels = node["metadata"]["labels"];
  EXPECT_EQ(labels["kubernetes.io/hostname"], "gb200-0");
  EXPECT_EQ(labels["kubernetes.io/os"], "linux");
  EXPECT_EQ(labels["nvidia.com/gpu.clique"], "nvl72-a");
  EXPECT_EQ(labels["nvidia.com/gpu.product"], "NVIDIA-GB200");
  EXPECT_EQ(labels["nvidia.com/gpu.count"], "4");
  EXPECT_EQ(labels["pdpool.dev/simulated"], "true");
  EXPECT_EQ(labels["team"], "inference");

  for (const char* field : {"capacity", "allocatable"}) {
    const Json& r = node["status"][field];
    EXPECT_EQ(r["nvidia.com/gpu"], "4") << field;
    EXPECT_EQ(r["cpu"], "64") << field;
    EXPECT_EQ(r["memory"], "512Gi") << field;
    EXPECT_EQ(r["pods"], "110") << field;
  }
  const Json* ready = FindCondition(node, "Ready");
  ASSERT_NE(ready, nullptr);
  EXPECT_EQ((*ready)["reason"], "KubeletReady");
  EXPECT_EQ((*ready)["lastHeartbeatTime"], FormatRfc3339(clock_.WallNow()));
  for (const char* pressure : {"MemoryPressure", "DiskPressure", "PIDPressure"}) {
    const Json* c = FindCondition(node, pressure);
    ASSERT_NE(c, nullptr) << pressure;
    EXPECT_EQ((*c)["status"], "False") << pressure;
  }
  EXPECT_EQ(node["status"]["addresses"],
            (Json::array({{{"type", "InternalIP"}, {"address", "127.0.0.1"}},
                          {{"type", "Hostname"}, {"address", "gb200-0"}}})));
  EXPECT_EQ(node["status"]["nodeInfo"]["kubeletVersion"], "v1.20.2");
  // Status went through the status subresource (the fake drops .status on Create).
  EXPECT_GE(
      client_.CallCount("Patch", kube::kNodes) + client_.CallCount("UpdateStatus", kube::kNodes),
      1);

  ASSERT_TRUE(Eventually([&] { return GetLease().ok(); }));
  Json lease = *GetLease();
  EXPECT_EQ(lease["spec"]["holderIdentity"], "gb200-0");
  EXPECT_EQ(lease["spec"]["leaseDurationSeconds"], 40);
  EXPECT_EQ(lease["spec"]["renewTime"], FormatRfc3339Micro(clock_.WallNow()));
  EXPECT_EQ(lease["metadata"]["ownerReferences"][0]["uid"], node["metadata"]["uid"]);
}

TEST_F(SimNodeTest, ExistingNodeKeepsForeignLabelsAndGetsOurs) {
  ASSERT_TRUE(client_
                  .Upsert(kube::kNodes,
                          {{"metadata",
                            {{"name", "gb200-0"},
                             {"labels", {{"keep", "me"}, {"nvidia.com/gpu.clique", "old"}}}}}})
                  .ok());
  StartNode();
  ASSERT_TRUE(Eventually([&] { return NodeReady(); }));
  Json node = *GetNode();
  EXPECT_EQ(node["metadata"]["labels"]["keep"], "me");
  EXPECT_EQ(node["metadata"]["labels"]["nvidia.com/gpu.clique"], "nvl72-a");
  EXPECT_EQ(node["status"]["capacity"]["nvidia.com/gpu"], "4");
}

TEST_F(SimNodeTest, LeaseAndHeartbeatRenewedAfterAdvancingTheClock) {
  StartNode();
  const std::string first = FormatRfc3339Micro(clock_.WallNow());
  ASSERT_TRUE(Eventually([&] {
    auto l = GetLease();
    return l.ok() && Str(*l, "/spec/renewTime") == first;
  }));

  AdvanceWhenQuiescent(seconds(10));
  const WallTime later = clock_.WallNow();
  EXPECT_TRUE(Eventually([&] {
    auto l = GetLease();
    return l.ok() && Str(*l, "/spec/renewTime") == FormatRfc3339Micro(later);
  }));
  EXPECT_TRUE(Eventually([&] {
    auto n = GetNode();
    const Json* ready = n.ok() ? FindCondition(*n, "Ready") : nullptr;
    return ready != nullptr && Str(*ready, "/lastHeartbeatTime") == FormatRfc3339(later);
  }));
  // The Ready condition did not flip, so its transition time stays at registration.
  Json node = *GetNode();
  const Json* ready = FindCondition(node, "Ready");
  ASSERT_NE(ready, nullptr);
  EXPECT_NE(Str(*ready, "/lastTransitionTime"), FormatRfc3339(later));
}

TEST_F(SimNodeTest, RetriesRegistrationWithBackoffAfterApiErrors) {
  client_.FailNext("Create", Status::Unavailable("apiserver down"), &kube::kNodes);
  StartNode();
  ASSERT_TRUE(Eventually([&] { return node_->api_errors() >= 1; }));
  EXPECT_FALSE(GetNode().ok());  // waits out its backoff on the clock
  AdvanceWhenQuiescent(seconds(1));
  EXPECT_TRUE(Eventually([&] { return NodeReady(); }));
}

TEST_F(SimNodeTest, PodBoundToNodeBecomesRunningAndReadyWithLoopbackIp) {
  StartNode();
  ASSERT_TRUE(client_.Create(kube::kPods, "serving", PodManifest("prefill-0", "gb200-0")).ok());
  ASSERT_TRUE(Eventually([&] { return PodRunningReady("prefill-0"); }));
  Json pod = *GetPod("prefill-0");
  const Json& st = pod["status"];
  std::string ip = Str(st, "/podIP");
  EXPECT_TRUE(ip.starts_with("127.1.0.")) << ip;  // 127.0.0.0/8, this node's range
  EXPECT_EQ(st["podIPs"], (Json::array({{{"ip", ip}}})));
  EXPECT_EQ(st["hostIP"], "127.0.0.1");
  EXPECT_EQ(st["startTime"], FormatRfc3339(clock_.WallNow()));
  for (const char* type : {"PodScheduled", "Initialized", "ContainersReady", "Ready"}) {
    EXPECT_TRUE(ConditionTrue(pod, type)) << type;
  }
  ASSERT_EQ(st["containerStatuses"].size(), 1u);
  const Json& cs = st["containerStatuses"][0];
  EXPECT_EQ(cs["name"], "worker");
  EXPECT_EQ(cs["ready"], true);
  EXPECT_EQ(cs["started"], true);
  EXPECT_EQ(cs["restartCount"], 0);
  EXPECT_EQ(cs["image"], "ghcr.io/pdpool/agent:0.1.0");
  EXPECT_FALSE(Str(cs, "/imageID").empty());
  EXPECT_EQ(cs["containerID"], "pdpool://" + Str(pod, "/metadata/uid") + "/worker");
  EXPECT_EQ(cs["state"]["running"]["startedAt"], FormatRfc3339(clock_.WallNow()));
}

TEST_F(SimNodeTest, IgnoresPodsOfOtherNodes) {
  StartNode();
  ASSERT_TRUE(client_.Create(kube::kPods, "serving", PodManifest("elsewhere", "gb200-9")).ok());
  ASSERT_TRUE(client_.Create(kube::kPods, "serving", PodManifest("mine", "gb200-0")).ok());
  ASSERT_TRUE(Eventually([&] { return PodRunningReady("mine"); }));
  Json elsewhere = *GetPod("elsewhere");
  EXPECT_EQ(Str(elsewhere, "/status/phase"), "");
  EXPECT_EQ(Str(elsewhere, "/status/podIP"), "");
}

TEST_F(SimNodeTest, StatusWriteFailureIsRetriedAfterBackoff) {
  StartNode();
  ASSERT_TRUE(Eventually([&] { return NodeReady(); }));
  client_.FailNext("Patch", Status::Unavailable("etcd timeout"), &kube::kPods);
  ASSERT_TRUE(client_.Create(kube::kPods, "serving", PodManifest("p", "gb200-0")).ok());
  ASSERT_TRUE(Eventually([&] { return client_.CallCount("Patch", kube::kPods) >= 1; }));
  EXPECT_FALSE(PodRunningReady("p"));
  AdvanceWhenQuiescent(seconds(1));
  EXPECT_TRUE(Eventually([&] { return PodRunningReady("p"); }));
}

TEST_F(SimNodeTest, PodIpsAreUniqueOnANode) {
  StartNode();
  constexpr int kPods = 20;
  for (int i = 0; i < kPods; ++i) {
    ASSERT_TRUE(
        client_.Create(kube::kPods, "serving", PodManifest("p" + std::to_string(i), "gb200-0"))
            .ok());
  }
  std::set<std::string> ips;
  for (int i = 0; i < kPods; ++i) {
    std::string name = "p" + std::to_string(i);
    ASSERT_TRUE(Eventually([&] { return PodRunningReady(name); })) << name;
    ips.insert(Str(*GetPod(name), "/status/podIP"));
  }
  EXPECT_EQ(ips.size(), static_cast<size_t>(kPods));
}

TEST_F(SimNodeTest, PodIpsAreUniqueAcrossNodesOfOneAgent) {
  NodeAgentOptions flags;
  flags.name = "gb200";
  flags.count = 3;
  flags.ip_prefix = 7;
  auto expanded = ExpandNodeOptions(flags);
  ASSERT_TRUE(expanded.ok()) << expanded.status().ToString();
  for (auto& o : *expanded) o.clock_poll = std::chrono::milliseconds(1);
  NodeAgent agent(&client_, &clock_, std::move(*expanded), [this](const SimNodeOptions&) {
    return std::make_unique<StatusOnlyPodRunner>(&clock_);
  });
  agent.Start();
  std::set<std::string> ips;
  for (int n = 0; n < 3; ++n) {
    for (int i = 0; i < 3; ++i) {
      std::string node = "gb200-" + std::to_string(n);
      ASSERT_TRUE(
          client_.Create(kube::kPods, "serving", PodManifest(node + "-p" + std::to_string(i), node))
              .ok());
    }
  }
  for (int n = 0; n < 3; ++n) {
    for (int i = 0; i < 3; ++i) {
      std::string name = "gb200-" + std::to_string(n) + "-p" + std::to_string(i);
      ASSERT_TRUE(Eventually([&] { return PodRunningReady(name); })) << name;
      std::string ip = Str(*GetPod(name), "/status/podIP");
      EXPECT_TRUE(ip.starts_with("127.7." + std::to_string(n) + ".")) << ip;
      ips.insert(ip);
    }
  }
  EXPECT_EQ(ips.size(), 9u);
  for (int n = 0; n < 3; ++n) {
    EXPECT_TRUE(Eventually([&] { return NodeReady("gb200-" + std::to_string(n)); }));
  }
  agent.Stop();
}

TEST_F(SimNodeTest, PodWithDeletionTimestampIsStoppedAndDeleted) {
  StartNode();
  ASSERT_TRUE(client_.Create(kube::kPods, "serving", PodManifest("doomed", "gb200-0")).ok());
  ASSERT_TRUE(Eventually([&] { return PodRunningReady("doomed"); }));
  EXPECT_EQ(runner_->running_pods(), 1u);

  // What the API server does on a graceful delete (the fake deletes at once, so set it here).
  Json pod = *GetPod("doomed");
  pod["metadata"]["deletionTimestamp"] = FormatRfc3339(clock_.WallNow());
  pod["metadata"]["deletionGracePeriodSeconds"] = 30;
  ASSERT_TRUE(client_.Upsert(kube::kPods, pod).ok());

  EXPECT_TRUE(Eventually([&] { return GetPod("doomed").status().IsNotFound(); }));
  EXPECT_EQ(runner_->running_pods(), 0u);
}

TEST_F(SimNodeTest, TerminatingPodFoundAtStartupIsDeleted) {
  Json pod = PodManifest("leftover", "gb200-0");
  pod["metadata"]["deletionTimestamp"] = FormatRfc3339(clock_.WallNow());
  pod["status"] = {{"phase", "Running"}, {"podIP", "127.1.0.9"}};
  ASSERT_TRUE(client_.Upsert(kube::kPods, pod).ok());
  StartNode();
  EXPECT_TRUE(Eventually([&] { return GetPod("leftover").status().IsNotFound(); }));
}

TEST_F(SimNodeTest, RunningPodKeepsItsIpAcrossAgentRestart) {
  // As left by an earlier run of the agent: .3, not the .2 a fresh allocation starts with.
  Json pod = PodManifest("survivor", "gb200-0");
  pod["status"] = {{"phase", "Running"},
                   {"podIP", "127.1.0.3"},
                   {"podIPs", Json::array({{{"ip", "127.1.0.3"}}})}};
  ASSERT_TRUE(client_.Upsert(kube::kPods, pod).ok());
  StartNode();
  ASSERT_TRUE(Eventually([&] { return PodRunningReady("survivor"); }));
  EXPECT_EQ(Str(*GetPod("survivor"), "/status/podIP"), "127.1.0.3");

  // New pods get other addresses.
  for (int i = 0; i < 3; ++i) {
    std::string name = "newcomer-" + std::to_string(i);
    ASSERT_TRUE(client_.Create(kube::kPods, "serving", PodManifest(name, "gb200-0")).ok());
    ASSERT_TRUE(Eventually([&] { return PodRunningReady(name); }));
    std::string ip = Str(*GetPod(name), "/status/podIP");
    EXPECT_TRUE(ip.starts_with("127.1.0.")) << ip;
    EXPECT_NE(ip, "127.1.0.3");
  }
}

TEST_F(SimNodeTest, FinishedPodsAreLeftAlone) {
  Json done = PodManifest("done", "gb200-0");
  done["status"] = {{"phase", "Succeeded"}};
  auto stored = client_.Upsert(kube::kPods, done);
  ASSERT_TRUE(stored.ok());
  StartNode();
  // Pods are handled in arrival order, so once a later pod runs, "done" has been looked at.
  ASSERT_TRUE(Eventually([&] { return NodeReady(); }));
  ASSERT_TRUE(client_.Create(kube::kPods, "serving", PodManifest("later", "gb200-0")).ok());
  ASSERT_TRUE(Eventually([&] { return PodRunningReady("later"); }));
  Json after = *GetPod("done");
  EXPECT_EQ(after["metadata"]["resourceVersion"], (*stored)["metadata"]["resourceVersion"]);
  EXPECT_EQ(Str(after, "/status/phase"), "Succeeded");
  EXPECT_EQ(runner_->running_pods(), 1u);
}

TEST_F(SimNodeTest, ReRegistersAfterNodeDeletion) {
  StartNode();
  ASSERT_TRUE(Eventually([&] { return NodeReady(); }));
  std::string old_uid = Str(*GetNode(), "/metadata/uid");
  ASSERT_TRUE(client_.Delete(kube::kNodes, "", "gb200-0").ok());
  ASSERT_FALSE(GetNode().ok());

  AdvanceWhenQuiescent(seconds(10));  // next heartbeat finds the Node gone
  ASSERT_TRUE(Eventually([&] { return NodeReady(); }));
  Json node = *GetNode();
  EXPECT_NE(Str(node, "/metadata/uid"), old_uid);
  EXPECT_EQ(node["metadata"]["labels"]["nvidia.com/gpu.clique"], "nvl72-a");
  EXPECT_EQ(node["status"]["capacity"]["nvidia.com/gpu"], "4");
  // The lease follows the new Node.
  EXPECT_TRUE(Eventually([&] {
    auto l = GetLease();
    return l.ok() && Str(*l, "/metadata/ownerReferences/0/uid") == Str(node, "/metadata/uid");
  }));
}

TEST_F(SimNodeTest, StopEndsWatchesWithoutTouchingPods) {
  StartNode();
  ASSERT_TRUE(client_.Create(kube::kPods, "serving", PodManifest("stays", "gb200-0")).ok());
  ASSERT_TRUE(Eventually([&] { return PodRunningReady("stays"); }));
  node_->Stop();
  EXPECT_EQ(client_.ActiveWatches(), 0);
  EXPECT_TRUE(PodRunningReady("stays"));
}

// ---- Flags -----------------------------------------------------------------------------------

TEST(ExpandNodeOptions, NamesAndIpRanges) {
  NodeAgentOptions flags;
  flags.name = "gb200";
  auto one = ExpandNodeOptions(flags);
  ASSERT_TRUE(one.ok());
  ASSERT_EQ(one->size(), 1u);
  EXPECT_EQ((*one)[0].name, "gb200");
  EXPECT_EQ((*one)[0].pod_ip_prefix, "127.1.0.");

  flags.count = 3;
  flags.ip_prefix = 20;
  auto three = ExpandNodeOptions(flags);
  ASSERT_TRUE(three.ok());
  ASSERT_EQ(three->size(), 3u);
  EXPECT_EQ((*three)[2].name, "gb200-2");
  EXPECT_EQ((*three)[2].pod_ip_prefix, "127.20.2.");

  flags.name = "tray-%02d.rack-a";
  auto pattern = ExpandNodeOptions(flags);
  ASSERT_TRUE(pattern.ok());
  EXPECT_EQ((*pattern)[1].name, "tray-01.rack-a");
}

TEST(ExpandNodeOptions, ParsesLabelsAndHeartbeat) {
  NodeAgentOptions flags;
  flags.labels = {"pdpool.dev/rack=a", "zone="};
  flags.heartbeat_interval = "2s500ms";
  auto nodes = ExpandNodeOptions(flags);
  ASSERT_TRUE(nodes.ok()) << nodes.status().ToString();
  EXPECT_EQ((*nodes)[0].labels.at("pdpool.dev/rack"), "a");
  EXPECT_EQ((*nodes)[0].labels.at("zone"), "");
  EXPECT_EQ((*nodes)[0].heartbeat_interval, std::chrono::milliseconds(2500));
}

TEST(ExpandNodeOptions, BadFlagsNameTheFlag) {
  struct Case {
    std::function<void(NodeAgentOptions&)> set;
    std::string flag;
  };
  std::vector<Case> cases = {
      {[](NodeAgentOptions& o) { o.count = 0; }, "--count"},
      {[](NodeAgentOptions& o) { o.count = 300; }, "--count"},
      {[](NodeAgentOptions& o) { o.name = "Bad_Name"; }, "--name"},
      {[](NodeAgentOptions& o) { o.name = "n-%s"; }, "--name"},
      {[](NodeAgentOptions& o) { o.name = "n-%d-%d"; }, "--name"},
      {[](NodeAgentOptions& o) { o.gpus = -1; }, "--gpus"},
      {[](NodeAgentOptions& o) { o.max_pods = 254; }, "--pods"},
      {[](NodeAgentOptions& o) { o.ip_prefix = 0; }, "--ip-prefix"},
      {[](NodeAgentOptions& o) { o.clique = "not a label"; }, "--clique"},
      {[](NodeAgentOptions& o) { o.memory = "lots"; }, "--memory"},
      {[](NodeAgentOptions& o) { o.cpu = "64 cores"; }, "--cpu"},
      {[](NodeAgentOptions& o) { o.labels = {"novalue"}; }, "--label"},
      {[](NodeAgentOptions& o) { o.labels = {"bad key=v"}; }, "--label"},
      {[](NodeAgentOptions& o) { o.heartbeat_interval = "40s"; }, "--heartbeat-interval"},
      {[](NodeAgentOptions& o) { o.heartbeat_interval = "10"; }, "--heartbeat-interval"},
  };
  for (const auto& c : cases) {
    NodeAgentOptions flags;
    c.set(flags);
    auto r = ExpandNodeOptions(flags);
    ASSERT_FALSE(r.ok()) << c.flag;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find(c.flag), std::string::npos) << r.status().message();
  }
}

TEST(ParseDuration, GoSyntax) {
  EXPECT_EQ(*ParseDuration("10s"), seconds(10));
  EXPECT_EQ(*ParseDuration("1m30s"), seconds(90));
  EXPECT_EQ(*ParseDuration("250ms"), std::chrono::milliseconds(250));
  EXPECT_FALSE(ParseDuration("").ok());
  EXPECT_FALSE(ParseDuration("5x").ok());
  EXPECT_FALSE(ParseDuration("s").ok());
}

}  // namespace
}  // namespace pdpool::agent
