// Trace: CSV parsing, windows, the rate multiplier and load statistics (see trace.h).
#include "bench/replay/trace.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

namespace pdpool::bench::replay {
namespace {

// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
int64_t DaysFromCivil(int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<int64_t>(doe) - 719468;
}

// "YYYY-MM-DD HH:MM:SS[.fraction]" → seconds since the epoch (UTC; the trace has no zone).
bool ParseTimestamp(const std::string& s, double* out) {
  int y = 0, mo = 0, d = 0, h = 0, mi = 0, sec = 0, consumed = 0;
  if (std::sscanf(s.c_str(), "%4d-%2d-%2d %2d:%2d:%2d%n", &y, &mo, &d, &h, &mi, &sec, &consumed) !=
      6) {
    return false;
  }
  if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60) return false;
  double fraction = 0;
  size_t i = static_cast<size_t>(consumed);
  if (i < s.size()) {
    if (s[i] != '.') return false;
    double scale = 0.1;
    for (++i; i < s.size(); ++i) {
      if (s[i] < '0' || s[i] > '9') return false;
      fraction += (s[i] - '0') * scale;
      scale /= 10;
    }
  }
  const int64_t days = DaysFromCivil(y, static_cast<unsigned>(mo), static_cast<unsigned>(d));
  *out = static_cast<double>(days * 86400 + h * 3600 + mi * 60 + sec) + fraction;
  return true;
}

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\r' || s.back() == ' ' || s.back() == '\t')) s.pop_back();
  size_t b = 0;
  while (b < s.size() && (s[b] == ' ' || s[b] == '\t')) ++b;
  return s.substr(b);
}

bool ParseCount(const std::string& s, int32_t* out) {
  if (s.empty()) return false;
  int64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + (c - '0');
    if (v > (int64_t{1} << 30)) return false;
  }
  *out = static_cast<int32_t>(v);
  return true;
}

void SortByArrival(std::vector<TraceRequest>* trace) {
  std::stable_sort(trace->begin(), trace->end(), [](const TraceRequest& a, const TraceRequest& b) {
    return a.arrival_s < b.arrival_s;
  });
}

}  // namespace

StatusOr<std::vector<TraceRequest>> ParseTraceCsv(const std::string& text,
                                                  const std::string& source_name) {
  std::istringstream in(text);
  std::string line;
  if (!std::getline(in, line)) {
    return Status::InvalidArgument(source_name + ": empty file (expected the header " +
                                   "TIMESTAMP,ContextTokens,GeneratedTokens)");
  }
  if (Trim(line) != "TIMESTAMP,ContextTokens,GeneratedTokens") {
    return Status::InvalidArgument(source_name +
                                   ":1: header must be TIMESTAMP,ContextTokens,GeneratedTokens, "
                                   "got \"" +
                                   Trim(line) + "\"");
  }
  std::vector<TraceRequest> out;
  std::vector<double> absolute;
  int line_no = 1;
  while (std::getline(in, line)) {
    ++line_no;
    line = Trim(line);
    if (line.empty()) continue;
    const size_t c1 = line.find(',');
    const size_t c2 = c1 == std::string::npos ? c1 : line.find(',', c1 + 1);
    if (c2 == std::string::npos || line.find(',', c2 + 1) != std::string::npos) {
      return Status::InvalidArgument(source_name + ":" + std::to_string(line_no) +
                                     ": expected 3 comma-separated fields, got \"" + line + "\"");
    }
    const std::string where = source_name + ":" + std::to_string(line_no) + ": ";
    double t = 0;
    if (!ParseTimestamp(Trim(line.substr(0, c1)), &t)) {
      return Status::InvalidArgument(where + "TIMESTAMP \"" + line.substr(0, c1) +
                                     "\" is not YYYY-MM-DD HH:MM:SS[.fraction]");
    }
    TraceRequest r;
    if (!ParseCount(Trim(line.substr(c1 + 1, c2 - c1 - 1)), &r.prompt_tokens) ||
        r.prompt_tokens < 1) {
      return Status::InvalidArgument(where + "ContextTokens must be an integer >= 1, got \"" +
                                     line.substr(c1 + 1, c2 - c1 - 1) + "\"");
    }
    if (!ParseCount(Trim(line.substr(c2 + 1)), &r.output_tokens) || r.output_tokens < 1) {
      return Status::InvalidArgument(where + "GeneratedTokens must be an integer >= 1, got \"" +
                                     line.substr(c2 + 1) + "\"");
    }
    absolute.push_back(t);
    out.push_back(r);
  }
  if (out.empty()) return Status::InvalidArgument(source_name + ": no requests after the header");
  const double first = *std::min_element(absolute.begin(), absolute.end());
  for (size_t i = 0; i < out.size(); ++i) out[i].arrival_s = absolute[i] - first;
  SortByArrival(&out);
  return out;
}

std::string DefaultTracePath() {
  for (const char* p : {"../shared/traces/azure_llm_2023_conv.csv",
                        "/work/shared/traces/azure_llm_2023_conv.csv"}) {
    if (std::filesystem::exists(p)) return p;
  }
  return "../shared/traces/azure_llm_2023_conv.csv";
}

