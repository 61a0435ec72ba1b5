// HttpKubeClient against the real local API server (Kubernetes 1.20, deploy/local/cluster.sh):
// CRUD with optimistic concurrency, fields the client does not model surviving a
// read-modify-write, the three patch flavours and server-side apply ownership, the status
// subresource, watches (events after a list, Gone from an old version) and selectors. Each test
// works in its own namespace (TestEnv).
#include "common/kube/kube_client.h"

#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdlib>
#include <functional>
#include <future>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "common/kube/http_kube_client.h"
#include "common/kube/kubeconfig.h"
#include "common/kube/resource.h"
#include "tests/integration/test_env.h"

namespace pdpool::testing {
namespace {

using kube::kInferencePools;
using kube::PatchOptions;
using kube::PatchType;
using std::chrono::seconds;

const kube::ResourceType kConfigMaps{"", "v1", "configmaps", "ConfigMap", true};

constexpr auto kWait = seconds(30);

std::string Str(const Json& obj, const char* pointer) {
  return JsonGet<std::string>(obj, pointer, "");
}

class KubeClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(::testing::Test::HasFailure());
    // As every pdpool main() does (common/signals.h): a cancelled HTTPS watch otherwise kills
    // the process, see KubeClientDeathTest below.
    std::signal(SIGPIPE, SIG_IGN);
  }

  kube::KubeClient& client() { return env_.client(); }
  const std::string& ns() { return env_.ns(); }

  Json ConfigMap(const std::string& name, Json data, Json labels = Json::object()) {
    Json md = {{"name", name}, {"namespace", ns()}};
    if (!labels.empty()) md["labels"] = std::move(labels);
    return {{"apiVersion", "v1"}, {"kind", "ConfigMap"}, {"metadata", md}, {"data", data}};
  }
  Json MustCreate(const Json& cm) {
    auto created = client().Create(kConfigMaps, ns(), cm);
    EXPECT_TRUE(created.ok()) << created.status().ToString();
    return created.ok() ? *created : Json();
  }
  Json MustGet(const std::string& name) {
    auto got = client().Get(kConfigMaps, ns(), name);
    EXPECT_TRUE(got.ok()) << got.status().ToString();
    return got.ok() ? *got : Json();
  }

  TestEnv env_;
};

TEST_F(KubeClientTest, ConfigMapCreateGetUpdateDeleteWithOptimisticConcurrency) {
  Json created = MustCreate(ConfigMap("cm", {{"k", "v1"}}));
  EXPECT_FALSE(Str(created, "/metadata/uid").empty());
  const std::string rv1 = Str(created, "/metadata/resourceVersion");
  ASSERT_FALSE(rv1.empty());

  auto again = client().Create(kConfigMaps, ns(), ConfigMap("cm", {{"k", "other"}}));
  EXPECT_TRUE(again.status().IsAlreadyExists()) << again.status().ToString();

  Json got = MustGet("cm");
  EXPECT_EQ(Str(got, "/data/k"), "v1");
  EXPECT_EQ(Str(got, "/metadata/resourceVersion"), rv1);

  Json changed = got;
  changed["data"]["k"] = "v2";
  auto updated = client().Update(kConfigMaps, changed);
  ASSERT_TRUE(updated.ok()) << updated.status().ToString();
  EXPECT_NE(Str(*updated, "/metadata/resourceVersion"), rv1);
  EXPECT_EQ(Str(MustGet("cm"), "/data/k"), "v2");

  // A write based on the first version loses: Conflict, and nothing changes.
  Json stale = got;
  stale["data"]["k"] = "stale";
  auto conflict = client().Update(kConfigMaps, stale);
  EXPECT_TRUE(conflict.status().IsConflict()) << conflict.status().ToString();
  EXPECT_EQ(Str(MustGet("cm"), "/data/k"), "v2");

  // A delete whose uid precondition does not match is refused too.
  kube::DeleteOptions wrong_uid;
  wrong_uid.precondition_uid = "00000000-0000-0000-0000-000000000000";
  EXPECT_TRUE(client().Delete(kConfigMaps, ns(), "cm", wrong_uid).IsConflict());

  kube::DeleteOptions right_uid;
  right_uid.precondition_uid = Str(created, "/metadata/uid");
  Status deleted = client().Delete(kConfigMaps, ns(), "cm", right_uid);
  ASSERT_TRUE(deleted.ok()) << deleted.ToString();
  EXPECT_TRUE(client().Get(kConfigMaps, ns(), "cm").status().IsNotFound());
  EXPECT_TRUE(client().Delete(kConfigMaps, ns(), "cm").IsNotFound());
}

