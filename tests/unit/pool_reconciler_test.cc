// Tests for PoolReconciler: one InferencePool key in, children and status out. Runs against
// FakeKubeClient with real Informers over it (so the reconciler reads the same caches it reads
// in production), a real EventRecorder and a FakeClock. What is checked is what a user sees in
// the API server: ReplicaSets, the router Deployment and Service, status and conditions, and
// that nothing is written when nothing changed.
#include "controller/pool_reconciler.h"

#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "common/kube/event_recorder.h"
#include "common/kube/informer.h"
#include "tests/fakes/fake_kube_client.h"

namespace pdpool::controller {
namespace {

using kube::Informer;
using kube::kDeployments;
using kube::kEvents;
using kube::kInferencePools;
using kube::kNodes;
using kube::kPods;
using kube::kReplicaSets;
using kube::kServices;
using kube::ResourceType;
using std::chrono::seconds;

// Deadline for conditions that should become true almost at once; only a hang reaches it.
constexpr auto kWait = seconds(10);
constexpr char kNs[] = "ns";
constexpr char kPool[] = "llama";
constexpr char kKey[] = "ns/llama";
constexpr char kClique[] = "nvidia.com/gpu.clique";

Json Node(const std::string& name, const std::string& domain) {
  return {{"apiVersion", "v1"},
          {"kind", "Node"},
          {"metadata", {{"name", name}, {"labels", {{kClique, domain}}}}},
          {"status",
           {{"capacity", {{"nvidia.com/gpu", "4"}}},
            {"allocatable", {{"nvidia.com/gpu", "4"}}},
            {"conditions", Json::array({{{"type", "Ready"}, {"status", "True"}}})}}}};
}

// A valid pool (see deploy/samples/): `prefill` and `decode` replicas of `gpus` GPUs each.
Json PoolObject(int prefill, int decode, int gpus = 2) {
  return {{"apiVersion", "pdpool.dev/v1alpha1"},
          {"kind", "InferencePool"},
          {"metadata", {{"name", kPool}, {"namespace", kNs}, {"uid", "ignored"}, {"generation", 1}}},
          {"spec",
           {{"model",
             {{"name", "test-tiny"}, {"preset", "test-tiny"}, {"source", {{"dummy", {{"seed", 1}}}}}}},
            {"image", "pdpool/agent:v1"},
            {"backend", "sim"},
            {"prefill",
             {{"replicas", prefill}, {"gpusPerReplica", gpus}, {"minReplicas", 0}, {"maxReplicas", 8}}},
            {"decode",
             {{"replicas", decode}, {"gpusPerReplica", gpus}, {"minReplicas", 0}, {"maxReplicas", 8}}},
            {"router", {{"replicas", 1}}},
            {"topology", {{"key", kClique}, {"policy", "Required"}}}}}};
}

std::string Str(const Json& obj, const char* pointer) {
  return JsonGet<std::string>(obj, pointer, "");
}
int64_t Int(const Json& obj, const char* pointer) { return JsonGet<int64_t>(obj, pointer, -1); }

// A field of condition `type` in the pool's status, as text ("<no X condition>" if absent).
std::string ConditionField(const Json& pool, const std::string& type, const std::string& field) {
  for (const auto& c : JsonGet<Json>(pool, "/status/conditions", Json::array())) {
    if (!c.is_object() || c.value("type", "") != type) continue;
    if (!c.contains(field)) return "";
    return c[field].is_string() ? c[field].get<std::string>() : c[field].dump();
  }
  return "<no " + type + " condition>";
}

const Json* WorkerContainer(const Json& rs) {
  const Json& containers = rs["spec"]["template"]["spec"]["containers"];
  for (const Json& c : containers)
    if (c.value("name", "") == "worker") return &c;
  return nullptr;
}

// Bumps a generation counter on every informer event, so tests can wait for the caches.
class ChangeNotifier {
 public:
  kube::InformerHandler Handler() {
    auto bump = [this] {
      std::lock_guard lock(mu_);
      ++generation_;
      cv_.notify_all();
    };
    return {[bump](const kube::ObjectPtr&) { bump(); },
            [bump](const kube::ObjectPtr&, const kube::ObjectPtr&) { bump(); },
            [bump](const kube::ObjectPtr&) { bump(); }};
  }
  uint64_t generation() {
    std::lock_guard lock(mu_);
    return generation_;
  }
  // False when the deadline passed without a change after `seen`.
  bool WaitForChange(uint64_t seen, std::chrono::steady_clock::time_point deadline) {
    std::unique_lock lock(mu_);
    return cv_.wait_until(lock, deadline, [&] { return generation_ != seen; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  uint64_t generation_ = 0;
};

class PoolReconcilerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Two NVLink domains: nvl-a with 2 nodes (8 GPUs), nvl-b with 4 nodes (16 GPUs).
    for (int i = 0; i < 2; ++i) ASSERT_TRUE(client_.Upsert(kNodes, Node("a-" + std::to_string(i), "nvl-a")).ok());
    for (int i = 0; i < 4; ++i) ASSERT_TRUE(client_.Upsert(kNodes, Node("b-" + std::to_string(i), "nvl-b")).ok());

    replica_sets_.AddIndex(kPoolIndex, PoolIndexValues);
    for (auto& [informer, type] : Caches()) {
      informer->AddHandler(notifier_.Handler());
      Informer* inf = informer;
      runs_.push_back(std::async(std::launch::async, [this, inf] { inf->Run(&cancel_); }));
    }
    for (auto& [informer, type] : Caches()) ASSERT_TRUE(informer->WaitForSync(kWait));
  }

  void TearDown() override {
    events_.Flush();
    cancel_.Cancel();
    for (auto& r : runs_) r.wait();
  }

  std::vector<std::pair<Informer*, const ResourceType*>> Caches() {
    return {{&pools_, &kInferencePools}, {&replica_sets_, &kReplicaSets},
            {&deployments_, &kDeployments}, {&services_, &kServices},
            {&pods_, &kPods}, {&nodes_, &kNodes}};
  }

  // Whether every cache holds exactly what the API server holds, version for version.
  bool CachesCaughtUp() {
    for (auto& [informer, type] : Caches()) {
      auto list = client_.List(*type, "");
      if (!list.ok()) return false;
      const Json& items = (*list)["items"];
      if (informer->Size() != items.size()) return false;
      for (const Json& item : items) {
        kube::ObjectPtr cached = informer->Get(kube::ObjectKey(item));
        if (!cached || Str(*cached, "/metadata/resourceVersion") !=
                           Str(item, "/metadata/resourceVersion"))
          return false;
      }
    }
    return true;
  }
  void WaitForCaches() {
    auto deadline = std::chrono::steady_clock::now() + kWait;
    while (true) {
      uint64_t seen = notifier_.generation();
      if (CachesCaughtUp()) return;
      if (!notifier_.WaitForChange(seen, deadline)) break;
    }
    ASSERT_TRUE(CachesCaughtUp()) << "informer caches did not catch up with the API server";
  }

  // Seeds `pool` and waits for the pool cache to have it; returns the stored object.
  Json Seed(const Json& pool) {
    auto stored = client_.Upsert(kInferencePools, pool);
    EXPECT_TRUE(stored.ok()) << stored.status().ToString();
    WaitForCaches();
    return stored.ok() ? *stored : Json();
  }

  ReconcileResult ReconcileOk() {
    ReconcileResult r = reconciler_.Reconcile(kKey);
    EXPECT_TRUE(r.status.ok()) << r.status.ToString();
    return r;
  }

  Json GetPool() {
    auto pool = client_.Get(kInferencePools, kNs, kPool);
    EXPECT_TRUE(pool.ok()) << pool.status().ToString();
    return pool.ok() ? *pool : Json();
  }

  // Changes the stored pool's spec (the status stays), as `kubectl edit` would.
  Json EditPool(const std::function<void(Json& spec)>& edit) {
    Json pool = GetPool();
    edit(pool["spec"]);
    auto stored = client_.Upsert(kInferencePools, pool);
    EXPECT_TRUE(stored.ok()) << stored.status().ToString();
    WaitForCaches();
    return stored.ok() ? *stored : Json();
  }

  std::vector<Json> ReplicaSets(const std::string& role) {
    kube::ListOptions lo;
    lo.label_selector = std::string(kPoolLabel) + "=" + kPool + "," + kRoleLabel + "=" + role;
    auto list = client_.List(kReplicaSets, kNs, lo);
    EXPECT_TRUE(list.ok()) << list.status().ToString();
    std::vector<Json> out;
    if (list.ok())
      for (const auto& item : (*list)["items"]) out.push_back(item);
    return out;
  }
  Json OnlyReplicaSet(const std::string& role) {
    auto sets = ReplicaSets(role);
    EXPECT_EQ(sets.size(), 1u) << role;
    return sets.empty() ? Json::object() : sets[0];
  }

  // Sets a child's status as its controller (the ReplicaSet controller) would.
  void SetReplicaSetStatus(const std::string& name, int replicas, int ready) {
    auto rs = client_.Get(kReplicaSets, kNs, name);
    ASSERT_TRUE(rs.ok()) << rs.status().ToString();
    (*rs)["status"] = {{"replicas", replicas}, {"readyReplicas", ready}, {"availableReplicas", ready}};
    ASSERT_TRUE(client_.Upsert(kReplicaSets, *rs).ok());
  }
  void SetRouterReady() {
    auto dep = client_.Get(kDeployments, kNs, std::string(kPool) + "-router");
    ASSERT_TRUE(dep.ok()) << dep.status().ToString();
    (*dep)["status"] = {{"replicas", 1}, {"readyReplicas", 1}, {"availableReplicas", 1}};
    ASSERT_TRUE(client_.Upsert(kDeployments, *dep).ok());
  }

  int ChildWrites() {
    return client_.WriteCount(kReplicaSets) + client_.WriteCount(kDeployments) +
           client_.WriteCount(kServices);
  }
  int AllWrites() { return ChildWrites() + client_.WriteCount(kInferencePools); }

  std::multiset<std::string> EventReasons() {
    events_.Flush();
    auto list = client_.List(kEvents, kNs);
    EXPECT_TRUE(list.ok());
    std::multiset<std::string> reasons;
    if (list.ok())
      for (const auto& e : (*list)["items"]) reasons.insert(e.value("reason", ""));
    return reasons;
  }

  FakeClock clock_;
  kube::FakeKubeClient client_{&clock_};
  Informer pools_{&client_, kInferencePools};
  Informer replica_sets_{&client_, kReplicaSets};
  Informer deployments_{&client_, kDeployments};
  Informer services_{&client_, kServices};
  Informer pods_{&client_, kPods};
  Informer nodes_{&client_, kNodes};
  kube::EventRecorder events_{&client_, "pdpool-controller", &clock_};
  PoolReconciler reconciler_{
      &client_,
      ClusterCaches{&pools_, &replica_sets_, &deployments_, &services_, &pods_, &nodes_},
      &events_, &clock_};
  ChangeNotifier notifier_;
  kube::CancelToken cancel_;
  std::vector<std::future<void>> runs_;
};

TEST_F(PoolReconcilerTest, CreatesWorkersRouterAndStatusForANewPool) {
  const Json seeded = Seed(PoolObject(/*prefill=*/1, /*decode=*/2));
  const std::string uid = Str(seeded, "/metadata/uid");
  ASSERT_FALSE(uid.empty());

  ReconcileResult r = ReconcileOk();
  EXPECT_FALSE(r.invalid_spec);

  Json pool = GetPool();
  const std::string domain = Str(pool, "/status/placement/domain");
  EXPECT_TRUE(domain == "nvl-a" || domain == "nvl-b") << pool["status"].dump(2);
  EXPECT_EQ(Int(pool, "/status/placement/gpus"), 6);

  for (const auto& [role, replicas] : {std::pair{"prefill", 1}, std::pair{"decode", 2}}) {
    SCOPED_TRACE(role);
    Json rs = OnlyReplicaSet(role);
    EXPECT_EQ(Int(rs, "/spec/replicas"), replicas);
    // The server refuses a ReplicaSet whose selector does not match its template.
    const Json& selector = rs["spec"]["selector"]["matchLabels"];
    ASSERT_FALSE(selector.empty());
    for (auto it = selector.begin(); it != selector.end(); ++it)
      EXPECT_EQ(rs["spec"]["template"]["metadata"]["labels"].value(it.key(), ""), *it) << it.key();
    const Json* worker = WorkerContainer(rs);
    ASSERT_NE(worker, nullptr) << rs.dump(2);
    EXPECT_EQ(Str(*worker, "/image"), "pdpool/agent:v1");
    EXPECT_EQ(Str(*worker, "/resources/requests/nvidia.com~1gpu"), "2");
    EXPECT_EQ(Str(*worker, "/resources/limits/nvidia.com~1gpu"), "2");

    const Json& refs = rs["metadata"]["ownerReferences"];
    ASSERT_EQ(refs.size(), 1u) << rs["metadata"].dump(2);
    EXPECT_EQ(refs[0].value("kind", ""), "InferencePool");
    EXPECT_EQ(refs[0].value("apiVersion", ""), "pdpool.dev/v1alpha1");
    EXPECT_EQ(refs[0].value("name", ""), kPool);
    EXPECT_EQ(refs[0].value("uid", ""), uid);
    EXPECT_EQ(refs[0].value("controller", false), true);

    const Json term = JsonGet<Json>(rs,
                                    "/spec/template/spec/affinity/nodeAffinity/"
                                    "requiredDuringSchedulingIgnoredDuringExecution/"
                                    "nodeSelectorTerms/0/matchExpressions/0",
                                    Json());
    EXPECT_EQ(term, (Json{{"key", kClique}, {"operator", "In"}, {"values", {domain}}}))
        << rs["spec"]["template"]["spec"].dump(2);
  }

  auto dep = client_.Get(kDeployments, kNs, "llama-router");
  ASSERT_TRUE(dep.ok()) << dep.status().ToString();
  EXPECT_EQ(Int(*dep, "/spec/replicas"), 1);
  EXPECT_EQ(Str(*dep, "/metadata/ownerReferences/0/uid"), uid);
  auto svc = client_.Get(kServices, kNs, "llama-router");
  ASSERT_TRUE(svc.ok()) << svc.status().ToString();
  EXPECT_EQ(Str(*svc, "/metadata/ownerReferences/0/uid"), uid);
  EXPECT_EQ(Str(*svc, "/spec/selector/pdpool.dev~1role"), "router");
  EXPECT_EQ(Int(*svc, "/spec/ports/0/port"), 80);

  // Status: observed generation, conditions stamped with it and the (fake) time.
  EXPECT_EQ(Int(pool, "/metadata/generation"), 1) << "the reconciler must not touch the spec";
  EXPECT_EQ(pool["spec"], seeded["spec"]);
  EXPECT_EQ(Int(pool, "/status/observedGeneration"), 1);
  EXPECT_EQ(Int(pool, "/status/prefill/desiredReplicas"), 1);
  EXPECT_EQ(Int(pool, "/status/decode/desiredReplicas"), 2);
  EXPECT_EQ(ConditionField(pool, "Ready", "status"), "False");
  EXPECT_EQ(ConditionField(pool, "Ready", "reason"), "ReplicasNotReady");
  EXPECT_EQ(ConditionField(pool, "Progressing", "status"), "True");
  EXPECT_EQ(ConditionField(pool, "Degraded", "status"), "False");
  for (const char* type : {"Ready", "Progressing", "Degraded"}) {
    EXPECT_EQ(ConditionField(pool, type, "observedGeneration"), "1") << type;
    EXPECT_EQ(ConditionField(pool, type, "lastTransitionTime"), FormatRfc3339(clock_.WallNow()))
        << type;
  }

  auto reasons = EventReasons();
  EXPECT_EQ(reasons.count("CreatedReplicaSet"), 2u);
  EXPECT_EQ(reasons.count("CreatedDeployment"), 1u);
  EXPECT_EQ(reasons.count("CreatedService"), 1u);
}

TEST_F(PoolReconcilerTest, ReconcilingAgainAfterTheCachesCaughtUpWritesNothing) {
  Seed(PoolObject(1, 1));
  ReconcileOk();
  ASSERT_GT(ChildWrites(), 0);
  WaitForCaches();
  int writes = AllWrites();

  ReconcileOk();
  EXPECT_EQ(AllWrites(), writes) << "a second reconcile of an unchanged pool wrote something";

  // Time passing changes nothing either: lastTransitionTime moves only when a status flips.
  WaitForCaches();
  writes = AllWrites();
  const std::string pool_rv = Str(GetPool(), "/metadata/resourceVersion");
  clock_.Advance(std::chrono::hours(1));
  ReconcileOk();
  EXPECT_EQ(AllWrites(), writes);
  EXPECT_EQ(Str(GetPool(), "/metadata/resourceVersion"), pool_rv);
}

TEST_F(PoolReconcilerTest, ReplicaChangeScalesTheReplicaSetInPlace) {
  Seed(PoolObject(1, 1));
  ReconcileOk();
  WaitForCaches();
  const std::string prefill_name = Str(OnlyReplicaSet("prefill"), "/metadata/name");
  const std::string decode_rv = Str(OnlyReplicaSet("decode"), "/metadata/resourceVersion");
  const int creates = client_.CallCount("Create", kReplicaSets);

  Json edited = EditPool([](Json& spec) { spec["prefill"]["replicas"] = 2; });
  ASSERT_EQ(Int(edited, "/metadata/generation"), 2);
  ReconcileOk();

  Json prefill = OnlyReplicaSet("prefill");
  EXPECT_EQ(Str(prefill, "/metadata/name"), prefill_name) << "a scale is not a new revision";
  EXPECT_EQ(Int(prefill, "/spec/replicas"), 2);
  EXPECT_EQ(client_.CallCount("Create", kReplicaSets), creates);
  EXPECT_EQ(Str(OnlyReplicaSet("decode"), "/metadata/resourceVersion"), decode_rv)
      << "decode did not change and must not be written";

  Json pool = GetPool();
  EXPECT_EQ(Int(pool, "/status/observedGeneration"), 2);
  EXPECT_EQ(Int(pool, "/status/prefill/desiredReplicas"), 2);
  for (const char* type : {"Ready", "Progressing", "Degraded"})
    EXPECT_EQ(ConditionField(pool, type, "observedGeneration"), "2") << type;
  EXPECT_EQ(EventReasons().count("ScaledReplicaSet"), 1u);
}

TEST_F(PoolReconcilerTest, NewPoolAndScaleUpReportScalingReplicasNotRollingOut) {
  // Neither has an old revision: Progressing says replicas are coming, not that a new pod
  // template is being rolled out.
  Seed(PoolObject(1, 1));
  ReconcileOk();
  Json pool = GetPool();
  EXPECT_EQ(ConditionField(pool, "Progressing", "status"), "True");
  EXPECT_EQ(ConditionField(pool, "Progressing", "reason"), "ScalingReplicas");
  EXPECT_EQ(ConditionField(pool, "Progressing", "message").find("rolling out"), std::string::npos)
      << ConditionField(pool, "Progressing", "message");

  WaitForCaches();
  EditPool([](Json& spec) { spec["decode"]["replicas"] = 2; });
  ReconcileOk();
  pool = GetPool();
  EXPECT_EQ(ConditionField(pool, "Progressing", "reason"), "ScalingReplicas");
}

TEST_F(PoolReconcilerTest, ImageChangeRollsOutANewRevisionAndKeepsTheOldUntilItIsReady) {
  Seed(PoolObject(1, 1));
  ReconcileOk();
  WaitForCaches();
  std::map<std::string, std::string> old_names;
  for (const char* role : {"prefill", "decode"}) {
    old_names[role] = Str(OnlyReplicaSet(role), "/metadata/name");
    SetReplicaSetStatus(old_names[role], 1, 1);
  }
  SetRouterReady();
  WaitForCaches();
  ReconcileOk();
  ASSERT_EQ(ConditionField(GetPool(), "Ready", "status"), "True") << GetPool()["status"].dump(2);

  // New image: a new pod template, so a new ReplicaSet per role; the old ones keep serving.
  EditPool([](Json& spec) { spec["image"] = "pdpool/agent:v2"; });
  ReconcileOk();
  std::map<std::string, std::string> new_names;
  for (const char* role : {"prefill", "decode"}) {
    SCOPED_TRACE(role);
    auto sets = ReplicaSets(role);
    ASSERT_EQ(sets.size(), 2u);
    for (const auto& rs : sets) {
      const std::string name = Str(rs, "/metadata/name");
      EXPECT_EQ(Int(rs, "/spec/replicas"), 1) << name;
      const Json* worker = WorkerContainer(rs);
      ASSERT_NE(worker, nullptr);
      if (name == old_names[role]) {
        EXPECT_EQ(Str(*worker, "/image"), "pdpool/agent:v1");
      } else {
        EXPECT_EQ(Str(*worker, "/image"), "pdpool/agent:v2");
        new_names[role] = name;
      }
    }
    ASSERT_FALSE(new_names[role].empty());
  }
  Json pool = GetPool();
  EXPECT_EQ(ConditionField(pool, "Progressing", "status"), "True");
  EXPECT_EQ(ConditionField(pool, "Progressing", "reason"), "RollingOut");

  // Not ready yet: reconciling again keeps the old revision at full size.
  WaitForCaches();
  ReconcileOk();
  for (const char* role : {"prefill", "decode"}) {
    auto old_rs = client_.Get(kReplicaSets, kNs, old_names[role]);
    ASSERT_TRUE(old_rs.ok());
    EXPECT_EQ(Int(*old_rs, "/spec/replicas"), 1) << role;
  }

  // The new revision reports ready: the old one is scaled to zero, but kept while its pods
  // still exist.
  for (const char* role : {"prefill", "decode"}) SetReplicaSetStatus(new_names[role], 1, 1);
  WaitForCaches();
  ReconcileOk();
  for (const char* role : {"prefill", "decode"}) {
    SCOPED_TRACE(role);
    auto old_rs = client_.Get(kReplicaSets, kNs, old_names[role]);
    ASSERT_TRUE(old_rs.ok()) << old_rs.status().ToString();
    EXPECT_EQ(Int(*old_rs, "/spec/replicas"), 0);
    auto new_rs = client_.Get(kReplicaSets, kNs, new_names[role]);
    ASSERT_TRUE(new_rs.ok());
    EXPECT_EQ(Int(*new_rs, "/spec/replicas"), 1);
  }

  // Its pods are gone: the drained revision is deleted and the rollout is complete.
  for (const char* role : {"prefill", "decode"}) SetReplicaSetStatus(old_names[role], 0, 0);
  WaitForCaches();
  ReconcileOk();
  for (const char* role : {"prefill", "decode"})
    EXPECT_EQ(Str(OnlyReplicaSet(role), "/metadata/name"), new_names[role]) << role;
  pool = GetPool();
  EXPECT_EQ(ConditionField(pool, "Ready", "status"), "True") << pool["status"].dump(2);
  EXPECT_EQ(ConditionField(pool, "Progressing", "status"), "False");
  EXPECT_EQ(ConditionField(pool, "Progressing", "reason"), "Complete");
}

TEST_F(PoolReconcilerTest, InvalidSpecWritesOnlyStatusNamingTheField) {
  Json invalid = PoolObject(2, 1);
  invalid["spec"]["prefill"] = {{"replicas", 2}, {"gpusPerReplica", 1}, {"minReplicas", 3},
                                {"maxReplicas", 2}};
  const Json seeded = Seed(invalid);

  ReconcileResult r = ReconcileOk();
  EXPECT_TRUE(r.invalid_spec);
  EXPECT_EQ(ChildWrites(), 0);
  EXPECT_EQ(client_.ObjectCount(kReplicaSets), 0u);
  EXPECT_EQ(client_.ObjectCount(kDeployments), 0u);
  EXPECT_EQ(client_.ObjectCount(kServices), 0u);

  Json pool = GetPool();
  EXPECT_EQ(pool["spec"], seeded["spec"]);
  EXPECT_EQ(Int(pool, "/metadata/generation"), 1);
  EXPECT_EQ(Int(pool, "/status/observedGeneration"), 1);
  EXPECT_EQ(ConditionField(pool, "Degraded", "status"), "True");
  EXPECT_EQ(ConditionField(pool, "Degraded", "reason"), "InvalidSpec");
  EXPECT_NE(ConditionField(pool, "Degraded", "message").find("spec.prefill.minReplicas"),
            std::string::npos)
      << ConditionField(pool, "Degraded", "message");
  EXPECT_EQ(ConditionField(pool, "Ready", "status"), "False");
  EXPECT_EQ(ConditionField(pool, "Ready", "reason"), "InvalidSpec");
  EXPECT_EQ(ConditionField(pool, "Degraded", "observedGeneration"), "1");
  EXPECT_EQ(EventReasons().count("InvalidSpec"), 1u);

  // Still invalid, nothing new to say: no further writes.
  WaitForCaches();
  const int writes = AllWrites();
  r = ReconcileOk();
  EXPECT_TRUE(r.invalid_spec);
  EXPECT_EQ(AllWrites(), writes);

  // Fixed: workers appear and the condition clears.
  EditPool([](Json& spec) { spec["prefill"]["minReplicas"] = 1; });
  r = ReconcileOk();
  EXPECT_FALSE(r.invalid_spec);
  EXPECT_EQ(ReplicaSets("prefill").size(), 1u);
  pool = GetPool();
  EXPECT_EQ(ConditionField(pool, "Degraded", "status"), "False");
  EXPECT_EQ(Int(pool, "/status/observedGeneration"), 2);
}

TEST_F(PoolReconcilerTest, PoolTooLargeForAnyDomainGetsInsufficientCapacityAndNoWorkers) {
  // 24 GPUs; the larger domain has 16.
  Seed(PoolObject(3, 3, /*gpus=*/4));
  ReconcileResult r = ReconcileOk();
  EXPECT_GT(r.requeue_after, Duration::zero()) << "must look again for capacity";
  EXPECT_TRUE(ReplicaSets("prefill").empty());
  EXPECT_TRUE(ReplicaSets("decode").empty());
  EXPECT_EQ(client_.CallCount("Create", kReplicaSets), 0);

  Json pool = GetPool();
  EXPECT_EQ(ConditionField(pool, "Degraded", "status"), "True");
  EXPECT_EQ(ConditionField(pool, "Degraded", "reason"), "InsufficientCapacity");
  EXPECT_FALSE(ConditionField(pool, "Degraded", "message").empty());
  EXPECT_EQ(ConditionField(pool, "Ready", "status"), "False");
  EXPECT_EQ(ConditionField(pool, "Ready", "reason"), "InsufficientCapacity");
  EXPECT_EQ(Str(pool, "/status/placement/domain"), "");

  // Two more nodes make nvl-b big enough: the next pass places the pool there.
  ASSERT_TRUE(client_.Upsert(kNodes, Node("b-4", "nvl-b")).ok());
  ASSERT_TRUE(client_.Upsert(kNodes, Node("b-5", "nvl-b")).ok());
  WaitForCaches();
  ReconcileOk();
  EXPECT_EQ(ReplicaSets("prefill").size(), 1u);
  EXPECT_EQ(ReplicaSets("decode").size(), 1u);
  pool = GetPool();
  EXPECT_EQ(Str(pool, "/status/placement/domain"), "nvl-b");
  EXPECT_EQ(ConditionField(pool, "Degraded", "status"), "False");
}

TEST_F(PoolReconcilerTest, ApiFailureOnCreateIsReturnedSoTheQueueRetriesAndARetrySucceeds) {
  Seed(PoolObject(1, 1));
  client_.FailNext("Create", Status::Unavailable("etcdserver: request timed out"), &kReplicaSets);

  ReconcileResult r = reconciler_.Reconcile(kKey);
  ASSERT_FALSE(r.status.ok());
  EXPECT_EQ(r.status.code(), StatusCode::kUnavailable) << r.status.ToString();
  EXPECT_EQ(client_.ObjectCount(kReplicaSets), 0u);
  // The pool says why it is stuck.
  EXPECT_EQ(ConditionField(GetPool(), "Degraded", "status"), "True");
  EXPECT_EQ(ConditionField(GetPool(), "Degraded", "reason"), "ReconcileError");
  EXPECT_NE(ConditionField(GetPool(), "Degraded", "message").find("etcdserver: request timed out"),
            std::string::npos);

  WaitForCaches();
  ReconcileOk();
  EXPECT_EQ(ConditionField(GetPool(), "Degraded", "status"), "False");
  EXPECT_EQ(ReplicaSets("prefill").size(), 1u);
  EXPECT_EQ(ReplicaSets("decode").size(), 1u);
  EXPECT_TRUE(client_.Get(kDeployments, kNs, "llama-router").ok());
  EXPECT_TRUE(client_.Get(kServices, kNs, "llama-router").ok());
  EXPECT_EQ(Int(GetPool(), "/status/observedGeneration"), 1);
}

TEST_F(PoolReconcilerTest, StatusWriteFailureIsReturnedSoTheQueueRetries) {
  Seed(PoolObject(1, 1));
  client_.FailNext("Patch", Status::Unavailable("connection refused"), &kInferencePools);
  ReconcileResult r = reconciler_.Reconcile(kKey);
  EXPECT_FALSE(r.status.ok());
  EXPECT_FALSE(GetPool().contains("status") &&
               GetPool()["status"].contains("observedGeneration"));

  WaitForCaches();
  ReconcileOk();
  EXPECT_EQ(Int(GetPool(), "/status/observedGeneration"), 1);
}

TEST_F(PoolReconcilerTest, PoolMissingFromTheCacheIsANoOp) {
  ReconcileResult r = ReconcileOk();
  EXPECT_EQ(r.requeue_after, Duration::zero());
  EXPECT_FALSE(r.invalid_spec);
  EXPECT_EQ(AllWrites(), 0);

  // A pool that existed: once deleted, its key reconciles to nothing; the garbage collector,
  // not the reconciler, removes the children.
  Seed(PoolObject(1, 1));
  ReconcileOk();
  ASSERT_TRUE(client_.Delete(kInferencePools, kNs, kPool).ok());
  WaitForCaches();
  const int writes = AllWrites();
  r = ReconcileOk();
  EXPECT_EQ(r.requeue_after, Duration::zero());
  EXPECT_EQ(AllWrites(), writes);
  EXPECT_EQ(client_.ObjectCount(kReplicaSets), 2u);
}

}  // namespace
}  // namespace pdpool::controller
