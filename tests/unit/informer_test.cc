// Tests for Informer over FakeKubeClient: the cache a controller reads (initial list, watch
// updates, read-only snapshots, indices), handler calls with old/new objects, recovery after
// the API server forgets history (relist with deletes for what vanished), bookmarks, list
// retries and cancellation.
#include "common/kube/informer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "tests/fakes/fake_kube_client.h"

namespace pdpool::kube {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

// Deadline for conditions that should become true almost at once; only a hang reaches it.
constexpr auto kWait = seconds(10);

// Objects of a type nothing watches, so writes to it advance the global resourceVersion
// without the informer under test seeing an event.
const ResourceType kConfigMaps{"", "v1", "configmaps", "ConfigMap", true};

Json Pod(const std::string& name, Json labels = Json::object()) {
  return {{"apiVersion", "v1"},
          {"kind", "Pod"},
          {"metadata", {{"name", name}, {"namespace", "ns"}, {"labels", std::move(labels)}}},
          {"spec", {{"containers", Json::array({{{"name", "c"}, {"image", "img"}}})}}}};
}

std::string Name(const ObjectPtr& obj) {
  return obj ? JsonGet<std::string>(*obj, "/metadata/name", "") : "<null>";
}
std::string Label(const ObjectPtr& obj, const std::string& key) {
  return obj ? JsonGet<std::string>(*obj, ("/metadata/labels/" + key).c_str(), "") : "<null>";
}
std::string Rv(const Json& obj) {
  return JsonGet<std::string>(obj, "/metadata/resourceVersion", "");
}

std::set<std::string> Names(const std::vector<ObjectPtr>& objects) {
  std::set<std::string> names;
  for (const auto& o : objects) names.insert(Name(o));
  return names;
}

// What the handlers saw, in order.
struct HandlerCall {
  std::string kind;  // add, update, delete
  ObjectPtr old_obj;
  ObjectPtr new_obj;  // the object for add/delete
};

class HandlerLog {
 public:
  InformerHandler Handler() {
    return InformerHandler{
        [this](const ObjectPtr& o) {
          Push({"add", nullptr, o});
        },
        [this](const ObjectPtr& old_obj, const ObjectPtr& new_obj) {
          Push({"update", old_obj, new_obj});
        },
        [this](const ObjectPtr& o) {
          Push({"delete", nullptr, o});
        },
    };
  }

  // Waits until some call matches `pred`; returns it (kind empty on timeout).
  HandlerCall WaitFor(const std::function<bool(const HandlerCall&)>& pred) {
    std::unique_lock lock(mu_);
    HandlerCall found;
    cv_.wait_for(lock, kWait, [&] {
      for (const auto& c : calls_) {
        if (pred(c)) {
          found = c;
          return true;
        }
      }
      return false;
    });
    return found;
  }
  HandlerCall WaitFor(const std::string& kind, const std::string& name) {
    return WaitFor([&](const HandlerCall& c) { return c.kind == kind && Name(c.new_obj) == name; });
  }
  // Waits until at least `n` calls were made.
  bool WaitForCount(size_t n) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, kWait, [&] { return calls_.size() >= n; });
  }

  std::vector<HandlerCall> Calls() {
    std::lock_guard lock(mu_);
    return calls_;
  }
  std::vector<HandlerCall> CallsFor(const std::string& name) {
    std::vector<HandlerCall> out;
    for (const auto& c : Calls())
      if (Name(c.new_obj) == name) out.push_back(c);
    return out;
  }

 private:
  void Push(HandlerCall c) {
    std::lock_guard lock(mu_);
    calls_.push_back(std::move(c));
    cv_.notify_all();
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<HandlerCall> calls_;
};

// Runs Informer::Run on its own thread; cancels and joins on destruction.
class InformerRunner {
 public:
  explicit InformerRunner(Informer* informer)
      : done_(std::async(std::launch::async, [this, informer] { informer->Run(&cancel_); })) {}
  ~InformerRunner() { Stop(); }
  // Cancels; true when Run returned before the deadline.
  bool Stop() {
    cancel_.Cancel();
    return done_.wait_for(kWait) == std::future_status::ready;
  }