TEST_F(KubeClientTest, FieldsTheClientDoesNotModelSurviveAReadModifyWrite) {
  Json cm =
      ConfigMap("cm", {{"edited", "1"}, {"odd.key_with-chars", "keep me"}}, {{"team", "serving"}});
  cm["metadata"]["annotations"] = {{"example.com/owner", "someone else"}};
  cm["binaryData"] = {{"blob", "AAECAw=="}};
  MustCreate(cm);

  Json got = MustGet("cm");
  got["data"]["edited"] = "2";
  auto updated = client().Update(kConfigMaps, got);
  ASSERT_TRUE(updated.ok()) << updated.status().ToString();

  Json now = MustGet("cm");
  EXPECT_EQ(Str(now, "/data/edited"), "2");
  EXPECT_EQ(Str(now, "/data/odd.key_with-chars"), "keep me");
  EXPECT_EQ(Str(now, "/metadata/annotations/example.com~1owner"), "someone else");
  EXPECT_EQ(Str(now, "/metadata/labels/team"), "serving");
  EXPECT_EQ(Str(now, "/binaryData/blob"), "AAECAw==");
}

TEST_F(KubeClientTest, MergePatchSetsAndRemovesKeys) {
  MustCreate(ConfigMap("cm", {{"a", "1"}, {"b", "2"}, {"c", "3"}}));
  auto patched = client().Patch(kConfigMaps, ns(), "cm", PatchType::kMerge,
                                {{"data", {{"a", "10"}, {"b", nullptr}}}});
  ASSERT_TRUE(patched.ok()) << patched.status().ToString();
  Json now = MustGet("cm");
  EXPECT_EQ(now["data"], (Json{{"a", "10"}, {"c", "3"}}));
}

TEST_F(KubeClientTest, JsonPatchTestAndReplace) {
  MustCreate(ConfigMap("cm", {{"a", "1"}}));
  Json patch = Json::array({{{"op", "test"}, {"path", "/data/a"}, {"value", "1"}},
                            {{"op", "replace"}, {"path", "/data/a"}, {"value", "2"}}});
  auto patched = client().Patch(kConfigMaps, ns(), "cm", PatchType::kJson, patch);
  ASSERT_TRUE(patched.ok()) << patched.status().ToString();
  EXPECT_EQ(Str(MustGet("cm"), "/data/a"), "2");

  // The same patch again: the test op fails now, and nothing is replaced.
  auto refused = client().Patch(kConfigMaps, ns(), "cm", PatchType::kJson, patch);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument) << refused.status().ToString();
  EXPECT_EQ(Str(MustGet("cm"), "/data/a"), "2");
}

TEST_F(KubeClientTest, ServerSideApplyCreatesAndTracksFieldOwnership) {
  Json intent = {{"apiVersion", "v1"},
                 {"kind", "ConfigMap"},
                 {"metadata", {{"name", "cm"}, {"namespace", ns()}}},
                 {"data", {{"owned", "by-a"}}}};
  PatchOptions a;
  a.field_manager = "manager-a";
  auto created = client().Patch(kConfigMaps, ns(), "cm", PatchType::kApply, intent, a);
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  EXPECT_EQ(Str(MustGet("cm"), "/data/owned"), "by-a");

  Json other = intent;
  other["data"]["owned"] = "by-b";
  PatchOptions b;
  b.field_manager = "manager-b";
  auto conflict = client().Patch(kConfigMaps, ns(), "cm", PatchType::kApply, other, b);
  EXPECT_TRUE(conflict.status().IsConflict()) << conflict.status().ToString();
  EXPECT_NE(conflict.status().message().find("manager-a"), std::string::npos)
      << "the conflict should name the owner: " << conflict.status().ToString();
  EXPECT_EQ(Str(MustGet("cm"), "/data/owned"), "by-a");

  b.force = true;
  auto forced = client().Patch(kConfigMaps, ns(), "cm", PatchType::kApply, other, b);
  ASSERT_TRUE(forced.ok()) << forced.status().ToString();
  EXPECT_EQ(Str(MustGet("cm"), "/data/owned"), "by-b");
}

