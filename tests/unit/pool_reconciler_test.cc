// Tests for PoolReconciler: one InferencePool key in, children and status out. Runs against
// FakeKubeClient with real Informers over it (so the reconciler reads the same caches it reads
// in production), a real EventRecorder and a FakeClock. What is checked is what a user sees in
// the API server: the token Secret, ReplicaSets, the router Deployment and Service, status and
// conditions, and that nothing is written when nothing changed.
#include "controller/pool_reconciler.h"

#include <gtest/gtest.h>

#include <algorithm>
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

#include "common/base64.h"
#include "common/kube/event_recorder.h"
#include "common/kube/informer.h"
#include "controller/desired_state.h"
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
using kube::kSecrets;
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
Json PoolObject(int prefill, int decode, int gpus = 2, const std::string& name = kPool) {
  return {
      {"apiVersion", "pdpool.dev/v1alpha1"},
      {"kind", "InferencePool"},
      {"metadata", {{"name", name}, {"namespace", kNs}, {"uid", "ignored"}, {"generation", 1}}},
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

bool IsLowerHex(const std::string& s) {
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

// A Secret `name` in kNs with data.token = base64(token) (no token key when empty), controlled
// by the pool with `owner_uid` (none when empty), labelled as pdpool's when `labelled`.
Json SecretObject(const std::string& name, const std::string& token, const std::string& owner_uid,
                  bool labelled) {
  const std::string encoded = Base64Encode(token);
  Json secret = {{"apiVersion", "v1"},
                 {"kind", "Secret"},
                 {"metadata", {{"name", name}, {"namespace", kNs}}},
                 {"type", "Opaque"},
                 {"data", Json::object()}};
  if (!token.empty()) secret["data"]["token"] = encoded;
  if (labelled)
    secret["metadata"]["labels"] = {{"app.kubernetes.io/managed-by", "pdpool"},
                                    {"pdpool.dev/pool", kPool}};
  if (!owner_uid.empty())
    secret["metadata"]["ownerReferences"] = Json::array({{{"apiVersion", "pdpool.dev/v1alpha1"},
                                                          {"kind", "InferencePool"},
                                                          {"name", kPool},
                                                          {"uid", owner_uid},
                                                          {"controller", true},
                                                          {"blockOwnerDeletion", true}}});
  return secret;
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

// A MetricsSource answering whatever the test put in `*next`.
class ScriptedMetricsSource final : public planner::MetricsSource {
 public:
  explicit ScriptedMetricsSource(const StatusOr<planner::PoolSignals>* next) : next_(next) {}
  StatusOr<planner::PoolSignals> Read(const planner::MetricsQuery&) override { return *next_; }
  std::string Name() const override { return "scripted"; }

 private:
  const StatusOr<planner::PoolSignals>* next_;
};

class PoolReconcilerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Two NVLink domains: nvl-a with 2 nodes (8 GPUs), nvl-b with 4 nodes (16 GPUs).
    for (int i = 0; i < 2; ++i)
      ASSERT_TRUE(client_.Upsert(kNodes, Node("a-" + std::to_string(i), "nvl-a")).ok());
    for (int i = 0; i < 4; ++i)
      ASSERT_TRUE(client_.Upsert(kNodes, Node("b-" + std::to_string(i), "nvl-b")).ok());

    replica_sets_.AddIndex(kPoolIndex, PoolIndexValues);
    pods_.AddIndex(kPoolIndex, PoolIndexValues);
    for (const Cache& cache : Caches()) {
      cache.informer->AddHandler(notifier_.Handler());
      Informer* inf = cache.informer;
      runs_.push_back(std::async(std::launch::async, [this, inf] { inf->Run(&cancel_); }));
    }
    for (const Cache& cache : Caches()) ASSERT_TRUE(cache.informer->WaitForSync(kWait));
  }

  void TearDown() override {
    events_.Flush();
    cancel_.Cancel();
    for (auto& r : runs_) r.wait();
  }

  struct Cache {
    Informer* informer;
    const ResourceType* type;
    std::string label_selector;
  };
  std::vector<Cache> Caches() {
    return {{&pools_, &kInferencePools, ""},
            {&replica_sets_, &kReplicaSets, ""},
            {&deployments_, &kDeployments, ""},
            {&services_, &kServices, ""},
            {&pods_, &kPods, ""},
            {&nodes_, &kNodes, ""},
            {&secrets_, &kSecrets, kTokenSecretSelector}};
  }
  static kube::InformerOptions TokenSecretOptions() {
    kube::InformerOptions options;
    options.label_selector = kTokenSecretSelector;
    return options;
  }

  // Whether every cache holds exactly what the API server holds, version for version.
  bool CachesCaughtUp() {
    for (const Cache& cache : Caches()) {
      Informer* informer = cache.informer;
      kube::ListOptions lo;
      lo.label_selector = cache.label_selector;
      auto list = client_.List(*cache.type, "", lo);
      if (!list.ok()) return false;
      const Json& items = (*list)["items"];
      if (informer->Size() != items.size()) return false;
      for (const Json& item : items) {
        kube::ObjectPtr cached = informer->Get(kube::ObjectKey(item));
        if (!cached ||
            Str(*cached, "/metadata/resourceVersion") != Str(item, "/metadata/resourceVersion"))
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
    (*rs)["status"] = {
        {"replicas", replicas}, {"readyReplicas", ready}, {"availableReplicas", ready}};
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
           client_.WriteCount(kServices) + client_.WriteCount(kSecrets);
  }

  // The token of Secret `<pool>-token`, decoded; "" when there is none.
  std::string StoredToken(const std::string& pool = kPool) {
    auto secret = client_.Get(kSecrets, kNs, pool + "-token");
    if (!secret.ok()) return "";
    auto token = Base64Decode(Str(*secret, "/data/token"), "token");
    return token.ok() ? *token : "<invalid base64>";
  }
  int AllWrites() { return ChildWrites() + client_.WriteCount(kInferencePools); }

  std::multiset<std::string> EventReasons() {
    std::multiset<std::string> reasons;
    for (const Json& e : Events()) reasons.insert(e.value("reason", ""));
    return reasons;
  }
  std::vector<Json> Events() {
    events_.Flush();
    auto list = client_.List(kEvents, kNs);
    EXPECT_TRUE(list.ok());
    std::vector<Json> out;
    if (list.ok())
      for (const auto& e : (*list)["items"]) out.push_back(e);
    return out;
  }

  FakeClock clock_;
  kube::FakeKubeClient client_{&clock_};
  Informer pools_{&client_, kInferencePools};
  Informer replica_sets_{&client_, kReplicaSets};
  Informer deployments_{&client_, kDeployments};
  Informer services_{&client_, kServices};
  Informer pods_{&client_, kPods};
  Informer nodes_{&client_, kNodes};
  Informer secrets_{&client_, kSecrets, TokenSecretOptions()};
  kube::EventRecorder events_{&client_, "pdpool-controller", &clock_};
  PoolReconciler reconciler_{
      &client_,
      ClusterCaches{&pools_, &replica_sets_, &deployments_, &services_, &pods_, &nodes_, &secrets_},
      &events_, &clock_};
  // What the planner's metrics source answers next (see PlannedPoolTest).
  StatusOr<planner::PoolSignals> signals_ = Status::NotFound("no samples of the pool yet");
  planner::PoolAutoscaler autoscaler_{planner::AutoscalerOptions{
      [this](const std::string&) -> std::unique_ptr<planner::MetricsSource> {
        return std::make_unique<ScriptedMetricsSource>(&signals_);
      },
      seconds(60)}};
  // The same reconciler with the planner, as the controller runs it.
  PoolReconciler planned_{
      &client_,
      ClusterCaches{&pools_, &replica_sets_, &deployments_, &services_, &pods_, &nodes_, &secrets_},
      &events_, &clock_, &autoscaler_};
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
  EXPECT_EQ(reasons.count("CreatedSecret"), 1u);
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
  invalid["spec"]["prefill"] = {
      {"replicas", 2}, {"gpusPerReplica", 1}, {"minReplicas", 3}, {"maxReplicas", 2}};
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
  EXPECT_FALSE(GetPool().contains("status") && GetPool()["status"].contains("observedGeneration"));

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

// ---- the pool's token Secret ----

// Whether the pod template mounts Secret `secret` and passes the token file to `container`.
bool MountsToken(const Json& pod_template, const std::string& container,
                 const std::string& secret) {
  bool volume = false;
  for (const Json& v : JsonGet<Json>(pod_template, "/spec/volumes", Json::array()))
    volume |= v.value("name", "") == "pool-token" && Str(v, "/secret/secretName") == secret;
  for (const Json& c : JsonGet<Json>(pod_template, "/spec/containers", Json::array())) {
    if (c.value("name", "") != container) continue;
    bool mount = false;
    for (const Json& m : JsonGet<Json>(c, "/volumeMounts", Json::array()))
      mount |= m.value("name", "") == "pool-token" &&
               m.value("mountPath", "") == "/var/run/pdpool/token" && m.value("readOnly", false);
    bool arg = false;
    for (const Json& a : JsonGet<Json>(c, "/args", Json::array()))
      arg |= a == "--auth-token-file=/var/run/pdpool/token/token";
    return volume && mount && arg;
  }
  return false;
}

TEST_F(PoolReconcilerTest, CreatesTheTokenSecretOnceBeforeAnyWorker) {
  std::vector<std::string> creates;
  client_.SetCallHook([&](const kube::FakeCall& call) {
    if (call.method == "Create" && call.type->resource != "events")
      creates.push_back(call.type->resource);
    return Status::Ok();
  });
  const Json seeded = Seed(PoolObject(1, 1));
  ReconcileOk();
  client_.SetCallHook({});
  ASSERT_FALSE(creates.empty());
  EXPECT_EQ(creates.front(), "secrets") << "workers must not start before their token exists";

  auto secret = client_.Get(kSecrets, kNs, "llama-token");
  ASSERT_TRUE(secret.ok()) << secret.status().ToString();
  EXPECT_EQ(Str(*secret, "/type"), "Opaque");
  EXPECT_EQ(Str(*secret, "/metadata/labels/app.kubernetes.io~1managed-by"), "pdpool");
  EXPECT_EQ(Str(*secret, "/metadata/labels/pdpool.dev~1pool"), kPool);
  const Json& refs = (*secret)["metadata"]["ownerReferences"];
  ASSERT_EQ(refs.size(), 1u) << (*secret)["metadata"].dump(2);
  EXPECT_EQ(refs[0].value("uid", ""), Str(seeded, "/metadata/uid"));
  EXPECT_EQ(refs[0].value("kind", ""), "InferencePool");
  EXPECT_TRUE(refs[0].value("controller", false));
  EXPECT_TRUE(refs[0].value("blockOwnerDeletion", false));
  const std::string token = StoredToken();
  EXPECT_EQ(token.size(), 64u) << "32 random bytes as hex";
  EXPECT_TRUE(IsLowerHex(token)) << "not hex";

  // Every pod of the pool gets it.
  for (const char* role : {"prefill", "decode"})
    EXPECT_TRUE(MountsToken(OnlyReplicaSet(role)["spec"]["template"], "worker", "llama-token"))
        << role << ": " << OnlyReplicaSet(role)["spec"]["template"].dump(2);
  auto dep = client_.Get(kDeployments, kNs, "llama-router");
  ASSERT_TRUE(dep.ok());
  EXPECT_TRUE(MountsToken((*dep)["spec"]["template"], "router", "llama-token"));

  // The token shows up nowhere else a user can read.
  EXPECT_EQ(GetPool().dump().find(token), std::string::npos);
  for (const Json& e : Events()) EXPECT_EQ(e.dump().find(token), std::string::npos) << e.dump();

  // Later passes read it from the cache: no GET, no second Create, no write.
  WaitForCaches();
  client_.ResetCallCounts();
  ReconcileOk();
  EditPool([](Json& spec) { spec["decode"]["replicas"] = 2; });
  ReconcileOk();
  EXPECT_EQ(client_.CallCount("Get", kSecrets), 0);
  EXPECT_EQ(client_.CallCount("Create", kSecrets), 0);
  EXPECT_EQ(client_.WriteCount(kSecrets), 0);
  EXPECT_EQ(StoredToken(), token);
}

TEST_F(PoolReconcilerTest, ExistingTokenIsNeverChanged) {
  const Json seeded = Seed(PoolObject(1, 1));
  auto stored = client_.Upsert(kSecrets, SecretObject("llama-token", "token-from-before",
                                                      Str(seeded, "/metadata/uid"), true));
  ASSERT_TRUE(stored.ok()) << stored.status().ToString();
  WaitForCaches();
  const std::string rv = Str(*stored, "/metadata/resourceVersion");

  ReconcileOk();
  WaitForCaches();
  EditPool([](Json& spec) { spec["image"] = "pdpool/agent:v2"; });  // a new pod template
  ReconcileOk();
  WaitForCaches();
  ReconcileOk();

  EXPECT_EQ(client_.WriteCount(kSecrets), 0);
  auto secret = client_.Get(kSecrets, kNs, "llama-token");
  ASSERT_TRUE(secret.ok());
  EXPECT_EQ(Str(*secret, "/metadata/resourceVersion"), rv);
  EXPECT_EQ(StoredToken(), "token-from-before");
  EXPECT_EQ(ReplicaSets("prefill").size(), 2u) << "the rollout went ahead with the old token";
  EXPECT_EQ(ConditionField(GetPool(), "Degraded", "status"), "False");
}

TEST_F(PoolReconcilerTest, OwnSecretNotYetInTheCacheIsUsedNotReplaced) {
  // Ours, but without the label the cache selects on (as when the cache lags a Create): the
  // refused Create is followed by one GET, and the Secret stays as it is.
  const Json seeded = Seed(PoolObject(1, 1));
  ASSERT_TRUE(
      client_
          .Upsert(kSecrets, SecretObject("llama-token", "ours", Str(seeded, "/metadata/uid"),
                                         /*labelled=*/false))
          .ok());
  WaitForCaches();
  client_.ResetCallCounts();
  ReconcileOk();
  EXPECT_EQ(client_.CallCount("Get", kSecrets), 1);
  EXPECT_EQ(StoredToken(), "ours");
  EXPECT_EQ(ReplicaSets("prefill").size(), 1u);
  EXPECT_EQ(ConditionField(GetPool(), "Degraded", "status"), "False");
}

TEST_F(PoolReconcilerTest, ForeignSecretIsLeftAloneAndReportedAsDegraded) {
  ASSERT_TRUE(client_.Upsert(kSecrets, SecretObject("llama-token", "users-own", "", false)).ok());
  Seed(PoolObject(1, 1));
  auto before = client_.Get(kSecrets, kNs, "llama-token");
  ASSERT_TRUE(before.ok());

  ReconcileResult r = ReconcileOk();
  EXPECT_GT(r.requeue_after, Duration::zero()) << "must look again: its removal may not be seen";
  auto after = client_.Get(kSecrets, kNs, "llama-token");
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(*after, *before) << "a user's Secret was changed";
  EXPECT_EQ(client_.ObjectCount(kReplicaSets), 0u);
  EXPECT_EQ(client_.ObjectCount(kDeployments), 0u);
  EXPECT_EQ(client_.ObjectCount(kServices), 0u);
  Json pool = GetPool();
  EXPECT_EQ(ConditionField(pool, "Degraded", "status"), "True");
  EXPECT_EQ(ConditionField(pool, "Degraded", "reason"), "TokenSecretConflict");
  EXPECT_NE(ConditionField(pool, "Degraded", "message").find("Secret llama-token"),
            std::string::npos)
      << ConditionField(pool, "Degraded", "message");
  EXPECT_EQ(pool.dump().find("users-own"), std::string::npos);
  EXPECT_EQ(EventReasons().count("TokenSecretConflict"), 1u);

  // The user removes it: the pool gets its own and goes ahead.
  ASSERT_TRUE(client_.Delete(kSecrets, kNs, "llama-token").ok());
  WaitForCaches();
  ReconcileOk();
  EXPECT_EQ(StoredToken().size(), 64u);
  EXPECT_EQ(ReplicaSets("prefill").size(), 1u);
  EXPECT_EQ(ConditionField(GetPool(), "Degraded", "status"), "False");
}

TEST_F(PoolReconcilerTest, OwnSecretWithoutATokenIsReportedNotRewritten) {
  const Json seeded = Seed(PoolObject(1, 1));
  ASSERT_TRUE(
      client_.Upsert(kSecrets, SecretObject("llama-token", "", Str(seeded, "/metadata/uid"), true))
          .ok());
  WaitForCaches();
  ReconcileOk();
  EXPECT_EQ(client_.WriteCount(kSecrets), 0);
  EXPECT_EQ(client_.ObjectCount(kReplicaSets), 0u);
  Json pool = GetPool();
  EXPECT_EQ(ConditionField(pool, "Degraded", "reason"), "TokenSecretConflict");
  const std::string message = ConditionField(pool, "Degraded", "message");
  EXPECT_NE(message.find("llama-token"), std::string::npos) << message;
  EXPECT_NE(message.find("\"token\""), std::string::npos) << message;
}

TEST_F(PoolReconcilerTest, EachPoolGetsItsOwnToken) {
  Seed(PoolObject(1, 1));
  Seed(PoolObject(1, 1, 2, "mistral"));
  ReconcileOk();
  ReconcileResult r = reconciler_.Reconcile("ns/mistral");
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  const std::string llama = StoredToken("llama");
  const std::string mistral = StoredToken("mistral");
  EXPECT_EQ(llama.size(), 64u);
  EXPECT_EQ(mistral.size(), 64u);
  EXPECT_TRUE(IsLowerHex(mistral));
  EXPECT_NE(llama, mistral);
}

TEST(PoolReconcilerToken, SixtyFourHexDigitsFreshEachTime) {
  std::set<std::string> seen;
  for (int i = 0; i < 16; ++i) {
    StatusOr<std::string> t = GeneratePoolToken();
    ASSERT_TRUE(t.ok()) << t.status().ToString();
    EXPECT_EQ(t->size(), 64u);
    EXPECT_TRUE(IsLowerHex(*t)) << *t;
    seen.insert(*t);
  }
  EXPECT_EQ(seen.size(), 16u);
}

// ---- The planner inside the reconciler (spec.autoscaling.enabled) ----

// An autoscaled Llama-3.1-8B pool (2 GPUs per replica) with a GPU budget (0: none).
Json AutoscaledPool(int prefill, int decode, int gpu_budget = 0) {
  Json pool = PoolObject(prefill, decode);
  pool["spec"]["model"]["preset"] = "llama-3.1-8b";
  pool["spec"]["prefill"]["minReplicas"] = 1;
  pool["spec"]["decode"]["minReplicas"] = 1;
  pool["spec"]["autoscaling"] = {{"enabled", true},
                                 {"interval", "15s"},
                                 {"scaleDownStabilization", "300s"},
                                 {"rebalance", "InPlace"}};
  if (gpu_budget > 0) pool["spec"]["autoscaling"]["gpuBudget"] = gpu_budget;
  return pool;
}

planner::PoolSignals Traffic(double rate, double prompt, double output) {
  planner::PoolSignals s;
  s.window_seconds = 60;
  s.request_rate = rate;
  s.mean_prompt_tokens = prompt;
  s.mean_output_tokens = output;
  s.ttft_seconds = 0.2;
  s.tpot_seconds = 0.02;
  return s;
}

TEST_F(PoolReconcilerTest, PlannerHoldsWithoutMetricsAndSaysWhy) {
  Seed(AutoscaledPool(1, 1));
  signals_ = Status::Unavailable("prometheus http://127.0.0.1:9: connection refused");
  ReconcileResult r = planned_.Reconcile(kKey);
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_GT(r.requeue_after.count(), 0) << "the planner must come back every interval";
  EXPECT_LE(r.requeue_after, seconds(15));
  Json pool = GetPool();
  EXPECT_EQ(ConditionField(pool, "MetricsAvailable", "status"), "False");
  EXPECT_EQ(ConditionField(pool, "MetricsAvailable", "reason"), "MetricsUnreachable");
  EXPECT_NE(ConditionField(pool, "MetricsAvailable", "message").find("connection refused"),
            std::string::npos);
  EXPECT_EQ(Str(pool, "/status/autoscaling/decision"), "no_metrics");
  EXPECT_EQ(Int(OnlyReplicaSet("prefill"), "/spec/replicas"), 1);
  EXPECT_EQ(Int(OnlyReplicaSet("decode"), "/spec/replicas"), 1);
  EXPECT_EQ(EventReasons().count("MetricsUnreachable"), 1u);
}

TEST_F(PoolReconcilerTest, PlannerScalesUpOnLoadAndRecordsTheDecision) {
  Seed(AutoscaledPool(1, 1));
  ASSERT_TRUE(planned_.Reconcile(kKey).status.ok());  // no samples yet: hold
  WaitForCaches();
  EXPECT_EQ(ConditionField(GetPool(), "MetricsAvailable", "reason"), "NoMetrics");

  signals_ = Traffic(/*rate=*/200, /*prompt=*/2000, /*output=*/300);
  clock_.Advance(seconds(15));
  ASSERT_TRUE(planned_.Reconcile(kKey).status.ok());
  WaitForCaches();
  Json pool = GetPool();
  const int prefill = Int(OnlyReplicaSet("prefill"), "/spec/replicas");
  const int decode = Int(OnlyReplicaSet("decode"), "/spec/replicas");
  EXPECT_GT(prefill, 1);
  EXPECT_GT(decode, 1);
  EXPECT_EQ(Int(pool, "/status/prefill/desiredReplicas"), prefill);
  EXPECT_EQ(Int(pool, "/status/decode/desiredReplicas"), decode);
  EXPECT_EQ(Str(pool, "/status/autoscaling/decision"), "scale_up");
  EXPECT_EQ(Str(pool, "/status/autoscaling/metricsSource"), "scripted");
  EXPECT_GE(JsonGet<double>(pool, "/status/autoscaling/predictedRequestRate", 0), 200);
  EXPECT_NE(Str(pool, "/status/lastScale/reason").find("forecast"), std::string::npos);
  EXPECT_EQ(JsonGet<double>(pool, "/status/observed/requestRate", 0), 200);
  EXPECT_EQ(ConditionField(pool, "MetricsAvailable", "status"), "True");
  EXPECT_EQ(EventReasons().count("PlannerScaledUp"), 1u);

  // Within the interval nothing is re-evaluated, whatever the metrics say now.
  signals_ = Traffic(1, 100, 10);
  ASSERT_TRUE(planned_.Reconcile(kKey).status.ok());
  WaitForCaches();
  EXPECT_EQ(Int(OnlyReplicaSet("prefill"), "/spec/replicas"), prefill);

  // A controller without this planner's memory (a new leader) carries on from the sizes in
  // status.
  ASSERT_TRUE(reconciler_.Reconcile(kKey).status.ok());
  WaitForCaches();
  EXPECT_EQ(Int(OnlyReplicaSet("prefill"), "/spec/replicas"), prefill);
}

TEST_F(PoolReconcilerTest, AutoscalingDisabledRunsTheSpecReplicas) {
  Json pool_object = AutoscaledPool(2, 3);
  pool_object["spec"]["autoscaling"]["enabled"] = false;
  Seed(pool_object);
  signals_ = Traffic(500, 4000, 500);
  ASSERT_TRUE(planned_.Reconcile(kKey).status.ok());
  WaitForCaches();
  EXPECT_EQ(Int(OnlyReplicaSet("prefill"), "/spec/replicas"), 2);
  EXPECT_EQ(Int(OnlyReplicaSet("decode"), "/spec/replicas"), 3);
  Json pool = GetPool();
  EXPECT_FALSE(pool["status"].contains("autoscaling"));
  EXPECT_EQ(ConditionField(pool, "MetricsAvailable", "status"), "<no MetricsAvailable condition>");
}

TEST_F(PoolReconcilerTest, PromptHeavyShiftMovesReadyDecodeWorkersToPrefillInPlace) {
  // 8 GPUs, all held: 1 prefill + 3 decode replicas of 2 GPUs.
  Seed(AutoscaledPool(1, 3, /*gpu_budget=*/8));
  ASSERT_TRUE(planned_.Reconcile(kKey).status.ok());
  WaitForCaches();
  const Json decode_rs = OnlyReplicaSet("decode");
  const Json prefill_rs = OnlyReplicaSet("prefill");
  const std::string decode_hash = Str(decode_rs, "/metadata/labels/pdpool.dev~1template-hash");
  const std::string prefill_hash = Str(prefill_rs, "/metadata/labels/pdpool.dev~1template-hash");
  for (int i = 0; i < 3; ++i) {
    Json pod = {{"apiVersion", "v1"},
                {"kind", "Pod"},
                {"metadata",
                 {{"name", "llama-decode-" + std::to_string(i)},
                  {"namespace", kNs},
                  {"labels",
                   {{kPoolLabel, kPool},
                    {kRoleLabel, "decode"},
                    {"pdpool.dev/template-hash", decode_hash}}}}},
                {"status",
                 {{"phase", "Running"},
                  {"podIP", "127.0.1." + std::to_string(i + 1)},
                  {"startTime", "2026-11-27T10:0" + std::to_string(i) + ":00Z"},
                  {"conditions", Json::array({{{"type", "Ready"}, {"status", "True"}}})}}}};
    ASSERT_TRUE(client_.Upsert(kPods, pod).ok());
  }
  SetReplicaSetStatus(Str(decode_rs, "/metadata/name"), 3, 3);
  SetReplicaSetStatus(Str(prefill_rs, "/metadata/name"), 1, 1);
  WaitForCaches();

  std::mutex mu;
  std::vector<std::string> writes;  // "Update replicasets <name>" / "Patch pods <name>"
  client_.SetCallHook([&](const kube::FakeCall& call) {
    if (call.method == "Update" || call.method == "Patch") {
      std::lock_guard lock(mu);
      writes.push_back(call.method + " " + call.type->resource + " " + call.name);
    }
    return Status::Ok();
  });
  signals_ = Traffic(/*rate=*/60, /*prompt=*/8000, /*output=*/10);
  clock_.Advance(seconds(15));
  ASSERT_TRUE(planned_.Reconcile(kKey).status.ok());
  client_.SetCallHook({});
  WaitForCaches();

  Json pool = GetPool();
  EXPECT_EQ(Str(pool, "/status/autoscaling/decision"), "rebalance")
      << Str(pool, "/status/autoscaling/reason");
  const int prefill = Int(OnlyReplicaSet("prefill"), "/spec/replicas");
  const int decode = Int(OnlyReplicaSet("decode"), "/spec/replicas");
  EXPECT_GT(prefill, 1);
  EXPECT_EQ(prefill + decode, 4) << "a move starts no pod and the budget is used up";
  int moved = 0;
  for (int i = 0; i < 3; ++i) {
    auto pod = client_.Get(kPods, kNs, "llama-decode-" + std::to_string(i));
    ASSERT_TRUE(pod.ok());
    if (Str(*pod, "/metadata/labels/pdpool.dev~1role") != "prefill") continue;
    ++moved;
    EXPECT_EQ(Str(*pod, "/metadata/labels/pdpool.dev~1template-hash"), prefill_hash);
    EXPECT_EQ(Str(*pod, "/metadata/annotations/pdpool.dev~1moved-from"), "decode");
  }
  EXPECT_EQ(moved, prefill - 1);
  // The youngest pods move first.
  auto newest = client_.Get(kPods, kNs, "llama-decode-2");
  EXPECT_EQ(Str(*newest, "/metadata/labels/pdpool.dev~1role"), "prefill");
  // Receiver scaled first, then the relabel, then the giver shrinks.
  const std::string prefill_update = "Update replicasets " + Str(prefill_rs, "/metadata/name");
  const std::string decode_update = "Update replicasets " + Str(decode_rs, "/metadata/name");
  auto index_of = [&](const std::string& prefix) {
    for (size_t i = 0; i < writes.size(); ++i)
      if (writes[i].rfind(prefix, 0) == 0) return static_cast<int>(i);
    return -1;
  };
  ASSERT_GE(index_of(prefill_update), 0);
  ASSERT_GE(index_of("Patch pods "), 0);
  ASSERT_GE(index_of(decode_update), 0);
  EXPECT_LT(index_of(prefill_update), index_of("Patch pods "));
  EXPECT_LT(index_of("Patch pods "), index_of(decode_update));
  EXPECT_EQ(EventReasons().count("MovedWorker"), static_cast<size_t>(moved));
}

TEST_F(PoolReconcilerTest, RebalanceOffScalesWithinTheBudgetInsteadOfMoving) {
  Json pool_object = AutoscaledPool(1, 3, /*gpu_budget=*/8);
  pool_object["spec"]["autoscaling"]["rebalance"] = "Off";
  Seed(pool_object);
  ASSERT_TRUE(planned_.Reconcile(kKey).status.ok());
  WaitForCaches();
  SetReplicaSetStatus(Str(OnlyReplicaSet("prefill"), "/metadata/name"), 1, 1);
  SetReplicaSetStatus(Str(OnlyReplicaSet("decode"), "/metadata/name"), 3, 3);
  WaitForCaches();
  signals_ = Traffic(60, 8000, 10);
  clock_.Advance(seconds(15));
  ASSERT_TRUE(planned_.Reconcile(kKey).status.ok());
  WaitForCaches();
  Json pool = GetPool();
  EXPECT_EQ(Str(pool, "/status/autoscaling/decision"), "hold")
      << Str(pool, "/status/autoscaling/reason");
  EXPECT_EQ(client_.CallCount("Patch", kPods), 0);
  // The budget is held: prefill cannot grow until decode has shrunk (after its window).
  EXPECT_EQ(Int(OnlyReplicaSet("prefill"), "/spec/replicas"), 1);
  EXPECT_NE(Str(pool, "/status/autoscaling/reason").find("GPU budget"), std::string::npos);
}

}  // namespace
}  // namespace pdpool::controller