 private:
  CancelToken cancel_;
  std::future<void> done_;
};

// Forwards to the fake and records the resourceVersion every Watch starts from.
class WatchRecordingClient final : public KubeClient {
 public:
  explicit WatchRecordingClient(FakeKubeClient* fake) : fake_(fake) {}

  StatusOr<Json> Get(const ResourceType& t, std::string_view ns, std::string_view n) override {
    return fake_->Get(t, ns, n);
  }
  StatusOr<Json> List(const ResourceType& t, std::string_view ns, const ListOptions& o) override {
    return fake_->List(t, ns, o);
  }
  StatusOr<Json> Create(const ResourceType& t, std::string_view ns, const Json& obj) override {
    return fake_->Create(t, ns, obj);
  }
  StatusOr<Json> Update(const ResourceType& t, const Json& obj) override {
    return fake_->Update(t, obj);
  }
  StatusOr<Json> UpdateStatus(const ResourceType& t, const Json& obj) override {
    return fake_->UpdateStatus(t, obj);
  }
  StatusOr<Json> Patch(const ResourceType& t, std::string_view ns, std::string_view n, PatchType pt,
                       const Json& p, const PatchOptions& o) override {
    return fake_->Patch(t, ns, n, pt, p, o);
  }
  Status Delete(const ResourceType& t, std::string_view ns, std::string_view n,
                const DeleteOptions& o) override {
    return fake_->Delete(t, ns, n, o);
  }
  Status Watch(const ResourceType& t, std::string_view ns, const WatchOptions& o,
               const std::function<bool(const WatchEvent&)>& on_event,
               CancelToken* cancel) override {
    {
      std::lock_guard lock(mu_);
      watch_versions_.push_back(o.resource_version);
      cv_.notify_all();
    }
    return fake_->Watch(t, ns, o, on_event, cancel);
  }

  // Waits until at least `n` watches were started; returns the versions they started from.
  std::vector<std::string> WaitForWatchCalls(size_t n) {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, kWait, [&] { return watch_versions_.size() >= n; });
    return watch_versions_;
  }

 private:
  FakeKubeClient* fake_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::string> watch_versions_;
};

// Holds Watch calls (in the fake's call hook) while closed, so a test can change the server
// while the informer is between two watches, as if its connection were down. Install it after
// starting the informer's runner, so it is destroyed (and opened) before the runner joins.
class WatchGate {
 public:
  explicit WatchGate(FakeKubeClient* client) : client_(client), state_(std::make_shared<State>()) {
    client_->SetCallHook([state = state_](const FakeCall& call) {
      if (call.method != "Watch") return Status::Ok();
      std::unique_lock lock(state->mu);
      ++state->waiting;
      state->cv.notify_all();
      state->cv.wait(lock, [&] { return state->open; });
      --state->waiting;
      return Status::Ok();
    });
  }
  ~WatchGate() {
    Open();
    client_->SetCallHook({});
  }
  void Close() {
    std::lock_guard lock(state_->mu);
    state_->open = false;
  }
  void Open() {
    std::lock_guard lock(state_->mu);
    state_->open = true;
    state_->cv.notify_all();
  }
  bool WaitForBlockedWatch() {
    std::unique_lock lock(state_->mu);
    return state_->cv.wait_for(lock, kWait, [&] { return state_->waiting > 0; });
  }

 private:
  // Shared with the hook, which may still be returning when the gate is destroyed.
  struct State {
    std::mutex mu;
    std::condition_variable cv;
    bool open = true;
    int waiting = 0;
  };
  FakeKubeClient* client_;
  std::shared_ptr<State> state_;
};

InformerOptions FastOptions() {
  InformerOptions o;
  o.ns = "ns";
  o.initial_backoff = milliseconds(1);
  o.max_backoff = milliseconds(5);
  return o;
}

