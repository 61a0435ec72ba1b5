// Tests for FakeKubeClient: the API-server behaviour other tests rely on (resourceVersions,
// Conflict, status subresource, selectors, patches, watch replay/Gone/bookmarks, faults).
#include "tests/fakes/fake_kube_client.h"

#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <future>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace pdpool::kube {
namespace {

using std::chrono::seconds;

constexpr auto kWait = seconds(10);

Json Pod(const std::string& name, Json labels = Json::object(), const std::string& node = "") {
  Json pod = {{"apiVersion", "v1"},
              {"kind", "Pod"},
              {"metadata", {{"name", name}, {"namespace", "ns"}, {"labels", labels}}},
              {"spec", {{"containers", Json::array({{{"name", "c"}, {"image", "img"}}})}}}};
  if (!node.empty()) pod["spec"]["nodeName"] = node;
  return pod;
}

std::string Rv(const Json& obj) {
  return JsonGet<std::string>(obj, "/metadata/resourceVersion", "");
}

std::vector<std::string> Names(const Json& list) {
  std::vector<std::string> names;
  for (const auto& item : list["items"]) names.push_back(item["metadata"]["name"]);
  return names;
}

// Runs a watch on its own thread and collects its events.
class WatchRecorder {
 public:
  WatchRecorder(FakeKubeClient& client, const ResourceType& type, WatchOptions options,
                std::string ns = "ns")
      : result_(std::async(std::launch::async, [this, &client, &type, options, ns] {
          return client.Watch(
              type, ns, options,
              [this](const WatchEvent& ev) {
                std::lock_guard lock(mu_);
                events_.push_back(ev);
                cv_.notify_all();
                return true;
              },
              &cancel_);
        })) {}
  ~WatchRecorder() {
    cancel_.Cancel();
    if (result_.valid()) result_.wait();
  }

  bool WaitForEvents(size_t n) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, kWait, [&] { return events_.size() >= n; });
  }
  std::vector<WatchEvent> Events() {
    std::lock_guard lock(mu_);
    return events_;
  }
  std::vector<std::string> Summary() {  // "ADDED a"
    std::vector<std::string> out;
    for (const auto& ev : Events()) {
      out.push_back(ev.type + " " + JsonGet<std::string>(ev.object, "/metadata/name", ""));
    }
    return out;
  }
  // Waits for the watch to return.
  std::optional<Status> Result() {
    if (result_.wait_for(kWait) != std::future_status::ready) return std::nullopt;
    return result_.get();
  }
  CancelToken& cancel() { return cancel_; }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<WatchEvent> events_;
  CancelToken cancel_;
  std::future<Status> result_;
};

TEST(FakeKubeClientTest, CreateStampsMetadataAndDropsStatus) {
  FakeClock clock;
  FakeKubeClient client(&clock);
  Json pod = Pod("a");
  pod["status"] = {{"phase", "Running"}};
  auto created = client.Create(kPods, "ns", pod);
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  EXPECT_EQ(Rv(*created), "1");
  EXPECT_FALSE(JsonGet<std::string>(*created, "/metadata/uid", "").empty());
  EXPECT_EQ(JsonGet<int64_t>(*created, "/metadata/generation", 0), 1);
  EXPECT_EQ(JsonGet<std::string>(*created, "/metadata/creationTimestamp", ""),
            FormatRfc3339(clock.WallNow()));
  EXPECT_FALSE(created->contains("status"));

  auto dup = client.Create(kPods, "ns", Pod("a"));
  EXPECT_TRUE(dup.status().IsAlreadyExists());
  EXPECT_EQ(client.CurrentResourceVersion(), 1);
}

