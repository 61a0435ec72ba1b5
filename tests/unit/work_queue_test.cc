// Tests for WorkQueue: dedup, one key never held by two workers, requeue after Done, delayed
// adds on FakeClock, rate-limited backoff and Forget, shutdown.
#include "common/kube/work_queue.h"

#include <gtest/gtest.h>

#include <array>
#include <atomic>
#include <chrono>
#include <future>
#include <thread>
#include <vector>

namespace pdpool::kube {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr auto kWait = seconds(10);  // generous deadline for things that should happen at once

WorkQueueOptions NoDelayThread() {
  WorkQueueOptions o;
  o.start_delay_thread = false;
  return o;
}

TEST(WorkQueueTest, AddDeduplicatesWhileQueued) {
  FakeClock clock;
  WorkQueue q(&clock, NoDelayThread());
  q.Add("ns/a");
  q.Add("ns/b");
  q.Add("ns/a");
  EXPECT_EQ(q.Len(), 2u);
  EXPECT_EQ(q.GetFor(kWait), "ns/a");
  EXPECT_EQ(q.GetFor(kWait), "ns/b");
  EXPECT_EQ(q.Len(), 0u);
  EXPECT_EQ(q.GetFor(milliseconds(1)), std::nullopt);
}

TEST(WorkQueueTest, AddWhileProcessingIsQueuedOnlyAfterDone) {
  FakeClock clock;
  WorkQueue q(&clock, NoDelayThread());
  q.Add("ns/a");
  auto key = q.GetFor(kWait);
  ASSERT_EQ(key, "ns/a");
  q.Add("ns/a");
  q.Add("ns/a");
  // Not handed out again while the first worker holds it.
  EXPECT_EQ(q.Len(), 0u);
  EXPECT_EQ(q.GetFor(milliseconds(1)), std::nullopt);
  q.Done("ns/a");
  EXPECT_EQ(q.Len(), 1u);
  EXPECT_EQ(q.GetFor(kWait), "ns/a");
  q.Done("ns/a");
  EXPECT_EQ(q.Len(), 0u);
}

TEST(WorkQueueTest, DoneWithoutReAddDoesNotRequeue) {
  FakeClock clock;
  WorkQueue q(&clock, NoDelayThread());
  q.Add("ns/a");
  ASSERT_EQ(q.GetFor(kWait), "ns/a");
  q.Done("ns/a");
  EXPECT_EQ(q.Len(), 0u);
}

// Many producers and workers on few keys: no key is ever processed by two workers at once, and
// every key is processed after its last Add.
TEST(WorkQueueTest, NoKeyIsHeldByTwoWorkers) {
  constexpr int kKeys = 5;
  constexpr int kWorkers = 8;
  constexpr int kProducers = 3;
  constexpr int kAddsPerProducer = 2000;
  FakeClock clock;
  WorkQueue q(&clock, NoDelayThread());
  auto key_name = [](int i) { return "ns/k" + std::to_string(i); };

  std::array<std::atomic<int>, kKeys> in_flight{};
  std::array<std::atomic<int64_t>, kKeys> last_add_seq{};
  std::array<std::atomic<int64_t>, kKeys> seen_seq{};
  std::atomic<int64_t> seq{0};
  std::atomic<int> violations{0};
  std::atomic<int> processed{0};

  std::vector<std::thread> workers;
  for (int w = 0; w < kWorkers; ++w) {
    workers.emplace_back([&] {
      while (auto key = q.Get()) {
        int i = std::stoi(key->substr(4));
        if (in_flight[i].fetch_add(1) != 0) violations.fetch_add(1);
        // Everything added before this Get handed the key out must be visible now.
        int64_t s = last_add_seq[i].load();
        int64_t prev = seen_seq[i].load();
        while (s > prev && !seen_seq[i].compare_exchange_weak(prev, s)) {
        }
        std::this_thread::yield();
        in_flight[i].fetch_sub(1);
        processed.fetch_add(1);
        q.Done(*key);
      }
    });
  }
  std::vector<std::thread> producers;
  for (int p = 0; p < kProducers; ++p) {
    producers.emplace_back([&, p] {
      for (int n = 0; n < kAddsPerProducer; ++n) {
        int i = (n * 7 + p) % kKeys;
        int64_t s = seq.fetch_add(1) + 1;
        int64_t prev = last_add_seq[i].load();
        while (s > prev && !last_add_seq[i].compare_exchange_weak(prev, s)) {
        }
        q.Add(key_name(i));
      }
    });
  }
  for (auto& t : producers) t.join();
  // ShutDown drains: queued keys and keys re-added during processing are still handed out.
  q.ShutDown();
  for (auto& t : workers) t.join();

  EXPECT_EQ(violations.load(), 0);
  EXPECT_GT(processed.load(), 0);
  for (int i = 0; i < kKeys; ++i) {
    EXPECT_EQ(seen_seq[i].load(), last_add_seq[i].load()) << "key " << i;
  }
}

TEST(WorkQueueTest, AddAfterFiresOnFakeClock) {
  FakeClock clock;
  WorkQueue q(&clock, NoDelayThread());
  q.AddAfter("ns/a", seconds(5));
  EXPECT_EQ(q.Len(), 0u);
  EXPECT_EQ(q.NumWaiting(), 1u);
  clock.Advance(seconds(4));
  EXPECT_EQ(q.ProcessDueItems(), 0u);
  EXPECT_EQ(q.Len(), 0u);
  clock.Advance(seconds(1));
  EXPECT_EQ(q.ProcessDueItems(), 1u);
  EXPECT_EQ(q.Len(), 1u);
  EXPECT_EQ(q.NumWaiting(), 0u);
  EXPECT_EQ(q.GetFor(kWait), "ns/a");
}

TEST(WorkQueueTest, AddAfterKeepsEarliestDueTime) {
  FakeClock clock;
  WorkQueue q(&clock, NoDelayThread());
  q.AddAfter("ns/a", seconds(10));
  q.AddAfter("ns/a", seconds(2));
  q.AddAfter("ns/a", seconds(20));
  EXPECT_EQ(q.NumWaiting(), 1u);
  clock.Advance(seconds(2));
  EXPECT_EQ(q.ProcessDueItems(), 1u);
  EXPECT_EQ(q.Len(), 1u);
  clock.Advance(seconds(30));
  EXPECT_EQ(q.ProcessDueItems(), 0u);
  EXPECT_EQ(q.Len(), 1u);
}

TEST(WorkQueueTest, AddAfterNonPositiveDelayAddsNow) {
  FakeClock clock;
  WorkQueue q(&clock, NoDelayThread());
  q.AddAfter("ns/a", Duration::zero());
  EXPECT_EQ(q.Len(), 1u);
  EXPECT_EQ(q.NumWaiting(), 0u);
}

TEST(WorkQueueTest, DelayThreadFiresAfterAdvanceAndKick) {
  FakeClock clock;
  WorkQueue q(&clock);  // with the delay thread
  q.AddAfter("ns/a", seconds(30));
  EXPECT_EQ(q.GetFor(milliseconds(1)), std::nullopt);
  clock.Advance(seconds(30));
  q.Kick();
  EXPECT_EQ(q.GetFor(kWait), "ns/a");
}

TEST(WorkQueueTest, DelayThreadNoticesFakeClockWithoutKick) {
  FakeClock clock;
  WorkQueueOptions o;
  o.max_delay_wait = milliseconds(1);
  WorkQueue q(&clock, std::move(o));
  q.AddAfter("ns/a", seconds(30));
  clock.Advance(seconds(31));
  EXPECT_EQ(q.GetFor(kWait), "ns/a");
}

TEST(WorkQueueTest, DelayThreadWithRealClock) {
  WorkQueue q(&RealClock::Instance());
  q.AddAfter("ns/a", milliseconds(20));
  EXPECT_EQ(q.GetFor(kWait), "ns/a");
}

TEST(WorkQueueTest, RateLimitedBackoffDoublesAndForgetResets) {
  FakeClock clock;
  WorkQueue q(&clock, NoDelayThread());  // default limiter: 5 ms * 2^n, 10 qps burst 100
  auto expect_due_after = [&](Duration d) {
    clock.Advance(d - milliseconds(1));
    EXPECT_EQ(q.ProcessDueItems(), 0u) << "fired before " << d.count() << "ns";
    clock.Advance(milliseconds(1));
    EXPECT_EQ(q.ProcessDueItems(), 1u) << "not fired at " << d.count() << "ns";
    ASSERT_EQ(q.GetFor(kWait), "ns/a");
    q.Done("ns/a");
  };
  q.AddRateLimited("ns/a");
  EXPECT_EQ(q.NumRequeues("ns/a"), 1);
  expect_due_after(milliseconds(5));
  q.AddRateLimited("ns/a");
  expect_due_after(milliseconds(10));
  q.AddRateLimited("ns/a");
  expect_due_after(milliseconds(20));
  EXPECT_EQ(q.NumRequeues("ns/a"), 3);

  q.Forget("ns/a");
  EXPECT_EQ(q.NumRequeues("ns/a"), 0);
  q.AddRateLimited("ns/a");
  expect_due_after(milliseconds(5));
}

TEST(WorkQueueTest, ShutDownUnblocksGet) {
  FakeClock clock;
  WorkQueue q(&clock, NoDelayThread());
  auto getter = std::async(std::launch::async, [&] { return q.Get(); });
  q.ShutDown();
  ASSERT_EQ(getter.wait_for(kWait), std::future_status::ready);
  EXPECT_EQ(getter.get(), std::nullopt);
  EXPECT_TRUE(q.ShuttingDown());
}

TEST(WorkQueueTest, ShutDownDrainsQueuedKeysAndIgnoresNewOnes) {
  FakeClock clock;
  WorkQueue q(&clock, NoDelayThread());
  q.Add("ns/a");
  q.AddAfter("ns/b", seconds(1));
  q.ShutDown();
  q.Add("ns/c");
  q.AddRateLimited("ns/d");
  EXPECT_EQ(q.Get(), "ns/a");
  q.Done("ns/a");
  EXPECT_EQ(q.Get(), std::nullopt);
  EXPECT_EQ(q.NumWaiting(), 0u);
}

}  // namespace
}  // namespace pdpool::kube
