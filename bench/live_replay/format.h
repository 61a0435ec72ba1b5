// Format: how the live view and the summary write times and durations for people
// ("120 ms", "1.25 s", "inf", "02:05"). Pure functions; thread-safe.
#pragma once

#include <string>

namespace pdpool::bench::live_replay {

// "850 us" below 1 ms, "12.3 ms" below 100 ms, "450 ms" below 1 s, "1.25 s" below 100 s, then
// "125 s"; "inf" for +inf, "-" for negative or NaN (unknown).
std::string FormatSeconds(double seconds);
// "mm:ss", or "h:mm:ss" from an hour on; negatives as 00:00.
std::string FormatClock(double seconds);

}  // namespace pdpool::bench::live_replay