TEST(FakeKubeClientTest, ResourceVersionIsGlobalAndMonotonic) {
  FakeKubeClient client;
  auto a = client.Create(kPods, "ns", Pod("a"));
  auto svc = client.Create(kServices, "ns", Json{{"metadata", {{"name", "a"}}}});
  auto b = client.Create(kPods, "ns2", Json{{"metadata", {{"name", "a"}}}});
  ASSERT_TRUE(a.ok() && svc.ok() && b.ok());
  EXPECT_EQ(Rv(*a), "1");
  EXPECT_EQ(Rv(*svc), "2");
  EXPECT_EQ(Rv(*b), "3");
  EXPECT_NE(JsonGet<std::string>(*a, "/metadata/uid", ""),
            JsonGet<std::string>(*b, "/metadata/uid", ""));
  EXPECT_EQ(client.CurrentResourceVersion(), 3);
  EXPECT_EQ(client.ObjectCount(kPods), 2u);
  EXPECT_EQ(client.ObjectCount(kPods, "ns"), 1u);
}

TEST(FakeKubeClientTest, CreateValidatesNamesAndNamespaces) {
  FakeKubeClient client;
  EXPECT_EQ(client.Create(kPods, "ns", Json{{"metadata", Json::object()}}).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(client.Create(kPods, "", Pod("a")).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(client.Create(kPods, "elsewhere", Pod("a")).status().code(),
            StatusCode::kInvalidArgument);
  Json with_rv = Pod("a");
  with_rv["metadata"]["resourceVersion"] = "7";
  EXPECT_EQ(client.Create(kPods, "ns", with_rv).status().code(), StatusCode::kInvalidArgument);
  // Cluster-scoped: the namespace argument does not apply.
  auto node = client.Create(kNodes, "", Json{{"metadata", {{"name", "n1"}}}});
  ASSERT_TRUE(node.ok());
  EXPECT_TRUE(client.Get(kNodes, "", "n1").ok());
}

TEST(FakeKubeClientTest, GenerateName) {
  FakeKubeClient client;
  Json pod = Pod("");
  pod["metadata"].erase("name");
  pod["metadata"]["generateName"] = "worker-";
  auto a = client.Create(kPods, "ns", pod);
  auto b = client.Create(kPods, "ns", pod);
  ASSERT_TRUE(a.ok() && b.ok());
  std::string na = (*a)["metadata"]["name"], nb = (*b)["metadata"]["name"];
  EXPECT_EQ(na.rfind("worker-", 0), 0u);
  EXPECT_EQ(na.size(), std::string("worker-").size() + 5);
  EXPECT_NE(na, nb);
  EXPECT_TRUE(client.Get(kPods, "ns", na).ok());
}

TEST(FakeKubeClientTest, GetAndDeleteUnknownAreNotFound) {
  FakeKubeClient client;
  EXPECT_TRUE(client.Get(kPods, "ns", "nope").status().IsNotFound());
  EXPECT_TRUE(client.Delete(kPods, "ns", "nope").IsNotFound());
  ASSERT_TRUE(client.Create(kPods, "ns", Pod("a")).ok());
  EXPECT_TRUE(client.Delete(kPods, "ns", "a").ok());
  EXPECT_TRUE(client.Get(kPods, "ns", "a").status().IsNotFound());
  EXPECT_TRUE(client.Update(kPods, Pod("a")).status().IsNotFound());
}

TEST(FakeKubeClientTest, DeleteWithWrongUidPreconditionIsConflict) {
  FakeKubeClient client;
  ASSERT_TRUE(client.Create(kPods, "ns", Pod("a")).ok());
  DeleteOptions opts;
  opts.precondition_uid = "someone-else";
  EXPECT_TRUE(client.Delete(kPods, "ns", "a", opts).IsConflict());
  EXPECT_TRUE(client.Get(kPods, "ns", "a").ok());
}

TEST(FakeKubeClientTest, UpdateWithStaleResourceVersionIsConflict) {
  FakeKubeClient client;
  auto v1 = client.Create(kPods, "ns", Pod("a"));
  ASSERT_TRUE(v1.ok());
  Json first = *v1;
  first["metadata"]["labels"]["x"] = "1";
  auto v2 = client.Update(kPods, first);
  ASSERT_TRUE(v2.ok());
  EXPECT_NE(Rv(*v2), Rv(*v1));
  // A second writer still holding v1 loses.
  Json second = *v1;
  second["metadata"]["labels"]["x"] = "2";
  EXPECT_TRUE(client.Update(kPods, second).status().IsConflict());
  EXPECT_TRUE(client.UpdateStatus(kPods, second).status().IsConflict());
  EXPECT_EQ((*client.Get(kPods, "ns", "a"))["metadata"]["labels"]["x"], "1");
  // No resourceVersion: unconditional.
  second["metadata"].erase("resourceVersion");
  EXPECT_TRUE(client.Update(kPods, second).ok());
}

TEST(FakeKubeClientTest, UpdateIgnoresStatusAndBumpsGenerationOnSpecOnly) {
  FakeKubeClient client;
  auto created = client.Create(kPods, "ns", Pod("a"));
  ASSERT_TRUE(created.ok());
  Json obj = *created;
  obj["metadata"]["labels"]["tier"] = "web";
  obj["status"] = {{"phase", "Running"}};
  auto updated = client.Update(kPods, obj);
  ASSERT_TRUE(updated.ok());
  EXPECT_EQ((*updated)["metadata"]["labels"]["tier"], "web");
  EXPECT_FALSE(updated->contains("status"));
  EXPECT_EQ(JsonGet<int64_t>(*updated, "/metadata/generation", 0), 1);

  obj = *updated;
  obj["spec"]["nodeName"] = "n1";
  updated = client.Update(kPods, obj);
  ASSERT_TRUE(updated.ok());
  EXPECT_EQ(JsonGet<int64_t>(*updated, "/metadata/generation", 0), 2);

  // Changing nothing writes nothing.
  auto same = client.Update(kPods, *updated);
  ASSERT_TRUE(same.ok());
  EXPECT_EQ(Rv(*same), Rv(*updated));
}

TEST(FakeKubeClientTest, UpdateStatusChangesOnlyStatus) {
  FakeKubeClient client;
  auto created = client.Create(kPods, "ns", Pod("a"));
  ASSERT_TRUE(created.ok());
  Json obj = *created;
  obj["status"] = {{"phase", "Running"}};
  obj["spec"]["nodeName"] = "sneaky";
  obj["metadata"]["labels"]["sneaky"] = "yes";
  auto updated = client.UpdateStatus(kPods, obj);
  ASSERT_TRUE(updated.ok());
  EXPECT_EQ((*updated)["status"]["phase"], "Running");
  EXPECT_FALSE((*updated)["spec"].contains("nodeName"));
  EXPECT_FALSE((*updated)["metadata"]["labels"].contains("sneaky"));
  EXPECT_EQ(JsonGet<int64_t>(*updated, "/metadata/generation", 0), 1);
  EXPECT_NE(Rv(*updated), Rv(*created));
}

TEST(FakeKubeClientTest, LabelSelectors) {
  FakeKubeClient client;
  ASSERT_TRUE(client.Create(kPods, "ns", Pod("a", {{"app", "web"}, {"tier", "fe"}})).ok());
  ASSERT_TRUE(client.Create(kPods, "ns", Pod("b", {{"app", "web"}})).ok());
  ASSERT_TRUE(client.Create(kPods, "ns", Pod("c", {{"app", "db"}, {"tier", "be"}})).ok());
  ASSERT_TRUE(client.Create(kPods, "ns", Pod("d")).ok());
  auto names = [&](const std::string& selector) {
    ListOptions o;
    o.label_selector = selector;
    auto list = client.List(kPods, "ns", o);
    EXPECT_TRUE(list.ok()) << selector << ": " << list.status().ToString();
    return list.ok() ? Names(*list) : std::vector<std::string>{"<error>"};
  };
  using V = std::vector<std::string>;
  EXPECT_EQ(names(""), (V{"a", "b", "c", "d"}));
  EXPECT_EQ(names("app=web"), (V{"a", "b"}));
  EXPECT_EQ(names("app==web"), (V{"a", "b"}));
  EXPECT_EQ(names("app!=web"), (V{"c", "d"}));  // no label counts as "not web"
  EXPECT_EQ(names("tier"), (V{"a", "c"}));
  EXPECT_EQ(names("!tier"), (V{"b", "d"}));
  EXPECT_EQ(names("app in (web, db)"), (V{"a", "b", "c"}));
  EXPECT_EQ(names("tier notin (fe)"), (V{"b", "c", "d"}));
  EXPECT_EQ(names("app=web, tier"), (V{"a"}));
  EXPECT_EQ(names("app in (web),!tier"), (V{"b"}));

  ListOptions bad;
  bad.label_selector = "app in web";
  EXPECT_EQ(client.List(kPods, "ns", bad).status().code(), StatusCode::kInvalidArgument);
  bad.label_selector = "app ~ web";
  EXPECT_EQ(client.List(kPods, "ns", bad).status().code(), StatusCode::kInvalidArgument);
}

TEST(FakeKubeClientTest, FieldSelectors) {
  FakeKubeClient client;
  ASSERT_TRUE(client.Create(kPods, "ns", Pod("a", Json::object(), "n1")).ok());
  ASSERT_TRUE(client.Create(kPods, "ns", Pod("b", Json::object(), "n2")).ok());
  ASSERT_TRUE(client.Create(kPods, "ns", Pod("c")).ok());
  ASSERT_TRUE(client.Create(kPods, "other", Json{{"metadata", {{"name", "a"}}}}).ok());
  auto names = [&](const std::string& ns, const std::string& selector) {
    ListOptions o;
    o.field_selector = selector;
    auto list = client.List(kPods, ns, o);
    EXPECT_TRUE(list.ok()) << selector << ": " << list.status().ToString();
    return list.ok() ? Names(*list) : std::vector<std::string>{"<error>"};
  };
  using V = std::vector<std::string>;
  EXPECT_EQ(names("ns", "spec.nodeName=n1"), (V{"a"}));
  EXPECT_EQ(names("ns", "spec.nodeName!=n1"), (V{"b", "c"}));
  EXPECT_EQ(names("ns", "spec.nodeName="), (V{"c"}));  // unscheduled
  EXPECT_EQ(names("ns", "metadata.name=b"), (V{"b"}));
  EXPECT_EQ(names("", "metadata.name=a"), (V{"a", "a"}));
  EXPECT_EQ(names("", "metadata.namespace=other"), (V{"a"}));
  EXPECT_EQ(names("ns", "metadata.name=a,spec.nodeName=n2"), (V{}));

  ListOptions bad;
  bad.field_selector = "spec.whatever=x";
  EXPECT_EQ(client.List(kPods, "ns", bad).status().code(), StatusCode::kInvalidArgument);
  bad.field_selector = "spec.nodeName=x";
  EXPECT_EQ(client.List(kServices, "ns", bad).status().code(), StatusCode::kInvalidArgument);
}

TEST(FakeKubeClientTest, ListShapeAndPagination) {
  FakeKubeClient client;
  for (const char* n : {"a", "b", "c"}) ASSERT_TRUE(client.Create(kPods, "ns", Pod(n)).ok());
  auto list = client.List(kPods, "ns");
  ASSERT_TRUE(list.ok());
  EXPECT_EQ((*list)["kind"], "PodList");
  EXPECT_EQ(Rv(*list), "3");
  // Built-in types' list items carry no apiVersion/kind, as from the real server.
  EXPECT_FALSE((*list)["items"][0].contains("kind"));

  ListOptions page;
  page.limit = 2;
  auto first = client.List(kPods, "ns", page);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(Names(*first), (std::vector<std::string>{"a", "b"}));
  page.continue_token = JsonGet<std::string>(*first, "/metadata/continue", "");
  ASSERT_FALSE(page.continue_token.empty());
  auto second = client.List(kPods, "ns", page);
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(Names(*second), (std::vector<std::string>{"c"}));
  EXPECT_EQ(JsonGet<std::string>(*second, "/metadata/continue", ""), "");

  // Custom resources' items keep them.
  ASSERT_TRUE(client.Create(kInferencePools, "ns", Json{{"metadata", {{"name", "p"}}}}).ok());
  auto pools = client.List(kInferencePools, "ns");
  ASSERT_TRUE(pools.ok());
  EXPECT_EQ((*pools)["items"][0]["kind"], "InferencePool");
}

TEST(FakeKubeClientTest, MergeAndJsonPatch) {
  FakeKubeClient client;
  auto created = client.Create(kPods, "ns", Pod("a", {{"app", "web"}}));
  ASSERT_TRUE(created.ok());

  auto merged = client.Patch(kPods, "ns", "a", PatchType::kMerge,
                             Json{{"metadata", {{"labels", {{"app", nullptr}, {"x", "1"}}}}}});
  ASSERT_TRUE(merged.ok()) << merged.status().ToString();
  EXPECT_FALSE((*merged)["metadata"]["labels"].contains("app"));
  EXPECT_EQ((*merged)["metadata"]["labels"]["x"], "1");

  auto patched =
      client.Patch(kPods, "ns", "a", PatchType::kJson,
                   Json::array({{{"op", "test"}, {"path", "/metadata/labels/x"}, {"value", "1"}},
                                {{"op", "replace"}, {"path", "/metadata/labels/x"}, {"value", "2"}},
                                {{"op", "add"}, {"path", "/spec/nodeName"}, {"value", "n1"}}}));
  ASSERT_TRUE(patched.ok()) << patched.status().ToString();
  EXPECT_EQ((*patched)["metadata"]["labels"]["x"], "2");
  EXPECT_EQ(JsonGet<int64_t>(*patched, "/metadata/generation", 0), 2);

  auto failed_test =
      client.Patch(kPods, "ns", "a", PatchType::kJson,
                   Json::array({{{"op", "test"}, {"path", "/metadata/labels/x"}, {"value", "1"}},
                                {{"op", "remove"}, {"path", "/spec/nodeName"}}}));
  EXPECT_EQ(failed_test.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ((*client.Get(kPods, "ns", "a"))["spec"]["nodeName"], "n1");

  // A resourceVersion in the patch is a precondition.
  auto stale = client.Patch(kPods, "ns", "a", PatchType::kMerge,
                            Json{{"metadata", {{"resourceVersion", Rv(*created)}}}});
  EXPECT_TRUE(stale.status().IsConflict());

  EXPECT_TRUE(
      client.Patch(kPods, "ns", "nope", PatchType::kMerge, Json::object()).status().IsNotFound());
}

TEST(FakeKubeClientTest, PatchRespectsStatusSubresource) {
  FakeKubeClient client;
  ASSERT_TRUE(client.Create(kPods, "ns", Pod("a")).ok());
  auto main =
      client.Patch(kPods, "ns", "a", PatchType::kMerge, Json{{"status", {{"phase", "Running"}}}});
  ASSERT_TRUE(main.ok());
  EXPECT_FALSE(main->contains("status"));
  PatchOptions status_opts;
  status_opts.subresource = "status";
  auto status = client.Patch(
      kPods, "ns", "a", PatchType::kMerge,
      Json{{"status", {{"phase", "Running"}}}, {"spec", {{"nodeName", "ignored"}}}}, status_opts);
  ASSERT_TRUE(status.ok());
  EXPECT_EQ((*status)["status"]["phase"], "Running");
  EXPECT_FALSE((*status)["spec"].contains("nodeName"));
}

TEST(FakeKubeClientTest, ApplyPatchCreatesMissingObject) {
  FakeKubeClient client;
  auto applied = client.Patch(kServices, "ns", "svc", PatchType::kApply,
                              Json{{"spec", {{"type", "ClusterIP"}}}});
  ASSERT_TRUE(applied.ok()) << applied.status().ToString();
  EXPECT_EQ((*client.Get(kServices, "ns", "svc"))["spec"]["type"], "ClusterIP");
}

TEST(FakeKubeClientTest, WatchReplaysEventsAfterResourceVersion) {
  FakeKubeClient client;
  auto a = client.Create(kPods, "ns", Pod("a"));
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE(client.Create(kPods, "ns", Pod("b")).ok());
  ASSERT_TRUE(client.Create(kServices, "ns", Json{{"metadata", {{"name", "s"}}}}).ok());
  ASSERT_TRUE(client.Delete(kPods, "ns", "a").ok());

  WatchOptions opts;
  opts.resource_version = Rv(*a);
  WatchRecorder w(client, kPods, opts);
  ASSERT_TRUE(w.WaitForEvents(2));
  // Live events follow the replay.
  ASSERT_TRUE(client.Create(kPods, "ns", Pod("c")).ok());
  ASSERT_TRUE(w.WaitForEvents(3));
  client.CloseWatches();
  auto result = w.Result();
  ASSERT_TRUE(result.has_value());
  EXPECT_TRUE(result->ok()) << result->ToString();
  EXPECT_EQ(w.Summary(), (std::vector<std::string>{"ADDED b", "DELETED a", "ADDED c"}));
  auto events = w.Events();
  EXPECT_EQ(Rv(events[1].object), "4");  // DELETED carries the deletion's version
  EXPECT_EQ(events[2].object["kind"], "Pod");
}

TEST(FakeKubeClientTest, WatchFromEmptyVersionStartsWithCurrentState) {
  FakeKubeClient client;
  ASSERT_TRUE(client.Create(kPods, "ns", Pod("a")).ok());
  ASSERT_TRUE(client.Create(kPods, "other", Json{{"metadata", {{"name", "x"}}}}).ok());
  WatchRecorder w(client, kPods, WatchOptions{});
  ASSERT_TRUE(w.WaitForEvents(1));
  client.CloseWatches();
  ASSERT_TRUE(w.Result().has_value());
  EXPECT_EQ(w.Summary(), (std::vector<std::string>{"ADDED a"}));
}

TEST(FakeKubeClientTest, WatchFromCompactedVersionIsGone) {
  FakeKubeClient client;
  auto a = client.Create(kPods, "ns", Pod("a"));
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE(client.Create(kPods, "ns", Pod("b")).ok());
  client.CompactHistory();
  WatchOptions opts;
  opts.resource_version = Rv(*a);
  Status s = client.Watch(
      kPods, "ns", opts, [](const WatchEvent&) { return true; }, nullptr);
  EXPECT_TRUE(s.IsGone()) << s.ToString();

  // From the current version it works, and sees new writes.
  opts.resource_version = std::to_string(client.CurrentResourceVersion());
  WatchRecorder w(client, kPods, opts);
  ASSERT_TRUE(client.Create(kPods, "ns", Pod("c")).ok());
  ASSERT_TRUE(w.WaitForEvents(1));
  EXPECT_EQ(w.Summary(), (std::vector<std::string>{"ADDED c"}));
}

TEST(FakeKubeClientTest, HistoryLimitMakesOldVersionsGone) {
  FakeKubeClient client;
  client.SetHistoryLimit(2);
  auto a = client.Create(kPods, "ns", Pod("a"));
  auto b = client.Create(kPods, "ns", Pod("b"));
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE(client.Create(kPods, "ns", Pod("c")).ok());
  ASSERT_TRUE(client.Create(kPods, "ns", Pod("d")).ok());
  WatchOptions opts;
  opts.resource_version = Rv(*a);  // needs b, c, d: b is gone
  EXPECT_TRUE(client
                  .Watch(
                      kPods, "ns", opts, [](const WatchEvent&) { return true; }, nullptr)
                  .IsGone());
  opts.resource_version = Rv(*b);  // needs c, d: retained
  std::vector<std::string> seen;
  Status s = client.Watch(
      kPods, "ns", opts,
      [&](const WatchEvent& ev) {
        seen.push_back(ev.object["metadata"]["name"]);
        return seen.size() < 2;  // stop after two
      },
      nullptr);
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(seen, (std::vector<std::string>{"c", "d"}));
}

TEST(FakeKubeClientTest, WatchWithSelectorSeesObjectsEnterAndLeave) {
  FakeKubeClient client;
  auto a = client.Create(kPods, "ns", Pod("a", {{"app", "web"}}));
  ASSERT_TRUE(a.ok());
  WatchOptions opts;
  opts.label_selector = "app=web";
  opts.resource_version = Rv(*a);
  WatchRecorder w(client, kPods, opts);
  ASSERT_TRUE(client.Create(kPods, "ns", Pod("b", {{"app", "db"}})).ok());
  auto moved = client.Patch(kPods, "ns", "a", PatchType::kMerge,
                            Json{{"metadata", {{"labels", {{"app", "db"}}}}}});
  ASSERT_TRUE(moved.ok());
  ASSERT_TRUE(client
                  .Patch(kPods, "ns", "b", PatchType::kMerge,
                         Json{{"metadata", {{"labels", {{"app", "web"}}}}}})
                  .ok());
  ASSERT_TRUE(client
                  .Patch(kPods, "ns", "b", PatchType::kMerge,
                         Json{{"metadata", {{"labels", {{"x", "1"}}}}}})
                  .ok());
  ASSERT_TRUE(w.WaitForEvents(3));
  client.CloseWatches();
  ASSERT_TRUE(w.Result().has_value());
  EXPECT_EQ(w.Summary(), (std::vector<std::string>{"DELETED a", "ADDED b", "MODIFIED b"}));
}

TEST(FakeKubeClientTest, BookmarksOnlyWhenAllowed) {
  FakeKubeClient client;
  WatchOptions with;
  with.resource_version = "0";
  WatchOptions without = with;
  without.allow_bookmarks = false;
  WatchRecorder w1(client, kPods, with);
  WatchRecorder w2(client, kPods, without);
  ASSERT_TRUE(client.WaitForWatches(2, kWait));
  ASSERT_TRUE(client.Create(kServices, "ns", Json{{"metadata", {{"name", "s"}}}}).ok());
  client.SendBookmark();
  ASSERT_TRUE(w1.WaitForEvents(1));
  client.CloseWatches();
  ASSERT_TRUE(w1.Result().has_value());
  ASSERT_TRUE(w2.Result().has_value());
  auto events = w1.Events();
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].type, "BOOKMARK");
  EXPECT_EQ(Rv(events[0].object), "1");
  EXPECT_TRUE(w2.Events().empty());
}

TEST(FakeKubeClientTest, CancelEndsWatch) {
  FakeKubeClient client;
  WatchRecorder w(client, kPods, WatchOptions{});
  ASSERT_TRUE(client.WaitForWatches(1, kWait));
  w.cancel().Cancel();
  auto result = w.Result();
  ASSERT_TRUE(result.has_value());
  EXPECT_EQ(result->code(), StatusCode::kCancelled);
  EXPECT_EQ(client.ActiveWatches(), 0);
}

TEST(FakeKubeClientTest, CloseWatchesDoesNotAffectLaterWatches) {
  FakeKubeClient client;
  client.CloseWatches();
  WatchRecorder w(client, kPods, WatchOptions{});
  ASSERT_TRUE(client.Create(kPods, "ns", Pod("a")).ok());
  ASSERT_TRUE(w.WaitForEvents(1));
  EXPECT_EQ(client.ActiveWatches(), 1);
}

TEST(FakeKubeClientTest, FailNextAndCallCounts) {
  FakeKubeClient client;
  client.FailNext("Create", Status::Unavailable("injected"), &kPods);
  EXPECT_EQ(client.Create(kPods, "ns", Pod("a")).status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(client.ObjectCount(kPods), 0u);
  EXPECT_TRUE(client.Create(kPods, "ns", Pod("a")).ok());  // consumed once
  client.FailNext("*", Status::Internal("any"));
  EXPECT_EQ(client.Get(kServices, "ns", "x").status().code(), StatusCode::kInternal);

  EXPECT_EQ(client.CallCount("Create", kPods), 2);
  EXPECT_EQ(client.CallCount("Get"), 1);
  EXPECT_EQ(client.WriteCount(kPods), 2);
  EXPECT_EQ(client.WriteCount(kServices), 0);
  client.ResetCallCounts();
  EXPECT_EQ(client.CallCount("Create"), 0);
}

TEST(FakeKubeClientTest, CallHookCanFailOrInterleaveWrites) {
  FakeKubeClient client;
  auto created = client.Create(kPods, "ns", Pod("a"));
  ASSERT_TRUE(created.ok());
  // A concurrent writer sneaks in before every Update: the caller always loses.
  client.SetCallHook([&](const FakeCall& call) {
    if (call.method == "Update") {
      auto cur = client.Get(kPods, call.ns, call.name);  // does not re-enter the hook
      Json bumped = *cur;
      bumped["metadata"]["annotations"]["bump"] = Rv(*cur);
      (void)client.Update(kPods, bumped);
    }
    if (call.method == "Delete") return Status::Unauthorized("no");
    return Status::Ok();
  });
  Json obj = *created;
  obj["metadata"]["labels"]["x"] = "1";
  EXPECT_TRUE(client.Update(kPods, obj).status().IsConflict());
  EXPECT_EQ(client.Delete(kPods, "ns", "a").code(), StatusCode::kUnauthorized);
  client.SetCallHook(nullptr);
  EXPECT_TRUE(client.Delete(kPods, "ns", "a").ok());
}

TEST(FakeKubeClientTest, UpsertKeepsStatus) {
  FakeKubeClient client;
  Json pod = Pod("a");
  pod["status"] = {{"phase", "Running"}};
  auto stored = client.Upsert(kPods, pod);
  ASSERT_TRUE(stored.ok());
  EXPECT_EQ((*client.Get(kPods, "ns", "a"))["status"]["phase"], "Running");
  pod["status"]["phase"] = "Failed";
  ASSERT_TRUE(client.Upsert(kPods, pod).ok());
  EXPECT_EQ((*client.Get(kPods, "ns", "a"))["status"]["phase"], "Failed");
  EXPECT_EQ(client.CallCount("Create"), 0);
}

TEST(CancelTokenTest, RegisterCancelUnregister) {
  CancelToken token;
  int a = 0, b = 0;
  int id_a = token.Register([&] { ++a; });
  int id_b = token.Register([&] { ++b; });
  token.Unregister(id_b);
  EXPECT_FALSE(token.cancelled());
  token.Cancel();
  token.Cancel();  // idempotent
  EXPECT_TRUE(token.cancelled());
  EXPECT_EQ(a, 1);
  EXPECT_EQ(b, 0);
  token.Unregister(id_a);  // harmless after the fact
  // Registering after Cancel runs at once.
  int c = 0;
  token.Register([&] { ++c; });
  EXPECT_EQ(c, 1);
}

}  // namespace
}  // namespace pdpool::kube
