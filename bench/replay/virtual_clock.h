// VirtualClock: the replay's clock. The event loop sets it to each event's time before it
// calls into the schedulers, so every worker's Scheduler (which takes a Clock) runs in virtual
// time. No lock (FakeClock takes one per Now(), and the replay calls Now() on every step).
// Not thread-safe: one per simulation, used by its thread only.
#pragma once

#include "common/clock.h"

namespace pdpool::bench::replay {

class VirtualClock final : public Clock {
 public:
  // Wall time starts at the same instant FakeClock's does.
  explicit VirtualClock(WallTime wall_start = WallTime(std::chrono::seconds(1'700'000'000)))
      : wall_start_(wall_start) {}
  TimePoint Now() const override { return now_; }
  WallTime WallNow() const override { return wall_start_ + (now_ - TimePoint()); }
  void Set(TimePoint t) { now_ = t; }

  static TimePoint At(double seconds) {
    return TimePoint(Duration(static_cast<Duration::rep>(seconds * 1e9)));
  }
  static double Seconds(TimePoint t) {
    return static_cast<double>(t.time_since_epoch().count()) * 1e-9;
  }

 private:
  TimePoint now_{};
  WallTime wall_start_;
};

}  // namespace pdpool::bench::replay
