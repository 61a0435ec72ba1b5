// Report: CSV lines, summary numbers, summary.json and summary.md (see report.h).
#include "bench/live_replay/report.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>

#include "bench/live_replay/format.h"

namespace pdpool::bench::live_replay {
namespace {

std::string Fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*f", digits, v);
  return buf;
}

// A CSV cell of seconds: empty when unknown (negative) or infinite.
std::string SecondsCell(double v) { return v >= 0 && std::isfinite(v) ? Fixed(v, 6) : ""; }

std::string CsvQuote(const std::string& text) {
  if (text.find_first_of(",\"\n\r") == std::string::npos) return text;
  std::string out = "\"";
  for (char c : text) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

// JSON number, or null when infinite or NaN (JSON has neither).
Json Number(double v) { return std::isfinite(v) ? Json(v) : Json(nullptr); }

std::string AtMostTokens(int32_t cap) { return "≤ " + std::to_string(cap) + " tokens"; }

std::string Percent(double fraction) { return Fixed(fraction * 100, 2) + " %"; }

// 99 → "99", 99.9 → "99.9".
std::string Shortest(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", v);
  return buf;
}

}  // namespace

std::string TimeseriesHeader() {
  return "wall_s,trace_s,offered_rps,completed_rps,errors,inflight,ttft_p90_s,tpot_p90_s,"
         "prefill_ready,prefill_desired,decode_ready,decode_desired,gpus\n";
}

std::string TimeseriesLine(const TimeseriesRow& row) {
  const SecondStats& s = row.stats;
  std::string line = std::to_string(s.second) + "," + Fixed(row.trace_s, 1) + "," +
                     std::to_string(s.offered) + "," + std::to_string(s.completed) + "," +
                     std::to_string(s.errors) + "," + std::to_string(s.inflight) + "," +
                     (s.ttft_p90_s ? SecondsCell(*s.ttft_p90_s) : "") + "," +
                     (s.tpot_p90_s ? SecondsCell(*s.tpot_p90_s) : "") + ",";
  if (row.pool) {
    line += std::to_string(row.pool->prefill_ready) + "," +
            std::to_string(row.pool->prefill_desired) + "," +
            std::to_string(row.pool->decode_ready) + "," +
            std::to_string(row.pool->decode_desired) + "," + std::to_string(row.pool->gpus);
  } else {
    line += ",,,,";
  }
  return line + "\n";
}

std::string RequestsCsv(const std::vector<RequestRecord>& records, const replay::SloLimits& slo) {
  std::string out = "arrival_s,prompt_tokens,output_tokens,status,ttft_s,tpot_s,e2e_s,met_slo\n";
  for (const RequestRecord& r : records) {
    const replay::RequestOutcome& o = r.outcome;
    out += Fixed(o.arrival_s, 3) + "," + std::to_string(o.prompt_tokens) + "," +
           std::to_string(o.output_tokens) + "," + CsvQuote(r.status) + "," +
           SecondsCell(o.ttft_s) + "," + SecondsCell(o.tpot_s) + "," + SecondsCell(r.e2e_s) + "," +
           (replay::MeetsSlo(o, slo) ? "1" : "0") + "\n";
  }
  return out;
}

const char* StopReasonName(StopReason reason) {
  switch (reason) {
    case StopReason::kCompleted:
      return "completed";
    case StopReason::kDuration:
      return "duration";
    case StopReason::kSignal:
      return "signal";
  }
  return "completed";
}

RunNumbers ComputeNumbers(const std::vector<RequestRecord>& records,
                          const RunDescription& description, const RunFacts& facts) {
  std::vector<replay::RequestOutcome> outcomes;
  std::vector<double> ttft, tpot;
  outcomes.reserve(records.size());
  for (const RequestRecord& r : records) {
    outcomes.push_back(r.outcome);
    // As Summarize counts them: no first token is infinitely late; TPOT of completed ones.
    ttft.push_back(r.outcome.ttft_s >= 0 ? r.outcome.ttft_s
                                         : std::numeric_limits<double>::infinity());
    if (r.outcome.completed) tpot.push_back(r.outcome.tpot_s);
  }
  RunNumbers n;
  n.summary = replay::Summarize(outcomes, description.slo,
                                facts.gpus_sampled ? facts.gpu_seconds : 0, facts.wall_s);
  n.ttft_at_percentile_s = replay::Percentile(&ttft, description.percentile);
  n.tpot_at_percentile_s = replay::Percentile(&tpot, description.percentile);
  n.slo_met = n.summary.requests > 0 && n.summary.attainment * 100 >= description.percentile - 1e-9;
  n.output_tokens_per_s =
      facts.wall_s > 0 ? static_cast<double>(n.summary.output_tokens) / facts.wall_s : 0;
  return n;
}

Json SummaryJson(const RunDescription& d, const RunFacts& f, const RunNumbers& n) {
  const replay::Summary& s = n.summary;
  const ScheduleOptions& o = d.schedule_options;
  Json gpus = nullptr;
  if (f.gpus_sampled) {
    gpus = {{"pool", d.pool},
            {"gpu_seconds", f.gpu_seconds},
            {"gpu_hours", s.gpu_hours},
            {"mean_gpus", s.mean_gpus},
            {"peak_gpus", f.peak_gpus},
            {"goodput_per_gpu", s.goodput_per_gpu},
            {"sample_failures", f.sample_failures}};
  }
  return {{"router", d.router},
          {"model", d.model},
          {"trace",
           {{"path", d.trace_path},
            {"window_start_s", o.window_start_s},
            {"window_end_s", o.window_end_s},
            {"window_s", d.window_s},
            {"window_requests", d.window_requests},
            {"rate_multiplier", o.rate_multiplier},
            {"time_compression", o.time_compression},
            {"seed", o.seed},
            {"max_prompt_tokens", o.max_prompt_tokens},
            {"max_output_tokens", o.max_output_tokens},
            {"prompt_capped", d.prompt_capped},
            {"output_capped", d.output_capped},
            {"scheduled", d.scheduled}}},
          {"slo",
           {{"ttft_s", d.slo.ttft_s},
            {"tpot_s", d.slo.tpot_s},
            {"percentile", d.percentile},
            {"met", n.slo_met}}},
          {"run",
           {{"wall_s", f.wall_s},
            {"stop_reason", StopReasonName(f.stop_reason)},
            {"interrupted", f.stop_reason != StopReason::kCompleted},
            {"not_sent", d.scheduled - s.requests},
            {"client_overloaded", f.overloaded},
            {"cut_off", f.cut_off}}},
          {"results",
           {{"requests", s.requests},
            {"completed", s.completed},
            {"failed", s.failed},
            {"met_slo", s.met_slo},
            {"attainment", s.attainment},
            {"ttft_p90_s", Number(s.ttft_p90_s)},
            {"ttft_p99_s", Number(s.ttft_p99_s)},
            {"tpot_p90_s", Number(s.tpot_p90_s)},
            {"tpot_p99_s", Number(s.tpot_p99_s)},
            {"ttft_at_percentile_s", Number(n.ttft_at_percentile_s)},
            {"tpot_at_percentile_s", Number(n.tpot_at_percentile_s)},
            {"output_tokens", s.output_tokens},
            {"good_output_tokens", s.good_output_tokens},
            {"output_tokens_per_s", n.output_tokens_per_s}}},
          {"gpus", gpus}};
}

std::string SummaryMarkdown(const RunDescription& d, const RunFacts& f, const RunNumbers& n) {
  const replay::Summary& s = n.summary;
  const ScheduleOptions& o = d.schedule_options;
  std::string md = "# pdpool-live-replay\n\n";
  md += "- Router: " + d.router + ", model `" + d.model + "`\n";
  md += "- Trace: `" + d.trace_path + "`, window " + Shortest(o.window_start_s) + "–" +
        (o.window_end_s > 0 ? Shortest(o.window_end_s) + " s" : "end") + " (" +
        Fixed(d.window_s, 0) + " s of trace, " + std::to_string(d.window_requests) +
        " requests), rate multiplier " + Shortest(o.rate_multiplier) + " (seed " +
        std::to_string(o.seed) + "): " + std::to_string(d.scheduled) +
        " requests scheduled; time compression " + Shortest(o.time_compression) + "× (" +
        FormatSeconds(d.window_s / o.time_compression) + " of wall time)\n";
  std::string caps;
  if (o.max_prompt_tokens > 0) {
    caps += "prompt " + AtMostTokens(o.max_prompt_tokens) + " (" + std::to_string(d.prompt_capped) +
            " requests capped)";
  }
  if (o.max_output_tokens > 0) {
    caps += std::string(caps.empty() ? "" : ", ") + "output " + AtMostTokens(o.max_output_tokens) +
            " (" + std::to_string(d.output_capped) + " requests capped)";
  }
  md += "- Caps: " + (caps.empty() ? std::string("none") : caps) + "\n";
  md += "- SLO: TTFT ≤ " + FormatSeconds(d.slo.ttft_s) + " and TPOT ≤ " +
        FormatSeconds(d.slo.tpot_s) + " for ≥ " + Shortest(d.percentile) + " % of requests: **" +
        (n.slo_met ? "met" : "missed") + "** (attainment " + Percent(s.attainment) + "; TTFT p" +
        Shortest(d.percentile) + " " + FormatSeconds(n.ttft_at_percentile_s) + ", TPOT p" +
        Shortest(d.percentile) + " " + FormatSeconds(n.tpot_at_percentile_s) + ")\n";
  std::string run = "- Run: " + FormatSeconds(f.wall_s) + " wall, ";
  switch (f.stop_reason) {
    case StopReason::kCompleted:
      run += "completed";
      break;
    case StopReason::kDuration:
      run += "stopped at --duration";
      break;
    case StopReason::kSignal:
      run += "**interrupted** (signal)";
      break;
  }
  if (d.scheduled > s.requests) {
    run += "; " + std::to_string(d.scheduled - s.requests) + " scheduled requests never sent";
  }
  if (f.cut_off > 0) {
    run += "; " + std::to_string(f.cut_off) + " cut off in flight (failed: interrupted)";
  }
  md += run + "\n";
  md += "- Pool: " +
        (f.gpus_sampled ? d.pool + ", sampled every second (" + std::to_string(f.sample_failures) +
                              " samples failed)"
                        : std::string("not sampled (no --pool): no GPU numbers")) +
        "\n\n";

  const std::string na = "n/a";
  md += "| metric | value |\n| --- | --- |\n";
  md += "| requests | " + std::to_string(s.requests) +
        (f.overloaded > 0 ? " (" + std::to_string(f.overloaded) + " refused: client overloaded)"
                          : "") +
        " |\n";
  md += "| completed | " + std::to_string(s.completed) + " |\n";
  md += "| failed | " + std::to_string(s.failed) + " |\n";
  md += "| SLO attainment | " + Percent(s.attainment) + " |\n";
  md += "| TTFT p90 / p99 | " + FormatSeconds(s.ttft_p90_s) + " / " + FormatSeconds(s.ttft_p99_s) +
        " |\n";
  md += "| TPOT p90 / p99 | " + FormatSeconds(s.tpot_p90_s) + " / " + FormatSeconds(s.tpot_p99_s) +
        " |\n";
  md += "| GPU-hours | " + (f.gpus_sampled ? Fixed(s.gpu_hours, 4) : na) + " |\n";
  md += "| mean / peak GPUs | " +
        (f.gpus_sampled ? Fixed(s.mean_gpus, 1) + " / " + std::to_string(f.peak_gpus) : na) +
        " |\n";
  md += "| goodput per GPU (good output tokens / GPU-second) | " +
        (f.gpus_sampled ? Fixed(s.goodput_per_gpu, 1) : na) + " |\n";
  md += "| output tokens/s | " + Fixed(n.output_tokens_per_s, 1) + " |\n";
  return md;
}

Status WriteTextFile(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (f) f << text;
  if (f) f.flush();
  if (!f) {
    return Status::Unavailable("cannot write " + path + ": " + std::strerror(errno));
  }
  return Status::Ok();
}

}  // namespace pdpool::bench::live_replay