std::vector<std::string> AppIndex(const Json& obj) {
  std::string app = JsonGet<std::string>(obj, "/metadata/labels/app", "");
  if (app.empty()) return {};
  return {app};
}

TEST(InformerTest, ObjectKeyIsNamespaceSlashNameOrNameForClusterScoped) {
  EXPECT_EQ(ObjectKey(Pod("a")), "ns/a");
  EXPECT_EQ(ObjectKey(Json{{"metadata", {{"name", "node-1"}}}}), "node-1");
}

TEST(InformerTest, InitialListFillsCacheAndFiresAdds) {
  FakeKubeClient client;
  ASSERT_TRUE(client.Upsert(kPods, Pod("a", {{"app", "web"}})).ok());
  ASSERT_TRUE(client.Upsert(kPods, Pod("b")).ok());
  // Another namespace: outside this informer's scope.
  Json other = Pod("x");
  other["metadata"]["namespace"] = "other";
  ASSERT_TRUE(client.Upsert(kPods, other).ok());

  Informer informer(&client, kPods, FastOptions());
  HandlerLog log;
  informer.AddHandler(log.Handler());
  EXPECT_FALSE(informer.HasSynced());
  InformerRunner runner(&informer);

  ASSERT_TRUE(informer.WaitForSync(kWait));
  EXPECT_TRUE(informer.HasSynced());
  EXPECT_EQ(informer.Size(), 2u);
  // Once synced, the list that synced it is counted.
  EXPECT_EQ(informer.ListCount(), 1);
  EXPECT_EQ(Label(informer.Get("ns/a"), "app"), "web");
  EXPECT_NE(informer.Get("ns/b"), nullptr);
  EXPECT_EQ(informer.Get("other/x"), nullptr);
  EXPECT_EQ(Names(informer.List()), (std::set<std::string>{"a", "b"}));

  ASSERT_TRUE(log.WaitForCount(2));
  auto calls = log.Calls();
  ASSERT_EQ(calls.size(), 2u);
  for (const auto& c : calls) {
    EXPECT_EQ(c.kind, "add");
    EXPECT_EQ(c.old_obj, nullptr);
  }

  // Watch events for objects created after the list arrive as adds too.
  ASSERT_TRUE(client.WaitForWatches(1, kWait));
  ASSERT_TRUE(client.Upsert(kPods, Pod("c")).ok());
  EXPECT_EQ(log.WaitFor("add", "c").kind, "add");
  EXPECT_NE(informer.Get("ns/c"), nullptr);
  EXPECT_EQ(informer.Size(), 3u);
}

TEST(InformerTest, ClusterScopedObjectsAreKeyedByName) {
  FakeKubeClient client;
  ASSERT_TRUE(client.Upsert(kNodes, Json{{"metadata", {{"name", "node-1"}}}}).ok());
  InformerOptions o = FastOptions();
  o.ns = "";
  Informer informer(&client, kNodes, o);
  InformerRunner runner(&informer);
  ASSERT_TRUE(informer.WaitForSync(kWait));
  EXPECT_EQ(Name(informer.Get("node-1")), "node-1");
}

