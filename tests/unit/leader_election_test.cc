// Tests for LeaderElector: two candidates on one FakeKubeClient and a FakeClock. One leads;
// the other takes over only after the lease expires (by its own observation), at once after a
// release; Conflicts are retried; a leader that cannot renew stops before anyone can take over.
#include "common/kube/leader_election.h"

#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <future>
#include <mutex>
#include <string>
#include <vector>

#include "tests/fakes/fake_kube_client.h"

namespace pdpool::kube {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr auto kWait = seconds(10);

// A flag with a condition variable, set from callbacks on other threads.
class Flag {
 public:
  void Set() {
    std::lock_guard lock(mu_);
    set_ = true;
    cv_.notify_all();
  }
  bool WaitSet() {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, kWait, [&] { return set_; });
  }
  bool IsSet() {
    std::lock_guard lock(mu_);
    return set_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool set_ = false;
};

// Cancels a token when the test leaves the scope, also on a failed ASSERT, so a Run thread
// still blocked in it ends and the future's destructor does not hang.
class CancelOnExit {
 public:
  explicit CancelOnExit(CancelToken& token) : token_(token) {}
  ~CancelOnExit() { token_.Cancel(); }

 private:
  CancelToken& token_;
};

LeaderElectionConfig Config(const std::string& identity) {
  LeaderElectionConfig c;
  c.identity = identity;
  c.lease_namespace = "pdpool-system";
  c.lease_name = "pdpool-controller";
  c.retry_jitter = 0;  // deterministic on FakeClock
  return c;
}

std::unique_ptr<LeaderElector> MakeElector(LeaderElectionConfig config, KubeClient* client,
                                           Clock* clock) {
  auto e = LeaderElector::Create(std::move(config), client, clock);
  EXPECT_TRUE(e.ok()) << e.status().ToString();
  return e.ok() ? std::move(*e) : nullptr;
}

Json Lease(FakeKubeClient& client) {
  auto lease = client.Get(kLeases, "pdpool-system", "pdpool-controller");
  EXPECT_TRUE(lease.ok()) << lease.status().ToString();
  return lease.ok() ? *lease : Json();
}

std::string Holder(FakeKubeClient& client) {
  return JsonGet<std::string>(Lease(client), "/spec/holderIdentity", "<none>");
}

TEST(LeaderElectionTest, RejectsBadConfig) {
  FakeClock clock;
  FakeKubeClient client(&clock);
  auto cfg = Config("");
  EXPECT_EQ(LeaderElector::Create(cfg, &client, &clock).status().code(),
            StatusCode::kInvalidArgument);
  cfg = Config("a");
  cfg.renew_deadline = cfg.lease_duration;
  EXPECT_EQ(LeaderElector::Create(cfg, &client, &clock).status().code(),
            StatusCode::kInvalidArgument);
  cfg = Config("a");
  cfg.retry_period = cfg.renew_deadline;
  EXPECT_EQ(LeaderElector::Create(cfg, &client, &clock).status().code(),
            StatusCode::kInvalidArgument);
  cfg = Config("a");
  cfg.lease_name.clear();
  EXPECT_EQ(LeaderElector::Create(cfg, &client, &clock).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(LeaderElectionTest, OneOfTwoCandidatesLeads) {
  FakeClock clock;
  FakeKubeClient client(&clock);
  std::vector<std::string> b_saw;
  auto b_cfg = Config("b");
  b_cfg.on_new_leader = [&](const std::string& id) { b_saw.push_back(id); };
  auto a = MakeElector(Config("a"), &client, &clock);
  auto b = MakeElector(b_cfg, &client, &clock);
  ASSERT_TRUE(a && b);

  EXPECT_TRUE(a->TryAcquireOrRenew());
  EXPECT_FALSE(b->TryAcquireOrRenew());
  EXPECT_TRUE(a->IsLeader());
  EXPECT_FALSE(b->IsLeader());
  EXPECT_EQ(b->GetLeader(), "a");
  EXPECT_EQ(b_saw, (std::vector<std::string>{"a"}));

  Json lease = Lease(client);
  EXPECT_EQ(lease["spec"]["holderIdentity"], "a");
  EXPECT_EQ(lease["spec"]["leaseDurationSeconds"], 15);
  EXPECT_EQ(lease["spec"]["leaseTransitions"], 0);
  const std::string renew = lease["spec"]["renewTime"];
  EXPECT_EQ(renew, FormatRfc3339Micro(clock.WallNow()));  // MicroTime: ".ffffffZ"
  WallTime parsed;
  EXPECT_TRUE(ParseRfc3339(renew, &parsed));

  // Renewing keeps acquireTime and moves renewTime.
  clock.Advance(seconds(2));
  EXPECT_TRUE(a->TryAcquireOrRenew());
  lease = Lease(client);
  EXPECT_EQ(lease["spec"]["acquireTime"], renew);
  EXPECT_EQ(lease["spec"]["renewTime"], FormatRfc3339Micro(clock.WallNow()));
}

TEST(LeaderElectionTest, SecondTakesOverOnlyAfterExpiry) {
  FakeClock clock;
  FakeKubeClient client(&clock);
  auto a = MakeElector(Config("a"), &client, &clock);
  auto b = MakeElector(Config("b"), &client, &clock);
  ASSERT_TRUE(a && b);
  ASSERT_TRUE(a->TryAcquireOrRenew());
  EXPECT_FALSE(b->TryAcquireOrRenew());  // b first sees the record now

  // While a renews, b never gets it, however long it waits.
  for (int i = 0; i < 10; ++i) {
    clock.Advance(seconds(5));
    ASSERT_TRUE(a->TryAcquireOrRenew());
    ASSERT_FALSE(b->TryAcquireOrRenew());
  }
  // a stops renewing (dies). Not before 15 s of b's own observation...
  clock.Advance(seconds(14));
  EXPECT_FALSE(b->TryAcquireOrRenew());
  EXPECT_FALSE(a->IsLeader());  // 14 s > renew deadline: a no longer claims leadership
  clock.Advance(seconds(1));
  EXPECT_TRUE(b->TryAcquireOrRenew());
  EXPECT_TRUE(b->IsLeader());
  Json lease = Lease(client);
  EXPECT_EQ(lease["spec"]["holderIdentity"], "b");
  EXPECT_EQ(lease["spec"]["leaseTransitions"], 1);
  EXPECT_EQ(lease["spec"]["acquireTime"], FormatRfc3339Micro(clock.WallNow()));

  // a comes back: the lease is b's and fresh.
  EXPECT_FALSE(a->TryAcquireOrRenew());
  EXPECT_FALSE(a->IsLeader());
  EXPECT_EQ(a->GetLeader(), "b");
}

// The remote renewTime is never trusted for expiry: only how long *we* have seen the record
// unchanged. A stale-looking renewTime (skewed or dead holder) does not allow an instant
// takeover, and a future one does not delay it.
TEST(LeaderElectionTest, ExpiryIsJudgedByLocalObservation) {
  FakeClock clock;
  FakeKubeClient client(&clock);
  auto write_lease = [&](const std::string& holder, WallTime renew) {
    Json lease = {{"metadata", {{"name", "pdpool-controller"}, {"namespace", "pdpool-system"}}},
                  {"spec",
                   {{"holderIdentity", holder},
                    {"leaseDurationSeconds", 15},
                    {"renewTime", FormatRfc3339Micro(renew)},
                    {"acquireTime", FormatRfc3339Micro(renew)},
                    {"leaseTransitions", 3}}}};
    ASSERT_TRUE(client.Upsert(kLeases, lease).ok());
  };
  auto b = MakeElector(Config("b"), &client, &clock);
  ASSERT_TRUE(b);

  write_lease("old", clock.WallNow() - std::chrono::hours(1));
  EXPECT_FALSE(b->TryAcquireOrRenew());
  clock.Advance(seconds(14));
  EXPECT_FALSE(b->TryAcquireOrRenew());
  clock.Advance(seconds(1));
  EXPECT_TRUE(b->TryAcquireOrRenew());
  EXPECT_EQ(Lease(client)["spec"]["leaseTransitions"], 4);

  auto c = MakeElector(Config("c"), &client, &clock);
  ASSERT_TRUE(c);
  write_lease("skewed", clock.WallNow() + std::chrono::hours(1));
  EXPECT_FALSE(c->TryAcquireOrRenew());
  clock.Advance(seconds(15));
  EXPECT_TRUE(c->TryAcquireOrRenew());
}

TEST(LeaderElectionTest, ConflictFailsTheAttemptAndTheNextOneSucceeds) {
  FakeClock clock;
  FakeKubeClient client(&clock);
  auto a = MakeElector(Config("a"), &client, &clock);
  ASSERT_TRUE(a);
  ASSERT_TRUE(a->TryAcquireOrRenew());

  // Someone writes the lease between a's Get and a's Update (once).
  bool interfere = true;
  client.SetCallHook([&](const FakeCall& call) {
    if (call.method == "Update" && call.type == &kLeases && interfere) {
      interfere = false;
      auto cur = client.Get(kLeases, call.ns, call.name);
      if (cur.ok()) {
        Json j = *cur;
        j["metadata"]["annotations"]["touched"] = "yes";
        (void)client.Update(kLeases, j);
      }
    }
    return Status::Ok();
  });
  clock.Advance(seconds(2));
  const int64_t rv_before = client.CurrentResourceVersion();
  EXPECT_FALSE(a->TryAcquireOrRenew());
  EXPECT_EQ(client.CurrentResourceVersion(), rv_before + 1);  // only the interfering write
  EXPECT_EQ(a->GetLeader(), "a");
  clock.Advance(seconds(2));
  EXPECT_TRUE(a->TryAcquireOrRenew());
  EXPECT_EQ(Lease(client)["spec"]["renewTime"], FormatRfc3339Micro(clock.WallNow()));
}

TEST(LeaderElectionTest, RaceToCreateHasOneWinner) {
  FakeClock clock;
  FakeKubeClient client(&clock);
  auto a = MakeElector(Config("a"), &client, &clock);
  auto b = MakeElector(Config("b"), &client, &clock);
  ASSERT_TRUE(a && b);
  // b saw no lease; a creates it just before b's Create lands.
  client.SetCallHook([&](const FakeCall& call) {
    if (call.method == "Create" && call.body != nullptr &&
        JsonGet<std::string>(*call.body, "/spec/holderIdentity", "") == "b") {
      EXPECT_TRUE(a->TryAcquireOrRenew());
    }
    return Status::Ok();
  });
  EXPECT_FALSE(b->TryAcquireOrRenew());
  EXPECT_EQ(Holder(client), "a");
  EXPECT_TRUE(a->IsLeader());
  EXPECT_FALSE(b->IsLeader());
}

TEST(LeaderElectionTest, ApiErrorsFailTheAttemptWithoutWriting) {
  FakeClock clock;
  FakeKubeClient client(&clock);
  auto a = MakeElector(Config("a"), &client, &clock);
  ASSERT_TRUE(a);
  client.FailNext("Get", Status::Unavailable("apiserver down"), &kLeases);
  EXPECT_FALSE(a->TryAcquireOrRenew());
  EXPECT_EQ(client.WriteCount(kLeases), 0);
  EXPECT_TRUE(a->TryAcquireOrRenew());
}

// Run: a leads; b waits; a shuts down cleanly and releases; b takes over after one retry
// period, not a whole lease duration.
TEST(LeaderElectionTest, ReleaseOnShutdownHandsOverAtOnce) {
  FakeClock clock;
  FakeKubeClient client(&clock);
  Flag a_started, a_stopped, b_started, b_saw_a;
  auto a_cfg = Config("a");
  a_cfg.clock_poll_interval = milliseconds(1);
  a_cfg.on_started_leading = [&] { a_started.Set(); };
  a_cfg.on_stopped_leading = [&] { a_stopped.Set(); };
  auto b_cfg = Config("b");
  b_cfg.clock_poll_interval = milliseconds(1);
  b_cfg.on_started_leading = [&] { b_started.Set(); };
  b_cfg.on_new_leader = [&](const std::string& id) {
    if (id == "a") b_saw_a.Set();
  };
  auto a = MakeElector(a_cfg, &client, &clock);
  auto b = MakeElector(b_cfg, &client, &clock);
  ASSERT_TRUE(a && b);

  CancelToken a_cancel, b_cancel;
  auto a_run = std::async(std::launch::async, [&] { return a->Run(&a_cancel); });
  CancelOnExit a_guard(a_cancel);
  ASSERT_TRUE(a_started.WaitSet());
  auto b_run = std::async(std::launch::async, [&] { return b->Run(&b_cancel); });
  CancelOnExit b_guard(b_cancel);
  ASSERT_TRUE(b_saw_a.WaitSet());
  EXPECT_FALSE(b_started.IsSet());

  a_cancel.Cancel();
  ASSERT_EQ(a_run.wait_for(kWait), std::future_status::ready);
  EXPECT_TRUE(a_run.get().ok());
  EXPECT_TRUE(a_stopped.IsSet());
  Json lease = Lease(client);
  EXPECT_EQ(lease["spec"]["holderIdentity"], "");
  EXPECT_EQ(lease["spec"]["leaseDurationSeconds"], 1);

  clock.Advance(seconds(2));  // one retry period, far less than the 15 s lease duration
  ASSERT_TRUE(b_started.WaitSet());
  EXPECT_EQ(Holder(client), "b");
  EXPECT_EQ(Lease(client)["spec"]["leaseTransitions"], 1);

  b_cancel.Cancel();
  ASSERT_EQ(b_run.wait_for(kWait), std::future_status::ready);
  EXPECT_TRUE(b_run.get().ok());
}

TEST(LeaderElectionTest, CancelBeforeLeadingReturnsWithoutCallbacks) {
  FakeClock clock;
  FakeKubeClient client(&clock);
  auto holder = MakeElector(Config("holder"), &client, &clock);
  ASSERT_TRUE(holder && holder->TryAcquireOrRenew());
  Flag started, stopped;
  auto cfg = Config("b");
  cfg.on_started_leading = [&] { started.Set(); };
  cfg.on_stopped_leading = [&] { stopped.Set(); };
  auto b = MakeElector(cfg, &client, &clock);
  ASSERT_TRUE(b);
  CancelToken cancel;
  auto run = std::async(std::launch::async, [&] { return b->Run(&cancel); });
  CancelOnExit guard(cancel);
  cancel.Cancel();
  ASSERT_EQ(run.wait_for(kWait), std::future_status::ready);
  EXPECT_TRUE(run.get().ok());
  EXPECT_FALSE(started.IsSet());
  EXPECT_FALSE(stopped.IsSet());
  EXPECT_EQ(Holder(client), "holder");
}

// A leader whose renewals fail gives up within renew_deadline (10 s), while the lease is
// still unexpired for everyone else (15 s): there is never a moment with two leaders.
TEST(LeaderElectionTest, LeaderThatCannotRenewStopsBeforeOthersMayTakeOver) {
  FakeClock clock;
  FakeKubeClient client(&clock);
  // One lock for both facts the test waits on, so either wakes it.
  std::mutex mu;
  std::condition_variable cv;
  int a_attempts = 0;
  bool a_stopped = false;
  client.SetCallHook([&](const FakeCall& call) {
    if (call.method == "Update" && call.body != nullptr &&
        JsonGet<std::string>(*call.body, "/spec/holderIdentity", "") == "a") {
      std::lock_guard lock(mu);
      ++a_attempts;
      cv.notify_all();
      return Status::Unavailable("network partition");
    }
    return Status::Ok();
  });
  Flag a_started;
  auto a_cfg = Config("a");
  a_cfg.clock_poll_interval = milliseconds(1);
  a_cfg.on_started_leading = [&] { a_started.Set(); };
  a_cfg.on_stopped_leading = [&] {
    std::lock_guard lock(mu);
    a_stopped = true;
    cv.notify_all();
  };
  auto a = MakeElector(a_cfg, &client, &clock);
  auto b = MakeElector(Config("b"), &client, &clock);
  ASSERT_TRUE(a && b);

  const TimePoint t0 = clock.Now();
  CancelToken cancel;
  auto run = std::async(std::launch::async, [&] { return a->Run(&cancel); });  // creates it
  CancelOnExit guard(cancel);
  ASSERT_TRUE(a_started.WaitSet());
  EXPECT_FALSE(b->TryAcquireOrRenew());  // b observes a's record at t0

  // Step the clock one retry period at a time, letting a make each renewal attempt.
  for (int i = 1; i <= 10; ++i) {
    std::unique_lock lock(mu);
    if (a_stopped) break;
    lock.unlock();
    clock.Advance(seconds(2));
    lock.lock();
    ASSERT_TRUE(cv.wait_for(lock, kWait, [&] { return a_attempts >= i || a_stopped; }))
        << "attempt " << i;
  }
  {
    std::unique_lock lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, kWait, [&] { return a_stopped; }));
  }
  ASSERT_EQ(run.wait_for(kWait), std::future_status::ready);
  EXPECT_EQ(run.get().code(), StatusCode::kUnavailable);
  EXPECT_FALSE(a->IsLeader());
  EXPECT_LT(clock.Now() - t0, seconds(15));
  EXPECT_FALSE(b->TryAcquireOrRenew());  // a stopped while the lease was still valid
  clock.Advance(t0 + seconds(15) - clock.Now());
  EXPECT_TRUE(b->TryAcquireOrRenew());
}

// A leader that finds the lease held by someone else stops at once.
TEST(LeaderElectionTest, LeaderStopsWhenLeaseIsTaken) {
  FakeClock clock;
  FakeKubeClient client(&clock);
  Flag a_started, a_stopped;
  auto a_cfg = Config("a");
  a_cfg.clock_poll_interval = milliseconds(1);
  a_cfg.on_started_leading = [&] { a_started.Set(); };
  a_cfg.on_stopped_leading = [&] { a_stopped.Set(); };
  auto a = MakeElector(a_cfg, &client, &clock);
  ASSERT_TRUE(a);
  CancelToken cancel;
  auto run = std::async(std::launch::async, [&] { return a->Run(&cancel); });
  CancelOnExit guard(cancel);
  ASSERT_TRUE(a_started.WaitSet());
  // An operator (or a split-brain peer) overwrites the holder.
  Json lease = Lease(client);
  lease["spec"]["holderIdentity"] = "intruder";
  ASSERT_TRUE(client.Update(kLeases, lease).ok());
  clock.Advance(seconds(2));
  ASSERT_TRUE(a_stopped.WaitSet());
  ASSERT_EQ(run.wait_for(kWait), std::future_status::ready);
  EXPECT_EQ(run.get().code(), StatusCode::kUnavailable);
  EXPECT_EQ(Holder(client), "intruder");  // not released: it was not ours
}

}  // namespace
}  // namespace pdpool::kube