TEST_F(KubeClientTest, StatusSubresourceChangesOnlyStatus) {
  env_.InstallCrd();
  Json pool = {
      {"apiVersion", "pdpool.dev/v1alpha1"},
      {"kind", "InferencePool"},
      {"metadata", {{"name", "p"}, {"namespace", ns()}}},
      {"spec",
       {{"model",
         {{"name", "test-tiny"}, {"preset", "test-tiny"}, {"source", {{"dummy", {{"seed", 1}}}}}}},
        {"backend", "cpu"},
        {"prefill", {{"replicas", 1}, {"gpusPerReplica", 1}}},
        {"decode", {{"replicas", 1}, {"gpusPerReplica", 1}}}}}};
  auto created = client().Create(kInferencePools, ns(), pool);
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  const int64_t generation = JsonGet<int64_t>(*created, "/metadata/generation", -1);

  // One PUT to /status carrying both a status and a spec change: only the status lands.
  Json both = *created;
  both["spec"]["prefill"]["replicas"] = 5;
  both["status"] = {
      {"observedGeneration", generation},
      {"conditions", Json::array({{{"type", "Ready"},
                                   {"status", "False"},
                                   {"reason", "ReplicasNotReady"},
                                   {"message", "prefill 0/1, decode 0/1"},
                                   {"observedGeneration", generation},
                                   {"lastTransitionTime", "2026-01-01T00:00:00Z"}}})}};
  auto updated = client().UpdateStatus(kInferencePools, both);
  ASSERT_TRUE(updated.ok()) << updated.status().ToString();

  auto now = client().Get(kInferencePools, ns(), "p");
  ASSERT_TRUE(now.ok()) << now.status().ToString();
  EXPECT_EQ(TestEnv::ConditionReason(*now, "Ready"), "ReplicasNotReady");
  EXPECT_EQ(JsonGet<int64_t>(*now, "/status/observedGeneration", -1), generation);
  EXPECT_EQ(JsonGet<int64_t>(*now, "/spec/prefill/replicas", -1), 1);
  EXPECT_EQ(JsonGet<int64_t>(*now, "/metadata/generation", -1), generation);

  // A merge patch of the status subresource, as the reconciler writes it.
  PatchOptions po;
  po.subresource = "status";
  auto patched = client().Patch(kInferencePools, ns(), "p", PatchType::kMerge,
                                {{"status", {{"placement", {{"domain", "nvl-a"}, {"gpus", 2}}}}},
                                 {"spec", {{"backend", "sim"}}}},
                                po);
  ASSERT_TRUE(patched.ok()) << patched.status().ToString();
  now = client().Get(kInferencePools, ns(), "p");
  ASSERT_TRUE(now.ok());
  EXPECT_EQ(Str(*now, "/status/placement/domain"), "nvl-a");
  EXPECT_EQ(TestEnv::ConditionReason(*now, "Ready"), "ReplicasNotReady") << "merge keeps the rest";
  EXPECT_EQ(Str(*now, "/spec/backend"), "cpu");
  EXPECT_EQ(JsonGet<int64_t>(*now, "/metadata/generation", -1), generation);

  // And an ordinary update ignores status.
  Json spec_change = *now;
  spec_change["spec"]["prefill"]["replicas"] = 2;
  spec_change["status"]["placement"]["domain"] = "nvl-b";
  auto spec_updated = client().Update(kInferencePools, spec_change);
  ASSERT_TRUE(spec_updated.ok()) << spec_updated.status().ToString();
  now = client().Get(kInferencePools, ns(), "p");
  ASSERT_TRUE(now.ok());
  EXPECT_EQ(JsonGet<int64_t>(*now, "/spec/prefill/replicas", -1), 2);
  EXPECT_EQ(Str(*now, "/status/placement/domain"), "nvl-a");
  EXPECT_EQ(JsonGet<int64_t>(*now, "/metadata/generation", -1), generation + 1);
}