TEST(InformerTest, WatchEventsUpdateAndDeleteTheCacheAndHandlersGetOldAndNew) {
  FakeKubeClient client;
  ASSERT_TRUE(client.Upsert(kPods, Pod("a", {{"app", "v1"}})).ok());
  ASSERT_TRUE(client.Upsert(kPods, Pod("b")).ok());
  Informer informer(&client, kPods, FastOptions());
  HandlerLog log;
  informer.AddHandler(log.Handler());
  InformerRunner runner(&informer);
  ASSERT_TRUE(informer.WaitForSync(kWait));
  ASSERT_TRUE(client.WaitForWatches(1, kWait));

  ASSERT_TRUE(client.Upsert(kPods, Pod("a", {{"app", "v2"}})).ok());
  HandlerCall update = log.WaitFor("update", "a");
  ASSERT_EQ(update.kind, "update");
  EXPECT_EQ(Label(update.old_obj, "app"), "v1");
  EXPECT_EQ(Label(update.new_obj, "app"), "v2");
  // Handlers run after the cache is updated.
  EXPECT_EQ(informer.Get("ns/a"), update.new_obj);

  ObjectPtr b_before = informer.Get("ns/b");
  ASSERT_TRUE(client.Delete(kPods, "ns", "b").ok());
  HandlerCall del = log.WaitFor("delete", "b");
  ASSERT_EQ(del.kind, "delete");
  // The handler gets the last state the cache knew.
  EXPECT_EQ(del.new_obj, b_before);
  EXPECT_EQ(informer.Get("ns/b"), nullptr);
  EXPECT_EQ(informer.Size(), 1u);
  // b was reported twice in all: added by the list, then deleted.
  EXPECT_EQ(log.CallsFor("b").size(), 2u);
}

TEST(InformerTest, SnapshotsAreReadOnlyValuesUnaffectedByLaterUpdates) {
  static_assert(std::is_const_v<ObjectPtr::element_type>,
                "the cache must hand out read-only objects");
  FakeKubeClient client;
  ASSERT_TRUE(client.Upsert(kPods, Pod("a", {{"app", "v1"}})).ok());
  Informer informer(&client, kPods, FastOptions());
  HandlerLog log;
  informer.AddHandler(log.Handler());
  InformerRunner runner(&informer);
  ASSERT_TRUE(informer.WaitForSync(kWait));
  ASSERT_TRUE(client.WaitForWatches(1, kWait));

  ObjectPtr snapshot = informer.Get("ns/a");
  std::vector<ObjectPtr> listed = informer.List();
  const std::string rv_before = Rv(*snapshot);

  ASSERT_TRUE(client.Upsert(kPods, Pod("a", {{"app", "v2"}})).ok());
  ASSERT_EQ(log.WaitFor("update", "a").kind, "update");

  EXPECT_EQ(Label(snapshot, "app"), "v1");
  EXPECT_EQ(Rv(*snapshot), rv_before);
  ASSERT_EQ(listed.size(), 1u);
  EXPECT_EQ(Label(listed[0], "app"), "v1");
  EXPECT_EQ(Label(informer.Get("ns/a"), "app"), "v2");
}

TEST(InformerTest, IndexFollowsAddsUpdatesAndDeletes) {
  FakeKubeClient client;
  ASSERT_TRUE(client.Upsert(kPods, Pod("a", {{"app", "x"}})).ok());
  ASSERT_TRUE(client.Upsert(kPods, Pod("b", {{"app", "x"}})).ok());
  ASSERT_TRUE(client.Upsert(kPods, Pod("c", {{"app", "y"}})).ok());
  ASSERT_TRUE(client.Upsert(kPods, Pod("unlabelled")).ok());
  Informer informer(&client, kPods, FastOptions());
  informer.AddIndex("app", AppIndex);
  HandlerLog log;
  informer.AddHandler(log.Handler());
  InformerRunner runner(&informer);
  ASSERT_TRUE(informer.WaitForSync(kWait));
  ASSERT_TRUE(client.WaitForWatches(1, kWait));

  EXPECT_EQ(Names(informer.ByIndex("app", "x")), (std::set<std::string>{"a", "b"}));
  EXPECT_EQ(Names(informer.ByIndex("app", "y")), (std::set<std::string>{"c"}));
  EXPECT_TRUE(informer.ByIndex("app", "z").empty());
  EXPECT_TRUE(informer.ByIndex("no-such-index", "x").empty());

  // a moves from x to y.
  ASSERT_TRUE(client.Upsert(kPods, Pod("a", {{"app", "y"}})).ok());
  ASSERT_EQ(log.WaitFor("update", "a").kind, "update");
  EXPECT_EQ(Names(informer.ByIndex("app", "x")), (std::set<std::string>{"b"}));
  EXPECT_EQ(Names(informer.ByIndex("app", "y")), (std::set<std::string>{"a", "c"}));
  // The index hands out the current object, not the one it was filed with.
  for (const auto& o : informer.ByIndex("app", "y")) EXPECT_EQ(Label(o, "app"), "y");

  // Losing the label takes it out of every bucket.
  ASSERT_TRUE(client.Upsert(kPods, Pod("c")).ok());
  ASSERT_EQ(
      log.WaitFor([](const HandlerCall& c) { return c.kind == "update" && Name(c.new_obj) == "c"; })
          .kind,
      "update");
  EXPECT_EQ(Names(informer.ByIndex("app", "y")), (std::set<std::string>{"a"}));

  ASSERT_TRUE(client.Delete(kPods, "ns", "b").ok());
  ASSERT_EQ(log.WaitFor("delete", "b").kind, "delete");
  EXPECT_TRUE(informer.ByIndex("app", "x").empty());

  ASSERT_TRUE(client.Upsert(kPods, Pod("d", {{"app", "x"}})).ok());
  ASSERT_EQ(log.WaitFor("add", "d").kind, "add");
  EXPECT_EQ(Names(informer.ByIndex("app", "x")), (std::set<std::string>{"d"}));
}

