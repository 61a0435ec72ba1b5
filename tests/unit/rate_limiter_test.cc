// Tests for the rate limiters: per-item exponential backoff, the token bucket (QpsLimiter and
// BucketRateLimiter), max-of and the default controller limiter, all on FakeClock.
#include "common/kube/rate_limiter.h"

#include <gtest/gtest.h>

#include <chrono>
#include <future>
#include <memory>
#include <vector>

namespace pdpool::kube {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr auto kWait = seconds(10);

TEST(ItemExponentialFailureRateLimiterTest, DoublesPerFailureAndCaps) {
  ItemExponentialFailureRateLimiter l(milliseconds(5), seconds(1000));
  EXPECT_EQ(l.When("a"), milliseconds(5));
  EXPECT_EQ(l.When("a"), milliseconds(10));
  EXPECT_EQ(l.When("a"), milliseconds(20));
  EXPECT_EQ(l.When("a"), milliseconds(40));
  EXPECT_EQ(l.NumRequeues("a"), 4);
  // Other keys have their own count.
  EXPECT_EQ(l.When("b"), milliseconds(5));
  // 5 ms * 2^18 = 1310.72 s > 1000 s; and far beyond, no overflow.
  for (int i = 4; i < 18; ++i) (void)l.When("a");
  EXPECT_EQ(l.When("a"), seconds(1000));
  for (int i = 0; i < 200; ++i) (void)l.When("a");
  EXPECT_EQ(l.When("a"), seconds(1000));
}

TEST(ItemExponentialFailureRateLimiterTest, ForgetResets) {
  ItemExponentialFailureRateLimiter l;
  (void)l.When("a");
  (void)l.When("a");
  l.Forget("a");
  EXPECT_EQ(l.NumRequeues("a"), 0);
  EXPECT_EQ(l.When("a"), milliseconds(5));
}

TEST(QpsLimiterTest, TryAcquireSpendsBurstThenRefills) {
  FakeClock clock;
  QpsLimiter l(/*qps=*/1, /*burst=*/2, &clock);
  EXPECT_TRUE(l.TryAcquire());
  EXPECT_TRUE(l.TryAcquire());
  EXPECT_FALSE(l.TryAcquire());
  clock.Advance(milliseconds(500));
  EXPECT_FALSE(l.TryAcquire());
  clock.Advance(milliseconds(500));
  EXPECT_TRUE(l.TryAcquire());
  EXPECT_FALSE(l.TryAcquire());
  // Refill stops at the burst.
  clock.Advance(seconds(100));
  EXPECT_TRUE(l.TryAcquire());
  EXPECT_TRUE(l.TryAcquire());
  EXPECT_FALSE(l.TryAcquire());
}

TEST(QpsLimiterTest, NonPositiveQpsIsUnlimited) {
  FakeClock clock;
  QpsLimiter l(0, 1, &clock);
  for (int i = 0; i < 1000; ++i) ASSERT_TRUE(l.TryAcquire());
  EXPECT_TRUE(l.Wait().ok());
  EXPECT_EQ(l.Reserve(), Duration::zero());
}

TEST(QpsLimiterTest, ReserveGoesIntoDebt) {
  FakeClock clock;
  QpsLimiter l(/*qps=*/10, /*burst=*/1, &clock);
  EXPECT_EQ(l.Reserve(), Duration::zero());
  EXPECT_EQ(l.Reserve(), milliseconds(100));
  EXPECT_EQ(l.Reserve(), milliseconds(200));
  EXPECT_FALSE(l.TryAcquire());
  clock.Advance(milliseconds(300));
  EXPECT_TRUE(l.TryAcquire());
}

TEST(QpsLimiterTest, WaitReturnsAtOnceWhenATokenIsAvailable) {
  FakeClock clock;
  QpsLimiter l(1, 1, &clock);
  EXPECT_TRUE(l.Wait().ok());
  EXPECT_FALSE(l.TryAcquire());
}

TEST(QpsLimiterTest, WaitBlocksUntilClockAdvances) {
  FakeClock clock;
  QpsLimiter l(/*qps=*/1, /*burst=*/1, &clock);
  ASSERT_TRUE(l.TryAcquire());
  CancelToken cancel;  // cancelled on the way out, so a failed ASSERT cannot hang the test
  auto waiter = std::async(std::launch::async, [&] { return l.Wait(&cancel); });
  struct CancelOnExit {
    CancelToken& t;
    ~CancelOnExit() { t.Cancel(); }
  } guard{cancel};
  // Without time passing on the clock there is no token (a negative check needs a bound).
  EXPECT_EQ(waiter.wait_for(milliseconds(50)), std::future_status::timeout);
  clock.Advance(seconds(1));
  l.Kick();
  ASSERT_EQ(waiter.wait_for(kWait), std::future_status::ready);
  EXPECT_TRUE(waiter.get().ok());
  EXPECT_FALSE(l.TryAcquire());  // the waiter took the token
}

TEST(QpsLimiterTest, WaitNoticesFakeClockWithPollInterval) {
  FakeClock clock;
  QpsLimiter l(1, 1, &clock, /*clock_poll_interval=*/milliseconds(1));
  ASSERT_TRUE(l.TryAcquire());
  CancelToken cancel;
  auto waiter = std::async(std::launch::async, [&] { return l.Wait(&cancel); });
  struct CancelOnExit {
    CancelToken& t;
    ~CancelOnExit() { t.Cancel(); }
  } guard{cancel};
  clock.Advance(seconds(1));
  ASSERT_EQ(waiter.wait_for(kWait), std::future_status::ready);
  EXPECT_TRUE(waiter.get().ok());
}

TEST(QpsLimiterTest, WaitIsCancelled) {
  FakeClock clock;
  QpsLimiter l(1, 1, &clock);
  ASSERT_TRUE(l.TryAcquire());
  CancelToken cancel;
  auto waiter = std::async(std::launch::async, [&] { return l.Wait(&cancel); });
  cancel.Cancel();
  ASSERT_EQ(waiter.wait_for(kWait), std::future_status::ready);
  EXPECT_EQ(waiter.get().code(), StatusCode::kCancelled);
  // A cancelled wait took no token.
  clock.Advance(seconds(1));
  EXPECT_TRUE(l.TryAcquire());
  // Already cancelled: returns at once.
  EXPECT_EQ(l.Wait(&cancel).code(), StatusCode::kCancelled);
}

TEST(QpsLimiterTest, WaitWithRealClock) {
  QpsLimiter l(/*qps=*/100, /*burst=*/1, &RealClock::Instance());
  ASSERT_TRUE(l.TryAcquire());
  auto start = std::chrono::steady_clock::now();
  EXPECT_TRUE(l.Wait().ok());
  EXPECT_GE(std::chrono::steady_clock::now() - start, milliseconds(5));
}

TEST(MaxOfRateLimiterTest, TakesTheLongestAndForgetsEverywhere) {
  std::vector<std::unique_ptr<RateLimiter>> ls;
  ls.push_back(std::make_unique<ItemExponentialFailureRateLimiter>(milliseconds(1), seconds(1)));
  ls.push_back(std::make_unique<ItemExponentialFailureRateLimiter>(milliseconds(3), seconds(1)));
  MaxOfRateLimiter l(std::move(ls));
  EXPECT_EQ(l.When("a"), milliseconds(3));
  EXPECT_EQ(l.When("a"), milliseconds(6));
  EXPECT_EQ(l.NumRequeues("a"), 2);
  l.Forget("a");
  EXPECT_EQ(l.NumRequeues("a"), 0);
  EXPECT_EQ(l.When("a"), milliseconds(3));
}

TEST(DefaultControllerRateLimiterTest, PerItemBackoffUntilTheBucketRunsDry) {
  FakeClock clock;
  auto l = NewDefaultControllerRateLimiter(&clock);
  // The first 100 (burst) come from the bucket at once: the per-item 5 ms wins.
  for (int i = 0; i < 100; ++i) {
    ASSERT_EQ(l->When("k" + std::to_string(i)), milliseconds(5)) << i;
  }
  // Then 10 qps: each further item waits one more 100 ms slot.
  EXPECT_EQ(l->When("x"), milliseconds(100));
  EXPECT_EQ(l->When("y"), milliseconds(200));
  // A second of clock time pays the debt (2 tokens) and refills 8.
  clock.Advance(seconds(1));
  EXPECT_EQ(l->When("z"), milliseconds(5));
  // Per-item backoff still grows past the bucket's delay.
  for (int i = 0; i < 10; ++i) (void)l->When("hot");
  EXPECT_EQ(l->When("hot"), milliseconds(5 * 1024));
  EXPECT_EQ(l->NumRequeues("hot"), 11);
}

}  // namespace
}  // namespace pdpool::kube