// Runs a watch on its own thread and collects its events until cancelled or it returns.
class WatchCollector {
 public:
  WatchCollector(kube::KubeClient& client, const kube::ResourceType& type, std::string ns,
                 kube::WatchOptions options)
      : result_(std::async(std::launch::async, [this, &client, &type, ns, options] {
          return client.Watch(
              type, ns, options,
              [this](const kube::WatchEvent& ev) {
                std::lock_guard lock(mu_);
                events_.push_back(ev);
                cv_.notify_all();
                return true;
              },
              &cancel_);
        })) {}
  ~WatchCollector() {
    cancel_.Cancel();
    if (result_.valid()) result_.wait();
  }
  // Waits until `pred` holds for the events so far.
  bool WaitFor(const std::function<bool(const std::vector<kube::WatchEvent>&)>& pred) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, kWait, [&] { return pred(events_); });
  }
  std::vector<kube::WatchEvent> Events() {
    std::lock_guard lock(mu_);
    return events_;
  }
  std::optional<Status> Result() {
    if (result_.wait_for(kWait) != std::future_status::ready) return std::nullopt;
    return result_.get();
  }

 private:
  kube::CancelToken cancel_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<kube::WatchEvent> events_;
  std::future<Status> result_;
};

TEST_F(KubeClientTest, WatchFromAListsVersionSeesLaterAddsModificationsAndDeletes) {
  MustCreate(ConfigMap("before", {{"k", "v"}}, {{"suite", "watch"}}));
  kube::ListOptions lo;
  lo.label_selector = "suite=watch";
  auto list = client().List(kConfigMaps, ns(), lo);
  ASSERT_TRUE(list.ok()) << list.status().ToString();
  ASSERT_EQ((*list)["items"].size(), 1u);

  kube::WatchOptions wo;
  wo.resource_version = Str(*list, "/metadata/resourceVersion");
  wo.label_selector = "suite=watch";
  wo.timeout_seconds = 120;
  WatchCollector watch(client(), kConfigMaps, ns(), wo);

  MustCreate(ConfigMap("after", {{"k", "1"}}, {{"suite", "watch"}}));
  MustCreate(ConfigMap("unselected", {{"k", "1"}}));
  ASSERT_TRUE(
      client().Patch(kConfigMaps, ns(), "after", PatchType::kMerge, {{"data", {{"k", "2"}}}}).ok());
  ASSERT_TRUE(client().Delete(kConfigMaps, ns(), "after").ok());

  auto done = [](const std::vector<kube::WatchEvent>& evs) {
    for (const auto& e : evs)
      if (e.type == "DELETED") return true;
    return false;
  };
  ASSERT_TRUE(watch.WaitFor(done)) << "no DELETED event arrived";
  std::vector<std::string> seen;
  for (const auto& e : watch.Events()) {
    if (e.type == "BOOKMARK") continue;
    seen.push_back(e.type + " " + Str(e.object, "/metadata/name") +
                   (e.type == "MODIFIED" ? " k=" + Str(e.object, "/data/k") : ""));
  }
  // Nothing from before the list's version, nothing outside the selector.
  EXPECT_EQ(seen, (std::vector<std::string>{"ADDED after", "MODIFIED after k=2", "DELETED after"}));
}

TEST_F(KubeClientTest, WatchFromAVeryOldResourceVersionIsGone) {
  // A custom resource: its watch cache starts when the CRD is established, long after version
  // 1. (On a cluster minutes old, built-in types' caches may still reach back to version 1 and
  // replay everything instead.)
  env_.InstallCrd();
  kube::WatchOptions wo;
  wo.resource_version = "1";
  wo.timeout_seconds = 20;
  WatchCollector watch(client(), kInferencePools, ns(), wo);
  auto result = watch.Result();
  ASSERT_TRUE(result.has_value()) << "the watch from version 1 did not end";
  EXPECT_TRUE(result->IsGone()) << result->ToString();
  for (const auto& e : watch.Events()) EXPECT_EQ(e.type, "BOOKMARK") << e.object.dump();
}

