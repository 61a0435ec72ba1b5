// Clock implementation: the process-wide RealClock and RFC 3339 formatting/parsing of wall time
// as the API server writes it (metav1.Time, metav1.MicroTime). All functions are pure and
// thread-safe; RealClock::Instance() is a function-local static (thread-safe initialisation).
#include "common/clock.h"

#include <cstdint>
#include <cstdio>

namespace pdpool {

RealClock& RealClock::Instance() {
  static RealClock clock;
  return clock;
}

namespace {

// Splits t into its UTC civil date/time and the nanoseconds within the second. Floors, so times
// before 1970 still format as the second they fall in.
struct CivilTime {
  int year;
  unsigned month, day, hour, minute, second;
  int64_t nanos;
};

CivilTime ToCivil(WallTime t) {
  using namespace std::chrono;
  const sys_days day_point = floor<days>(t);
  const year_month_day ymd{day_point};
  const Duration in_day = t - day_point;
  const int64_t ns = in_day.count();  // in [0, 86400e9)
  const int64_t secs = ns / 1'000'000'000;
  return CivilTime{int(ymd.year()),       unsigned(ymd.month()),      unsigned(ymd.day()),
                   unsigned(secs / 3600), unsigned((secs / 60) % 60), unsigned(secs % 60),
                   ns % 1'000'000'000};
}

std::string FormatCivil(const CivilTime& c, bool micro) {
  char buf[64];
  if (micro) {
    std::snprintf(buf, sizeof buf, "%04d-%02u-%02uT%02u:%02u:%02u.%06lldZ", c.year, c.month, c.day,
                  c.hour, c.minute, c.second, static_cast<long long>(c.nanos / 1000));
  } else {
    std::snprintf(buf, sizeof buf, "%04d-%02u-%02uT%02u:%02u:%02uZ", c.year, c.month, c.day, c.hour,
                  c.minute, c.second);
  }
  return buf;
}

// Reads exactly `n` decimal digits at s[*pos]; advances *pos.
bool ReadDigits(const std::string& s, size_t* pos, int n, int* out) {
  if (*pos + n > s.size()) return false;
  int v = 0;
  for (int i = 0; i < n; ++i) {
    const char ch = s[*pos + i];
    if (ch < '0' || ch > '9') return false;
    v = v * 10 + (ch - '0');
  }
  *pos += n;
  *out = v;
  return true;
}

bool Expect(const std::string& s, size_t* pos, char a, char b = '\0') {
  if (*pos >= s.size()) return false;
  const char ch = s[*pos];
  if (ch != a && (b == '\0' || ch != b)) return false;
  ++*pos;
  return true;
}

}  // namespace

std::string FormatRfc3339(WallTime t) { return FormatCivil(ToCivil(t), /*micro=*/false); }

std::string FormatRfc3339Micro(WallTime t) { return FormatCivil(ToCivil(t), /*micro=*/true); }

bool ParseRfc3339(const std::string& s, WallTime* out) {
  using namespace std::chrono;
  size_t pos = 0;
  int y, mo, d, h, mi, sec;
  if (!ReadDigits(s, &pos, 4, &y) || !Expect(s, &pos, '-') || !ReadDigits(s, &pos, 2, &mo) ||
      !Expect(s, &pos, '-') || !ReadDigits(s, &pos, 2, &d) || !Expect(s, &pos, 'T', 't') ||
      !ReadDigits(s, &pos, 2, &h) || !Expect(s, &pos, ':') || !ReadDigits(s, &pos, 2, &mi) ||
      !Expect(s, &pos, ':') || !ReadDigits(s, &pos, 2, &sec)) {
    return false;
  }
  const year_month_day ymd{year{y}, month{unsigned(mo)}, day{unsigned(d)}};
  if (!ymd.ok() || h > 23 || mi > 59 || sec > 59) return false;

  int64_t nanos = 0;
  if (pos < s.size() && s[pos] == '.') {
    ++pos;
    int digits = 0;
    while (pos < s.size() && s[pos] >= '0' && s[pos] <= '9') {
      if (digits < 9) nanos = nanos * 10 + (s[pos] - '0');
      ++digits;
      ++pos;
    }
    if (digits == 0) return false;
    for (int i = digits; i < 9; ++i) nanos *= 10;
  }

  int64_t offset_seconds = 0;
  if (pos >= s.size()) return false;
  if (s[pos] == 'Z' || s[pos] == 'z') {
    ++pos;
  } else if (s[pos] == '+' || s[pos] == '-') {
    const int sign = s[pos] == '+' ? 1 : -1;
    ++pos;
    int oh, om;
    if (!ReadDigits(s, &pos, 2, &oh) || !Expect(s, &pos, ':') || !ReadDigits(s, &pos, 2, &om) ||
        oh > 23 || om > 59) {
      return false;
    }
    offset_seconds = sign * (oh * 3600 + om * 60);
  } else {
    return false;
  }
  if (pos != s.size()) return false;

  const Duration since_epoch = sys_days(ymd).time_since_epoch() + hours(h) + minutes(mi) +
                               seconds(sec) - seconds(offset_seconds) + nanoseconds(nanos);
  *out = WallTime(since_epoch);
  return true;
}

}  // namespace pdpool
