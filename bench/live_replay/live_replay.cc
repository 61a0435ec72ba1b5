// LiveReplay: open-loop dispatch, per-second reporting, drain and stop (see live_replay.h).
#include "bench/live_replay/live_replay.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "bench/live_replay/completion_request.h"
#include "bench/live_replay/format.h"

namespace pdpool::bench::live_replay {
namespace {

constexpr char kOverloaded[] = "client overloaded";
constexpr char kInterrupted[] = "interrupted";
// After cutting requests off, how long their threads get to notice before the run ends anyway.
constexpr auto kCancelGrace = std::chrono::seconds(5);

Duration FromSeconds(double s) {
  return std::chrono::duration_cast<Duration>(std::chrono::duration<double>(s));
}

}  // namespace

LiveReplay::LiveReplay(const Schedule& schedule, LiveReplayOptions options,
                       CompletionClient* client, PoolSampler* sampler, const Clock* clock)
    : schedule_(schedule),
      options_(std::move(options)),
      client_(client),
      sampler_(sampler),
      clock_(clock),
      slots_(schedule.requests.size()) {}

LiveReplay::~LiveReplay() {
  // Request threads still running (cut off, not yet out) write into the members below.
  pool_.reset();
}

TimePoint LiveReplay::SendTime(const ScheduledRequest& request) const {
  return start_ + FromSeconds(request.send_s);
}

double LiveReplay::Elapsed(TimePoint t) const {
  return std::chrono::duration<double>(t - start_).count();
}

void LiveReplay::Stop() {
  {
    std::lock_guard lock(mu_);
    if (stop_requested_) return;
    stop_requested_ = true;
    stop_reason_ = StopReason::kSignal;
    drain_deadline_ = clock_->Now() + FromSeconds(options_.drain_timeout_s);
  }
  dispatch_cv_.notify_all();
}

void LiveReplay::Dispatch() {
  for (const ScheduledRequest& request : schedule_.requests) {
    if (options_.duration_s > 0 && request.send_s >= options_.duration_s) {
      std::lock_guard lock(mu_);
      if (!stop_requested_) {
        stop_reason_ = StopReason::kDuration;
        drain_deadline_ = start_ + FromSeconds(options_.duration_s + options_.drain_timeout_s);
      }
      break;
    }
    {
      std::unique_lock lock(mu_);
      if (dispatch_cv_.wait_until(lock, SendTime(request), [this] { return stop_requested_; })) {
        break;
      }
      slots_[static_cast<size_t>(request.index)].offered = true;
    }
    const double now_s = Elapsed(clock_->Now());
    stats_.RecordOffered(now_s);
    if (!pool_->TrySubmit([this, &request] { Execute(request); })) {
      {
        std::lock_guard lock(mu_);
        ++overloaded_;
      }
      Finish(request.index, FailedRequest(request, kOverloaded), now_s);
    }
  }
  {
    std::lock_guard lock(mu_);
    dispatch_done_ = true;
  }
  report_cv_.notify_all();
}

void LiveReplay::Execute(const ScheduledRequest& request) {
  const CompletionResult result = client_->Send(
      CompletionBody(options_.model, request.index, request.prompt_tokens, request.output_tokens));
  Finish(request.index, MeasureRequest(request, SendTime(request), result), Elapsed(result.end));
}

void LiveReplay::Finish(int64_t index, RequestRecord record, double end_s) {
  if (record.outcome.completed) {
    stats_.RecordCompleted(end_s, record.outcome.ttft_s, record.outcome.tpot_s);
  } else {
    stats_.RecordFailed(end_s);
  }
  std::lock_guard lock(mu_);
  Slot& slot = slots_[static_cast<size_t>(index)];
  slot.record = std::move(record);
  slot.finished = true;
}

std::string LiveReplay::Phase(bool dispatch_done, StopReason reason,
                              std::optional<TimePoint> drain_deadline, TimePoint now) const {
  if (!dispatch_done) return "replaying";
  std::string phase = reason == StopReason::kSignal     ? "stopping (signal)"
                      : reason == StopReason::kDuration ? "--duration reached"
                                                        : "all sent";
  phase += ": " + std::to_string(stats_.Totals().inflight) + " in flight";
  if (drain_deadline) {
    phase +=
        ", cut off in " +
        FormatSeconds(std::max(0.0, std::chrono::duration<double>(*drain_deadline - now).count()));
  }
  return phase;
}

LiveViewState LiveReplay::ViewState(TimePoint now, const SecondStats& last,
                                    const std::string& phase) const {
  LiveViewState v;
  v.elapsed_s = Elapsed(now);
  v.total_wall_s =
      options_.duration_s > 0 ? std::min(options_.duration_s, schedule_.wall_s) : schedule_.wall_s;
  v.trace_s = options_.window_start_s + v.elapsed_s * options_.time_compression;
  v.last_second = last;
  v.totals = stats_.Totals();
  v.total_requests = static_cast<int64_t>(schedule_.requests.size());
  v.phase = phase;
  if (sampler_ != nullptr) {
    v.pool_sampled = true;
    v.pool = sampler_->Latest();
    v.pool_error = sampler_->last_error();
  }
  return v;
}

LiveReplayResult LiveReplay::Run() {
  start_ = clock_->Now();
  pool_ = std::make_unique<RequestThreadPool>(options_.max_inflight);
  if (sampler_ != nullptr) sampler_->Start(start_, std::chrono::seconds(1));
  std::thread dispatcher([this] { Dispatch(); });

  int64_t next_row = 0;
  SecondStats last_row;
  auto emit_rows_before = [&](int64_t end_second) {
    for (; next_row < end_second; ++next_row) {
      TimeseriesRow row;
      row.stats = stats_.TakeSecond(next_row);
      row.trace_s =
          options_.window_start_s + static_cast<double>(next_row) * options_.time_compression;
      if (sampler_ != nullptr) row.pool = sampler_->Latest();
      last_row = row.stats;
      if (options_.on_second) options_.on_second(row);
    }
  };

  TimePoint next_tick = start_ + options_.view_interval;
  while (true) {
    bool done = false;
    std::optional<TimePoint> drain_deadline;
    StopReason reason = StopReason::kCompleted;
    {
      std::unique_lock lock(mu_);
      report_cv_.wait_until(lock, next_tick, [this] { return dispatch_done_; });
      done = dispatch_done_;
      drain_deadline = drain_deadline_;
      reason = stop_reason_;
    }
    bool idle = false;
    if (done) {
      idle = pool_->WaitIdle(drain_deadline ? std::min(next_tick, *drain_deadline) : next_tick);
    }
    const TimePoint now = clock_->Now();
    emit_rows_before(static_cast<int64_t>(std::floor(Elapsed(now))));
    if (idle) break;
    if (done && drain_deadline && now >= *drain_deadline) {
      // The drain is over: cut off what is still in flight and give its threads a moment.
      client_->CancelAll();
      pool_->WaitIdle(now + kCancelGrace);
      break;
    }
    if (now >= next_tick) {
      if (options_.on_view) {
        options_.on_view(ViewState(now, last_row, Phase(done, reason, drain_deadline, now)));
      }
      next_tick = std::max(next_tick + options_.view_interval, now);
    }
  }
  const TimePoint end = clock_->Now();
  dispatcher.join();
  emit_rows_before(static_cast<int64_t>(std::floor(Elapsed(end))) + 1);
  if (sampler_ != nullptr) sampler_->Stop();
  if (options_.on_view) {
    LiveViewState last = ViewState(end, last_row, "done");
    last.finished = true;
    options_.on_view(last);
  }

  LiveReplayResult result;
  result.wall_s = Elapsed(end);
  std::lock_guard lock(mu_);
  result.stop_reason = stop_reason_;
  result.overloaded = overloaded_;
  for (size_t i = 0; i < slots_.size(); ++i) {
    const Slot& slot = slots_[i];
    if (!slot.offered) continue;
    RequestRecord record =
        slot.finished ? slot.record : FailedRequest(schedule_.requests[i], kInterrupted);
    if (record.status == kInterrupted) ++result.cut_off;
    result.records.push_back(std::move(record));
  }
  return result;
}

}  // namespace pdpool::bench::live_replay