TEST(InformerTest, RelistsAfterGoneAndEmitsDeletesForObjectsThatVanishedMeanwhile) {
  FakeKubeClient client;
  ASSERT_TRUE(client.Upsert(kPods, Pod("a", {{"app", "v1"}})).ok());
  ASSERT_TRUE(client.Upsert(kPods, Pod("b", {{"app", "x"}})).ok());
  ASSERT_TRUE(client.Upsert(kPods, Pod("unchanged")).ok());
  Informer informer(&client, kPods, FastOptions());
  informer.AddIndex("app", AppIndex);
  HandlerLog log;
  informer.AddHandler(log.Handler());
  InformerRunner runner(&informer);
  WatchGate gate(&client);
  ASSERT_TRUE(informer.WaitForSync(kWait));
  ASSERT_TRUE(client.WaitForWatches(1, kWait));
  ASSERT_TRUE(log.WaitForCount(3));
  ASSERT_EQ(informer.ListCount(), 1);

  // The stream drops and the informer cannot reconnect while the world changes and the
  // server compacts its history past the informer's version.
  gate.Close();
  client.CloseWatches();
  ASSERT_TRUE(gate.WaitForBlockedWatch());
  ASSERT_TRUE(client.Delete(kPods, "ns", "b").ok());
  ASSERT_TRUE(client.Upsert(kPods, Pod("a", {{"app", "v2"}})).ok());
  ASSERT_TRUE(client.Upsert(kPods, Pod("new")).ok());
  client.CompactHistory();
  gate.Open();

  HandlerCall deleted = log.WaitFor("delete", "b");
  ASSERT_EQ(deleted.kind, "delete") << "the vanished object was never reported deleted";
  EXPECT_EQ(Label(deleted.new_obj, "app"), "x");
  HandlerCall updated = log.WaitFor("update", "a");
  ASSERT_EQ(updated.kind, "update");
  EXPECT_EQ(Label(updated.old_obj, "app"), "v1");
  EXPECT_EQ(Label(updated.new_obj, "app"), "v2");
  EXPECT_EQ(log.WaitFor("add", "new").kind, "add");

  EXPECT_EQ(informer.ListCount(), 2);
  EXPECT_EQ(Names(informer.List()), (std::set<std::string>{"a", "new", "unchanged"}));
  EXPECT_EQ(informer.Get("ns/b"), nullptr);
  EXPECT_TRUE(informer.ByIndex("app", "x").empty());
  EXPECT_EQ(Names(informer.ByIndex("app", "v2")), (std::set<std::string>{"a"}));
  // An object whose version did not change is not reported again.
  EXPECT_EQ(log.CallsFor("unchanged").size(), 1u);

  // And it watches again from the new list: later changes still arrive.
  ASSERT_TRUE(client.WaitForWatches(1, kWait));
  ASSERT_TRUE(client.Delete(kPods, "ns", "new").ok());
  EXPECT_EQ(log.WaitFor("delete", "new").kind, "delete");
  EXPECT_EQ(informer.ListCount(), 2);
}

