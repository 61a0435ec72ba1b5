// Format: times for people (see format.h).
#include "bench/live_replay/format.h"

#include <cmath>
#include <cstdint>
#include <cstdio>

namespace pdpool::bench::live_replay {

std::string FormatSeconds(double seconds) {
  if (std::isinf(seconds) && seconds > 0) return "inf";
  if (!(seconds >= 0)) return "-";
  char buf[32];
  if (seconds < 1e-3) {
    std::snprintf(buf, sizeof(buf), "%.0f us", seconds * 1e6);
  } else if (seconds < 0.1) {
    std::snprintf(buf, sizeof(buf), "%.1f ms", seconds * 1e3);
  } else if (seconds < 1) {
    std::snprintf(buf, sizeof(buf), "%.0f ms", seconds * 1e3);
  } else if (seconds < 100) {
    std::snprintf(buf, sizeof(buf), "%.2f s", seconds);
  } else {
    std::snprintf(buf, sizeof(buf), "%.0f s", seconds);
  }
  return buf;
}

std::string FormatClock(double seconds) {
  const int64_t s = seconds > 0 ? static_cast<int64_t>(seconds) : 0;
  char buf[32];
  if (s >= 3600) {
    std::snprintf(buf, sizeof(buf), "%lld:%02lld:%02lld", static_cast<long long>(s / 3600),
                  static_cast<long long>(s / 60 % 60), static_cast<long long>(s % 60));
  } else {
    std::snprintf(buf, sizeof(buf), "%02lld:%02lld", static_cast<long long>(s / 60),
                  static_cast<long long>(s % 60));
  }
  return buf;
}

}  // namespace pdpool::bench::live_replay
