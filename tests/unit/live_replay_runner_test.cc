// The live replay's runner (bench/live_replay/live_replay.h, request_thread_pool.h) with a fake
// router client: every scheduled request is offered once and accounted for, a request beyond
// --max-inflight fails as "client overloaded" instead of waiting or vanishing, and a stop cuts
// off what is still in flight. Schedules are compressed to milliseconds; nothing asserts on
// wall-clock durations.
#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <mutex>

#include "bench/live_replay/live_replay.h"
#include "bench/live_replay/request_thread_pool.h"

namespace pdpool::bench::live_replay {
namespace {

// Answers every request at once with `tokens` tokens, or blocks each until CancelAll.
class FakeCompletionClient final : public CompletionClient {
 public:
  explicit FakeCompletionClient(bool block) : block_(block) {}

  CompletionResult Send(const std::string& body) override {
    sent_bodies_.fetch_add(1);
    CompletionResult r;
    if (block_) {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [this] { return cancelled_; });
      r.error = "interrupted";
      r.end = RealClock::Instance().Now();
      return r;
    }
    const TimePoint now = RealClock::Instance().Now();
    r.ok = body.find("\"stream\":true") != std::string::npos;
    r.error = r.ok ? "" : "not a stream";
    r.tokens = 3;
    r.first_token = now;
    r.last_token = now;
    r.end = now;
    return r;
  }
  void CancelAll() override {
    std::lock_guard lock(mu_);
    cancelled_ = true;
    cv_.notify_all();
  }
  int sent_bodies() const { return sent_bodies_.load(); }

 private:
  const bool block_;
  std::atomic<int> sent_bodies_{0};
  std::mutex mu_;
  std::condition_variable cv_;
  bool cancelled_ = false;
};

Schedule Requests(const std::vector<double>& send_s) {
  Schedule s;
  for (double t : send_s) {
    ScheduledRequest r;
    r.index = static_cast<int64_t>(s.requests.size());
    r.trace_s = t;
    r.send_s = t;
    r.prompt_tokens = 10;
    r.output_tokens = 3;
    s.requests.push_back(r);
  }
  s.wall_s = send_s.empty() ? 0 : send_s.back();
  return s;
}

LiveReplayOptions TestOptions() {
  LiveReplayOptions o;
  o.model = "m";
  o.view_interval = std::chrono::milliseconds(5);
  return o;
}

TEST(LiveReplayThreadPoolTest, RefusesBeyondItsLimitAndReusesIdleThreads) {
  RequestThreadPool pool(1);
  std::mutex mu;
  std::condition_variable cv;
  bool release = false;
  ASSERT_TRUE(pool.TrySubmit([&] {
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return release; });
  }));
  EXPECT_FALSE(pool.TrySubmit([] {}));  // the only thread is busy: refused, not queued
  EXPECT_EQ(pool.busy(), 1);
  {
    std::lock_guard lock(mu);
    release = true;
  }
  cv.notify_all();
  ASSERT_TRUE(pool.WaitIdle(RealClock::Instance().Now() + std::chrono::seconds(30)));
  std::atomic<bool> ran{false};
  EXPECT_TRUE(pool.TrySubmit([&] { ran = true; }));
  ASSERT_TRUE(pool.WaitIdle(RealClock::Instance().Now() + std::chrono::seconds(30)));
  EXPECT_TRUE(ran);
  EXPECT_EQ(pool.threads(), 1);
}

TEST(LiveReplayRunnerTest, EveryScheduledRequestIsSentOnceAndAccountedPerSecond) {
  const Schedule schedule = Requests({0, 0.001, 0.002, 0.002, 0.003});
  FakeCompletionClient client(/*block=*/false);
  LiveReplayOptions options = TestOptions();
  std::vector<TimeseriesRow> rows;
  options.on_second = [&](const TimeseriesRow& row) { rows.push_back(row); };
  LiveReplay replay(schedule, options, &client, nullptr, &RealClock::Instance());
  const LiveReplayResult result = replay.Run();

  EXPECT_EQ(client.sent_bodies(), 5);
  ASSERT_EQ(result.records.size(), 5u);
  for (size_t i = 0; i < result.records.size(); ++i) {
    EXPECT_EQ(result.records[i].status, "ok");
    EXPECT_TRUE(result.records[i].outcome.completed);
    EXPECT_EQ(result.records[i].outcome.output_tokens, 3);
    EXPECT_DOUBLE_EQ(result.records[i].outcome.arrival_s, schedule.requests[i].send_s);
  }
  EXPECT_EQ(result.stop_reason, StopReason::kCompleted);
  EXPECT_EQ(result.overloaded, 0);
  // Rows are consecutive seconds from 0 and together hold every request.
  ASSERT_FALSE(rows.empty());
  int64_t offered = 0, completed = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    EXPECT_EQ(rows[i].stats.second, static_cast<int64_t>(i));
    offered += rows[i].stats.offered;
    completed += rows[i].stats.completed;
  }
  EXPECT_EQ(offered, 5);
  EXPECT_EQ(completed, 5);
  EXPECT_EQ(rows.back().stats.inflight, 0);
}

TEST(LiveReplayRunnerTest, OverloadFailsRequestsAndDurationCutsOffTheRest) {
  // Three requests at once with room for one; the fourth is past --duration and never sent.
  // The first blocks until the drain after --duration ends (drain 0 s) and it is cut off.
  const Schedule schedule = Requests({0, 0, 0, 100});
  FakeCompletionClient client(/*block=*/true);
  LiveReplayOptions options = TestOptions();
  options.max_inflight = 1;
  options.duration_s = 0.001;
  options.drain_timeout_s = 0;
  LiveReplay replay(schedule, options, &client, nullptr, &RealClock::Instance());
  const LiveReplayResult result = replay.Run();

  ASSERT_EQ(result.records.size(), 3u);
  EXPECT_EQ(result.records[0].status, "interrupted");
  EXPECT_EQ(result.records[1].status, "client overloaded");
  EXPECT_EQ(result.records[2].status, "client overloaded");
  for (const RequestRecord& r : result.records) EXPECT_FALSE(r.outcome.completed);
  EXPECT_EQ(result.overloaded, 2);
  EXPECT_EQ(result.cut_off, 1);
  EXPECT_EQ(result.stop_reason, StopReason::kDuration);
  EXPECT_EQ(client.sent_bodies(), 1);
}

TEST(LiveReplayRunnerTest, StopBeforeTheFirstSendSendsNothing) {
  const Schedule schedule = Requests({0.5, 1.0});
  FakeCompletionClient client(/*block=*/false);
  LiveReplay replay(schedule, TestOptions(), &client, nullptr, &RealClock::Instance());
  replay.Stop();
  const LiveReplayResult result = replay.Run();
  EXPECT_TRUE(result.records.empty());
  EXPECT_EQ(result.stop_reason, StopReason::kSignal);
  EXPECT_EQ(client.sent_bodies(), 0);
}

}  // namespace
}  // namespace pdpool::bench::live_replay