TEST(InformerTest, BookmarkAdvancesTheVersionTheNextWatchResumesFrom) {
  FakeKubeClient fake;
  WatchRecordingClient client(&fake);
  ASSERT_TRUE(fake.Upsert(kPods, Pod("a")).ok());
  Informer informer(&client, kPods, FastOptions());
  HandlerLog log;
  informer.AddHandler(log.Handler());
  InformerRunner runner(&informer);
  ASSERT_TRUE(informer.WaitForSync(kWait));
  ASSERT_TRUE(fake.WaitForWatches(1, kWait));
  std::vector<std::string> first = client.WaitForWatchCalls(1);
  ASSERT_EQ(first.size(), 1u);
  const std::string listed_rv = std::to_string(fake.CurrentResourceVersion());
  EXPECT_EQ(first[0], listed_rv) << "the first watch starts from the list's resourceVersion";

  // Writes to other types move the server's version on; this watch sees no event for them,
  // only the bookmark.
  ASSERT_TRUE(
      fake.Upsert(kConfigMaps, Json{{"metadata", {{"name", "cm"}, {"namespace", "ns"}}}}).ok());
  ASSERT_TRUE(
      fake.Upsert(kConfigMaps, Json{{"metadata", {{"name", "cm2"}, {"namespace", "ns"}}}}).ok());
  const std::string bookmark_rv = std::to_string(fake.CurrentResourceVersion());
  ASSERT_NE(bookmark_rv, listed_rv);
  fake.SendBookmark();
  // History before the bookmark is gone: only a watch from the bookmark's version survives.
  fake.CompactHistory();
  fake.CloseWatches();

  std::vector<std::string> calls = client.WaitForWatchCalls(2);
  ASSERT_GE(calls.size(), 2u);
  EXPECT_EQ(calls[1], bookmark_rv);

  // No relist was needed: a new object arrives through the resumed watch.
  ASSERT_TRUE(fake.Upsert(kPods, Pod("b")).ok());
  ASSERT_EQ(log.WaitFor("add", "b").kind, "add");
  EXPECT_EQ(informer.ListCount(), 1);
  EXPECT_EQ(fake.CallCount("List", kPods), 1);
}

TEST(InformerTest, StreamClosedByServerResumesWithoutRelisting) {
  FakeKubeClient fake;
  WatchRecordingClient client(&fake);
  ASSERT_TRUE(fake.Upsert(kPods, Pod("a")).ok());
  Informer informer(&client, kPods, FastOptions());
  HandlerLog log;
  informer.AddHandler(log.Handler());
  InformerRunner runner(&informer);
  ASSERT_TRUE(informer.WaitForSync(kWait));
  ASSERT_TRUE(fake.WaitForWatches(1, kWait));

  auto updated = fake.Upsert(kPods, Pod("a", {{"app", "v2"}}));
  ASSERT_TRUE(updated.ok());
  ASSERT_EQ(log.WaitFor("update", "a").kind, "update");
  fake.CloseWatches();

  std::vector<std::string> calls = client.WaitForWatchCalls(2);
  ASSERT_GE(calls.size(), 2u);
  EXPECT_EQ(calls[1], Rv(*updated)) << "resumes after the last event it saw";
  ASSERT_TRUE(fake.Upsert(kPods, Pod("b")).ok());
  ASSERT_EQ(log.WaitFor("add", "b").kind, "add");
  EXPECT_EQ(informer.ListCount(), 1);
}

