// LiveReplay: runs a Schedule against a live router in real time, open loop. A dispatcher
// thread sends each request at its scheduled time whatever the router's state (a request it
// cannot start because --max-inflight requests are in flight fails as "client overloaded");
// each request runs on a thread of a RequestThreadPool through the CompletionClient. The
// calling thread reports: one TimeseriesRow per wall second, a LiveViewState per view tick.
// The run ends when every request was sent and has finished; Stop() (a signal) and the
// --duration cap end sending early and give in-flight requests drain_timeout to finish before
// they are cut off (failed: "interrupted").
// Thread-safety: Run() once, from one thread; Stop() from any thread at any time.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "bench/live_replay/completion_client.h"
#include "bench/live_replay/live_stats.h"
#include "bench/live_replay/live_view.h"
#include "bench/live_replay/pool_sampler.h"
#include "bench/live_replay/report.h"
#include "bench/live_replay/request_record.h"
#include "bench/live_replay/request_thread_pool.h"
#include "bench/live_replay/schedule.h"
#include "common/clock.h"

namespace pdpool::bench::live_replay {

struct LiveReplayOptions {
  std::string model;
  double duration_s = 0;  // wall-clock cap on sending; 0: the whole schedule
  int max_inflight = 1024;
  double drain_timeout_s = 10;  // after a stop, how long in-flight requests get
  replay::SloLimits slo;        // for the view
  // For the trace time of rows and the view: window start + wall seconds × compression.
  double window_start_s = 0;
  double time_compression = 1;
  Duration view_interval = std::chrono::milliseconds(500);
  // Called on Run's thread: each wall second's row, in order, once that second is over (and the
  // last, partial one at the end); the view's state every view_interval and once at the end.
  std::function<void(const TimeseriesRow&)> on_second;
  std::function<void(const LiveViewState&)> on_view;
};

struct LiveReplayResult {
  std::vector<RequestRecord> records;  // the requests offered, in send order
  double wall_s = 0;                   // start → the last request finished or was given up on
  StopReason stop_reason = StopReason::kCompleted;
  int64_t overloaded = 0;  // refused: max_inflight requests in flight
  int64_t cut_off = 0;     // interrupted in flight after a stop
};

class LiveReplay {
 public:
  // `client` and `clock` (a real clock: the dispatcher sleeps until send times) must outlive
  // the replay; `sampler` may be null (no --pool), else Run starts and stops it.
  LiveReplay(const Schedule& schedule, LiveReplayOptions options, CompletionClient* client,
             PoolSampler* sampler, const Clock* clock);
  ~LiveReplay();
  LiveReplay(const LiveReplay&) = delete;
  LiveReplay& operator=(const LiveReplay&) = delete;

  LiveReplayResult Run();
  // Stops sending; requests in flight get drain_timeout_s, then are cut off.
  void Stop();

 private:
  struct Slot {
    bool offered = false;
    bool finished = false;
    RequestRecord record;
  };

  void Dispatch();
  void Execute(const ScheduledRequest& request);
  void Finish(int64_t index, RequestRecord record, double end_s);
  TimePoint SendTime(const ScheduledRequest& request) const;
  double Elapsed(TimePoint t) const;
  // What the view says the run is doing: "replaying", "all sent: 3 in flight", ...
  std::string Phase(bool dispatch_done, StopReason reason, std::optional<TimePoint> drain_deadline,
                    TimePoint now) const;
  LiveViewState ViewState(TimePoint now, const SecondStats& last, const std::string& phase) const;

  const Schedule& schedule_;
  const LiveReplayOptions options_;
  CompletionClient* const client_;
  PoolSampler* const sampler_;
  const Clock* const clock_;
  TimePoint start_{};
  LiveStats stats_;
  std::unique_ptr<RequestThreadPool> pool_;  // created by Run

  std::mutex mu_;
  std::condition_variable dispatch_cv_;  // wakes the dispatcher on Stop
  std::condition_variable report_cv_;    // wakes the reporter when dispatching is over
  bool stop_requested_ = false;
  bool dispatch_done_ = false;
  std::optional<TimePoint> drain_deadline_;  // set once sending stopped early
  StopReason stop_reason_ = StopReason::kCompleted;
  int64_t overloaded_ = 0;
  std::vector<Slot> slots_;  // by schedule index
};

}  // namespace pdpool::bench::live_replay
