// Clock: injected time source, so backoff, heartbeats and stabilization windows run on a fake
// clock in tests. RealClock and FakeClock are thread-safe.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>

namespace pdpool {

using Duration = std::chrono::nanoseconds;
using TimePoint = std::chrono::time_point<std::chrono::steady_clock, Duration>;
using WallTime = std::chrono::time_point<std::chrono::system_clock, Duration>;

class Clock {
 public:
  virtual ~Clock() = default;
  // Monotonic time, for intervals and deadlines.
  virtual TimePoint Now() const = 0;
  // Wall time, for timestamps written to the API server.
  virtual WallTime WallNow() const = 0;
};

class RealClock final : public Clock {
 public:
  TimePoint Now() const override { return std::chrono::steady_clock::now(); }
  WallTime WallNow() const override { return std::chrono::system_clock::now(); }
  static RealClock& Instance();
};

// Time moves only when a test calls Advance/Set.
class FakeClock final : public Clock {
 public:
  explicit FakeClock(WallTime wall_start = WallTime(std::chrono::seconds(1'700'000'000)))
      : wall_start_(wall_start) {}
  TimePoint Now() const override {
    std::lock_guard lock(mu_);
    return now_;
  }
  WallTime WallNow() const override {
    std::lock_guard lock(mu_);
    return wall_start_ + (now_ - TimePoint());
  }
  void Advance(Duration d) {
    std::lock_guard lock(mu_);
    now_ += d;
  }

 private:
  mutable std::mutex mu_;
  TimePoint now_{};
  WallTime wall_start_;
};

// RFC 3339 UTC with seconds ("2026-11-27T16:01:20Z"), as metav1.Time serializes.
std::string FormatRfc3339(WallTime t);
// RFC 3339 with microseconds, as metav1.MicroTime (Lease renewTime) serializes.
std::string FormatRfc3339Micro(WallTime t);
// Parses both forms; returns false on malformed input.
bool ParseRfc3339(const std::string& s, WallTime* out);

}  // namespace pdpool