TEST(InformerTest, ListErrorsAreRetriedAndTheCacheSyncsAfterwards) {
  FakeKubeClient client;
  ASSERT_TRUE(client.Upsert(kPods, Pod("a")).ok());
  ASSERT_TRUE(client.Upsert(kPods, Pod("b")).ok());
  client.FailNext("List", Status::Unavailable("etcd is down"), &kPods);
  client.FailNext("List", Status::Unavailable("etcd is down"), &kPods);
  Informer informer(&client, kPods, FastOptions());
  HandlerLog log;
  informer.AddHandler(log.Handler());
  InformerRunner runner(&informer);

  ASSERT_TRUE(informer.WaitForSync(kWait));
  EXPECT_EQ(client.CallCount("List", kPods), 3);
  EXPECT_EQ(Names(informer.List()), (std::set<std::string>{"a", "b"}));
  ASSERT_TRUE(log.WaitForCount(2));
  EXPECT_EQ(log.Calls().size(), 2u) << "failed lists fire no handlers";
  // Handlers run after the list is counted.
  EXPECT_EQ(informer.ListCount(), 1) << "only successful lists count";
}

TEST(InformerTest, WatchErrorsAreRetriedWithoutRelisting) {
  FakeKubeClient client;
  ASSERT_TRUE(client.Upsert(kPods, Pod("a")).ok());
  client.FailNext("Watch", Status::Unavailable("connection reset"), &kPods);
  Informer informer(&client, kPods, FastOptions());
  HandlerLog log;
  informer.AddHandler(log.Handler());
  InformerRunner runner(&informer);
  ASSERT_TRUE(informer.WaitForSync(kWait));
  ASSERT_TRUE(client.WaitForWatches(1, kWait));
  EXPECT_EQ(client.CallCount("Watch", kPods), 2);
  ASSERT_TRUE(client.Upsert(kPods, Pod("b")).ok());
  ASSERT_EQ(log.WaitFor("add", "b").kind, "add");
  EXPECT_EQ(informer.ListCount(), 1);
}

TEST(InformerTest, WaitForSyncFailsWhileListsKeepFailingAndOnCancel) {
  FakeKubeClient client;
  client.SetCallHook([](const FakeCall& call) {
    return call.method == "List" ? Status::Unavailable("down") : Status::Ok();
  });
  Informer informer(&client, kPods, FastOptions());
  InformerRunner runner(&informer);
  EXPECT_FALSE(informer.WaitForSync(milliseconds(50)));
  EXPECT_FALSE(informer.HasSynced());
  CancelToken cancelled;
  cancelled.Cancel();
  EXPECT_FALSE(informer.WaitForSync(std::chrono::hours(1), &cancelled));
}

TEST(InformerTest, RunReturnsPromptlyOnCancelWhileWatching) {
  FakeKubeClient client;
  ASSERT_TRUE(client.Upsert(kPods, Pod("a")).ok());
  Informer informer(&client, kPods, FastOptions());
  InformerRunner runner(&informer);
  ASSERT_TRUE(informer.WaitForSync(kWait));
  ASSERT_TRUE(client.WaitForWatches(1, kWait));
  EXPECT_TRUE(runner.Stop());
  EXPECT_EQ(client.ActiveWatches(), 0);
}

TEST(InformerTest, RunReturnsPromptlyOnCancelDuringBackoff) {
  FakeKubeClient client;
  std::mutex mu;
  std::condition_variable cv;
  int lists = 0;
  client.SetCallHook([&](const FakeCall& call) {
    if (call.method != "List") return Status::Ok();
    std::lock_guard lock(mu);
    ++lists;
    cv.notify_all();
    return Status::Unavailable("down");
  });
  InformerOptions o = FastOptions();
  o.initial_backoff = std::chrono::hours(1);
  o.max_backoff = std::chrono::hours(1);
  Informer informer(&client, kPods, o);
  InformerRunner runner(&informer);
  {
    std::unique_lock lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, kWait, [&] { return lists > 0; }));
  }
  // The informer now sleeps an hour before retrying; cancel must cut that short.
  EXPECT_TRUE(runner.Stop());
  EXPECT_EQ(client.CallCount("List", kPods), 1);
}

}  // namespace
}  // namespace pdpool::kube