StatusOr<std::vector<TraceRequest>> LoadTraceCsv(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return Status::InvalidArgument("--trace " + path + ": cannot open the file");
  std::stringstream buf;
  buf << f.rdbuf();
  return ParseTraceCsv(buf.str(), path);
}

std::vector<TraceRequest> SelectWindow(const std::vector<TraceRequest>& trace, double start_s,
                                       double end_s) {
  std::vector<TraceRequest> out;
  for (const TraceRequest& r : trace) {
    if (r.arrival_s < start_s) continue;
    if (end_s > 0 && r.arrival_s >= end_s) continue;
    TraceRequest c = r;
    c.arrival_s -= start_s;
    out.push_back(c);
  }
  return out;
}

StatusOr<std::vector<TraceRequest>> ApplyRateMultiplier(const std::vector<TraceRequest>& trace,
                                                        const MultiplierOptions& options) {
  if (!(options.multiplier > 0) || !std::isfinite(options.multiplier)) {
    return Status::InvalidArgument("--rate-multiplier must be > 0, got " +
                                   std::to_string(options.multiplier));
  }
  if (options.shift_window_s < 0) {
    return Status::InvalidArgument("shift window must be >= 0 s");
  }
  if (trace.empty()) return std::vector<TraceRequest>{};
  double span = options.span_s;
  if (span <= 0) {
    double last = 0;
    for (const TraceRequest& r : trace) last = std::max(last, r.arrival_s);
    span = last + 1e-3;
  }
  const int full = static_cast<int>(std::floor(options.multiplier));
  const double fraction = options.multiplier - full;
  std::mt19937_64 rng(options.seed);
  std::uniform_real_distribution<double> offset(0.0, std::max(options.shift_window_s, 1e-9));
  std::uniform_real_distribution<double> keep(0.0, 1.0);
  std::vector<TraceRequest> out;
  out.reserve(static_cast<size_t>(std::ceil(options.multiplier)) * trace.size());
  auto add_copy = [&](double shift, double keep_probability) {
    for (const TraceRequest& r : trace) {
      if (keep_probability < 1.0 && keep(rng) >= keep_probability) continue;
      TraceRequest c = r;
      c.arrival_s = std::fmod(r.arrival_s + shift, span);
      out.push_back(c);
    }
  };
  for (int k = 0; k < full; ++k) {
    add_copy(k == 0 || options.shift_window_s == 0 ? 0.0 : offset(rng), 1.0);
  }
  if (fraction > 1e-9) {
    const double shift = full == 0 || options.shift_window_s == 0 ? 0.0 : offset(rng);
    add_copy(shift, fraction);
  }
  SortByArrival(&out);
  return out;
}

TraceStats::Minute MinuteAt(const std::vector<TraceRequest>& trace, double start_s) {
  TraceStats::Minute m;
  m.start_s = start_s;
  auto lo = std::lower_bound(trace.begin(), trace.end(), start_s,
                             [](const TraceRequest& r, double t) { return r.arrival_s < t; });
  double n = 0, prompt = 0, output = 0;
  for (auto it = lo; it != trace.end() && it->arrival_s < start_s + 60.0; ++it) {
    n += 1;
    prompt += it->prompt_tokens;
    output += it->output_tokens;
  }
  m.requests_per_s = n / 60.0;
  m.prompt_tokens_per_s = prompt / 60.0;
  m.output_tokens_per_s = output / 60.0;
  m.mean_prompt_tokens = n > 0 ? prompt / n : 0;
  m.mean_output_tokens = n > 0 ? output / n : 0;
  return m;
}

TraceStats ComputeTraceStats(const std::vector<TraceRequest>& trace) {
  TraceStats s;
  s.requests = static_cast<int64_t>(trace.size());
  if (trace.empty()) return s;
  double prompt = 0, output = 0;
  for (const TraceRequest& r : trace) {
    prompt += r.prompt_tokens;
    output += r.output_tokens;
  }
  s.span_s = trace.back().arrival_s - trace.front().arrival_s;
  s.mean_rate = s.span_s > 0 ? static_cast<double>(trace.size()) / s.span_s : 0;
  s.mean_prompt_tokens = prompt / static_cast<double>(trace.size());
  s.mean_output_tokens = output / static_cast<double>(trace.size());
  // Sliding 60 s windows on a 1 s grid (the last one may run past the end: it is as short).
  const double last_start = std::max(0.0, trace.back().arrival_s - 60.0);
  bool first = true;
  for (double t = trace.front().arrival_s; first || t <= last_start + 1e-9; t += 1.0) {
    const TraceStats::Minute m = MinuteAt(trace, t);
    if (first || m.requests_per_s > s.busiest_by_requests.requests_per_s) {
      s.busiest_by_requests = m;
    }
    if (first || m.prompt_tokens_per_s > s.busiest_by_prompt_tokens.prompt_tokens_per_s) {
      s.busiest_by_prompt_tokens = m;
    }
    if (first || m.output_tokens_per_s > s.busiest_by_output_tokens.output_tokens_per_s) {
      s.busiest_by_output_tokens = m;
    }
    first = false;
  }
  return s;
}

}  // namespace pdpool::bench::replay