TEST_F(KubeClientTest, ListByLabelAndFieldSelectorAndPages) {
  MustCreate(ConfigMap("cm-a", {{"k", "v"}}, {{"suite", "sel"}, {"app", "a"}}));
  MustCreate(ConfigMap("cm-b", {{"k", "v"}}, {{"suite", "sel"}, {"app", "b"}}));
  MustCreate(ConfigMap("cm-c", {{"k", "v"}}, {{"suite", "sel"}}));
  auto names = [&](kube::ListOptions lo) {
    std::set<std::string> out;
    auto list = client().List(kConfigMaps, ns(), lo);
    EXPECT_TRUE(list.ok()) << list.status().ToString();
    if (list.ok())
      for (const auto& item : (*list)["items"]) out.insert(Str(item, "/metadata/name"));
    return out;
  };
  auto by_label = [&](const std::string& selector) {
    kube::ListOptions lo;
    lo.label_selector = selector;
    return names(lo);
  };
  EXPECT_EQ(by_label("suite=sel,app=a"), (std::set<std::string>{"cm-a"}));
  EXPECT_EQ(by_label("suite=sel,app in (a, b)"), (std::set<std::string>{"cm-a", "cm-b"}));
  EXPECT_EQ(by_label("suite=sel,app!=a"), (std::set<std::string>{"cm-b", "cm-c"}));
  EXPECT_EQ(by_label("suite=sel,!app"), (std::set<std::string>{"cm-c"}));
  EXPECT_EQ(by_label("suite=sel"), (std::set<std::string>{"cm-a", "cm-b", "cm-c"}));

  kube::ListOptions by_field;
  by_field.field_selector = "metadata.name=cm-b";
  EXPECT_EQ(names(by_field), (std::set<std::string>{"cm-b"}));

  // Pages of two, following the continue token by hand.
  std::set<std::string> paged;
  kube::ListOptions page;
  page.label_selector = "suite=sel";
  page.limit = 2;
  int pages = 0;
  do {
    auto list = client().List(kConfigMaps, ns(), page);
    ASSERT_TRUE(list.ok()) << list.status().ToString();
    EXPECT_LE((*list)["items"].size(), 2u);
    for (const auto& item : (*list)["items"]) paged.insert(Str(item, "/metadata/name"));
    page.continue_token = Str(*list, "/metadata/continue");
    ASSERT_LT(++pages, 10);
  } while (!page.continue_token.empty());
  EXPECT_EQ(pages, 2);
  EXPECT_EQ(paged, (std::set<std::string>{"cm-a", "cm-b", "cm-c"}));
}

// Cancelling a watch (what every informer does on shutdown) must not take down a process that
// did not think to ignore SIGPIPE: OpenSSL writes to the socket that cancel shut down.
TEST(KubeClientDeathTest, CancellingAnHttpsWatchDoesNotKillTheProcess) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const char* env = std::getenv("PDPOOL_KUBECONFIG");
  const char* kubeconfig = env && *env ? env : PDPOOL_DEFAULT_KUBECONFIG;
  EXPECT_EXIT(
      {
        std::signal(SIGPIPE, SIG_DFL);  // a host process with default signal handling
        auto config = kube::LoadKubeConfigFile(kubeconfig);
        if (!config.ok()) std::_Exit(2);
        auto client = kube::NewHttpKubeClient(*config);
        if (!client.ok()) std::_Exit(2);
        kube::CancelToken cancel;
        std::mutex mu;
        std::condition_variable cv;
        bool got_event = false;
        auto watch = std::async(std::launch::async, [&] {
          // One object, then an idle stream: what an informer's watch mostly is.
          kube::WatchOptions wo;
          wo.field_selector = "metadata.name=default";
          return (*client)->Watch(
              kube::kNamespaces, "", wo,
              [&](const kube::WatchEvent&) {
                std::lock_guard lock(mu);
                got_event = true;
                cv.notify_all();
                return true;
              },
              &cancel);
        });
        {
          std::unique_lock lock(mu);
          if (!cv.wait_for(lock, kWait, [&] { return got_event; })) std::_Exit(3);
        }
        cancel.Cancel();
        if (watch.wait_for(kWait) != std::future_status::ready) std::_Exit(4);
        std::_Exit(watch.get().code() == StatusCode::kCancelled ? 0 : 5);
      },
      ::testing::ExitedWithCode(0), "");
}

}  // namespace
}  // namespace pdpool::testing
