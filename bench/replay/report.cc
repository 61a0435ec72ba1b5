// Report (see report.h).
#include "bench/replay/report.h"

#include <cmath>
#include <cstdarg>
#include <cstdio>

namespace pdpool::bench::replay {
namespace {

std::string Format(const char* fmt, ...) {
  char buf[1024];
  va_list args;
  va_start(args, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, args);
  va_end(args);
  return buf;
}

std::string Seconds(double s) {
  if (std::isinf(s)) return "inf";
  if (s < 1) return Format("%.0fms", s * 1000);
  return Format("%.2fs", s);
}

const RunResult* Find(const Comparison& c, const std::string& name) {
  for (const RunResult& r : c.results) {
    if (r.policy == name) return &r;
  }
  return nullptr;
}

double Target(const std::string& other) {
  if (other == "static-peak") return 1.67;
  if (other == "dynamo-style") return 1.25;
  return 0;  // none in TARGETS.md
}

std::string Row(const RunResult& r) {
  const Summary& s = r.summary;
  return Format(
      "| %-13s | %7.2f%% | %8s | %8s | %8s | %8s | %9.2f | %6.1f | %4d | %14.1f | %4d | %5d | "
      "%6.1f | %5.1f |\n",
      r.policy.c_str(), s.attainment * 100, Seconds(s.ttft_p90_s).c_str(),
      Seconds(s.ttft_p99_s).c_str(), Seconds(s.tpot_p90_s).c_str(), Seconds(s.tpot_p99_s).c_str(),
      s.gpu_hours, s.mean_gpus, r.peak_gpus, s.goodput_per_gpu, r.scale_actions, r.moves,
      r.wall_seconds, r.cpu_seconds);
}

const char* kHeader =
    "| policy        | SLO att. | TTFT p90 | TTFT p99 | TPOT p90 | TPOT p99 | GPU-hours | mean "
    "G | peak | good tok/s/GPU | acts | moves | wall s | cpu s |\n"
    "| ------------- | -------- | -------- | -------- | -------- | -------- | --------- | ------ "
    "| ---- | -------------- | ---- | ----- | ------ | ----- |\n";

}  // namespace

std::string ScenarioText(const ReportContext& ctx) {
  const Scenario& sc = *ctx.scenario;
  std::string out;
  out +=
      "pdpool-replay: autoscaling policies on one replayed trace — virtual time, the real "
      "agent::Scheduler per worker, sim backend (PerfModel) step times\n";
  out += Format(
      "trace         %s, window %.0f–%.0f s: %lld requests, %.2f req/s, prompt %.0f / "
      "output %.0f tokens mean\n",
      sc.trace_path.c_str(), sc.window_start_s, sc.window_start_s + ctx.original.span_s,
      static_cast<long long>(ctx.original.requests), ctx.original.mean_rate,
      ctx.original.mean_prompt_tokens, ctx.original.mean_output_tokens);
  out += Format(
      "rate          x%.3g, applied as %d time-shifted copies of the window merged%s "
      "(copy 0 as is, each other shifted by a seeded uniform offset in [0, %.0f) s, "
      "wrapping at the window's end; seed %llu) — not time compression: the trace's "
      "minute-to-minute shape is kept\n",
      sc.rate_multiplier, static_cast<int>(std::floor(sc.rate_multiplier)),
      sc.rate_multiplier != std::floor(sc.rate_multiplier)
          ? Format(" plus a copy thinned to %.0f%%",
                   (sc.rate_multiplier - std::floor(sc.rate_multiplier)) * 100)
                .c_str()
          : "",
      sc.shift_window_s, static_cast<unsigned long long>(sc.seed));
  const auto& m = ctx.replayed.busiest_by_requests;
  out += Format(
      "replayed      %lld requests, %.1f req/s mean; busiest minute (t=%.0f s) %.1f "
      "req/s, %.0f prompt tok/s, %.0f output tok/s\n",
      static_cast<long long>(ctx.replayed.requests), ctx.replayed.mean_rate, m.start_s,
      m.requests_per_s, m.prompt_tokens_per_s, m.output_tokens_per_s);
  out += Format(
      "model / GPU   %s on %s; prefill worker %d GPU(s), decode worker %d GPU(s) "
      "(tensor parallel); scheduler max_batched_tokens %d, max_running %d, "
      "max_model_len %d, KV block %d, gpu_memory_utilization %.2f\n",
      sc.model_name.c_str(), sc.gpu.c_str(), sc.prefill_tp, sc.decode_tp,
      sc.scheduler.max_batched_tokens, sc.scheduler.max_running, sc.scheduler.max_model_len,
      sc.scheduler.block_size, sc.gpu_memory_utilization);
  out += Format(
      "SLO           TTFT <= %s and TPOT <= %s per request (DistServe attainment)%s; "
      "planner signals at p%.3g\n",
      Seconds(sc.ttft_s).c_str(), Seconds(sc.tpot_s).c_str(),
      ctx.slo_name.empty() ? "" : (" — " + ctx.slo_name).c_str(), sc.percentile);
  out += Format(
      "GPUs          %d (the rack: the most the pool may hold); new worker start %.0f "
      "s (holds its GPUs while loading); in-place move = drain + %.1f s; removed "
      "workers drain and hold their GPUs until empty\n",
      sc.gpus, sc.worker_start_s, sc.move_s);
  out += Format(
      "scoring       from t=%.0f s: earlier requests are replayed (every policy "
      "adapts to the trace's start) but not scored; GPU-seconds count from then\n",
      sc.score_from_s);
  out += Format(
      "clients       503 (no worker with room) retried after %.0f s; a request not "
      "started within %.0f s fails; reservations expire after %.0f s unclaimed\n",
      sc.retry_after_s, sc.client_timeout_s, sc.reservation_ttl_s);
  return out;
}

std::string ComparisonText(const ReportContext& ctx, const Comparison& c) {
  const Scenario& sc = *ctx.scenario;
  std::string out;
  out += Format(
      "initial size  every autoscaler starts warm at prefill %d, decode %d: PerfModel "
      "capacity at 80%% of the busiest minute of the warm-up (a pool already running "
      "at the trace's opening load)\n",
      c.initial.prefill, c.initial.decode);
  if (Find(c, "static-peak") != nullptr) {
    const StaticPeakSizing& sp = c.static_peak;
    const int gpus = sp.chosen.prefill * sc.prefill_tp + sp.chosen.decode * sc.decode_tp;
    if (sp.by_replay) {
      out += Format(
          "static-peak   prefill %d, decode %d (%d GPUs): seed %d:%d from PerfModel "
          "capacity at 80%% of the busiest minutes' load, then replays of those "
          "minutes: %s (%.1f s)\n",
          sp.chosen.prefill, sp.chosen.decode, gpus, sp.seed.prefill, sp.seed.decode,
          sp.met ? "the smallest meeting 99% attainment there"
                 : "NONE met 99% within the GPUs, the largest tried",
          sp.wall_seconds);
    } else {
      out += Format(
          "static-peak   prefill %d, decode %d (%d GPUs): PerfModel capacity at 80%% "
          "of the busiest minutes' load (--static-sizing model: no replays)\n",
          sp.chosen.prefill, sp.chosen.decode, gpus);
    }
  }
  out += "\n";
  out += kHeader;
  for (const RunResult& r : c.results) out += Row(r);
  out += Format(
      "\n(scored: requests arriving from t=%.0f s on, GPU-seconds from then; mean G: "
      "GPUs held on average; acts: scaling decisions that changed a role's replica "
      "target; moves: workers moved in place; wall s / cpu s: real and CPU seconds "
      "this replay took on this machine)\n",
      sc.score_from_s);
  const RunResult* pd = Find(c, "pdpool");
  if (pd != nullptr) {
    out +=
        "\n| pdpool vs     | goodput/GPU ratio | target | GPU-hours ratio | good tokens ratio | "
        "result |\n| ------------- | ----------------- | ------ | --------------- | "
        "----------------- | ------ |\n";
    for (const RunResult& r : c.results) {
      if (&r == pd) continue;
      const double ratio = r.summary.goodput_per_gpu > 0
                               ? pd->summary.goodput_per_gpu / r.summary.goodput_per_gpu
                               : INFINITY;
      const double target = Target(r.policy);
      out += Format(
          "| %-13s | %17.3f | %6s | %15.3f | %17.3f | %6s |\n", r.policy.c_str(), ratio,
          target > 0 ? Format(">=%.2f", target).c_str() : "-",
          r.summary.gpu_hours > 0 ? pd->summary.gpu_hours / r.summary.gpu_hours : 0.0,
          r.summary.good_output_tokens > 0
              ? static_cast<double>(pd->summary.good_output_tokens) / r.summary.good_output_tokens
              : 0.0,
          target > 0 ? (ratio >= target ? "met" : "MISSED") : "-");
    }
    out += Format(
        "| attainment    | pdpool %.2f%%     | >=99%%  |                 |      "
        "             | %6s |\n",
        pd->summary.attainment * 100, pd->summary.attainment >= 0.99 ? "met" : "MISSED");
  }
  return out;
}

std::string FixedBudgetText(const ReportContext& ctx, const FixedBudgetComparison& c) {
  const Scenario& sc = *ctx.scenario;
  std::string out;
  out += Format(
      "fixed budget  all %d GPUs held for the whole replay; every fixed split "
      "prefill:decode vs pdpool's planner rebalancing in place (moves only), starting "
      "from %d:%d (the split proportional to the trace's mean demand)\n\n",
      sc.gpus, c.pdpool_start.prefill, c.pdpool_start.decode);
  out += kHeader;
  for (const RunResult& r : c.splits) out += Row(r);
  out += Row(c.pdpool);
  if (c.best_index >= 0) {
    const RunResult& best = c.splits[static_cast<size_t>(c.best_index)];
    const double ratio = best.summary.goodput_per_gpu > 0
                             ? c.pdpool.summary.goodput_per_gpu / best.summary.goodput_per_gpu
                             : INFINITY;
    out += Format(
        "\nbest fixed split %s: %.1f good tok/s/GPU; pdpool %.1f; ratio %.3f (target "
        ">= 1.088): %s\n",
        best.policy.c_str(), best.summary.goodput_per_gpu, c.pdpool.summary.goodput_per_gpu, ratio,
        ratio >= 1.088 ? "met" : "MISSED");
  }
  return out;
}

Json ScenarioJson(const ReportContext& ctx) {
  const Scenario& sc = *ctx.scenario;
  return Json{{"trace", sc.trace_path},
              {"time_window_s", {sc.window_start_s, sc.window_start_s + ctx.original.span_s}},
              {"trace_requests", ctx.original.requests},
              {"rate_multiplier", sc.rate_multiplier},
              {"rate_multiplier_method",
               "time-shifted copies merged (uniform offsets in [0, shift_window_s), wrapped); "
               "fractional part as a thinned copy"},
              {"shift_window_s", sc.shift_window_s},
              {"seed", sc.seed},
              {"replayed_requests", ctx.replayed.requests},
              {"replayed_mean_rate", ctx.replayed.mean_rate},
              {"busiest_minute_rate", ctx.replayed.busiest_by_requests.requests_per_s},
              {"model", sc.model_name},
              {"gpu", sc.gpu},
              {"prefill_gpus_per_worker", sc.prefill_tp},
              {"decode_gpus_per_worker", sc.decode_tp},
              {"max_batched_tokens", sc.scheduler.max_batched_tokens},
              {"max_running", sc.scheduler.max_running},
              {"max_model_len", sc.scheduler.max_model_len},
              {"ttft_s", sc.ttft_s},
              {"tpot_s", sc.tpot_s},
              {"slo", ctx.slo_name},
              {"percentile", sc.percentile},
              {"gpus", sc.gpus},
              {"worker_start_s", sc.worker_start_s},
              {"move_s", sc.move_s},
              {"score_from_s", sc.score_from_s}};
}

Json RunJson(const RunResult& r) {
  const Summary& s = r.summary;
  Json timeline = Json::array();
  for (const TimelinePoint& p : r.timeline) {
    timeline.push_back({p.t_s, p.prefill_ready, p.decode_ready, p.prefill_desired, p.decode_desired,
                        p.gpus_held, p.arrivals_per_s});
  }
  auto finite = [](double v) { return std::isfinite(v) ? Json(v) : Json(nullptr); };
  return Json{{"policy", r.policy},
              {"requests", s.requests},
              {"completed", s.completed},
              {"failed", s.failed},
              {"met_slo", s.met_slo},
              {"slo_attainment", s.attainment},
              {"ttft_p90_s", finite(s.ttft_p90_s)},
              {"ttft_p99_s", finite(s.ttft_p99_s)},
              {"tpot_p90_s", finite(s.tpot_p90_s)},
              {"tpot_p99_s", finite(s.tpot_p99_s)},
              {"output_tokens", s.output_tokens},
              {"good_output_tokens", s.good_output_tokens},
              {"duration_s", s.duration_s},
              {"gpu_seconds", s.gpu_seconds},
              {"gpu_hours", s.gpu_hours},
              {"mean_gpus", s.mean_gpus},
              {"peak_gpus", r.peak_gpus},
              {"goodput_tokens_per_gpu_second", s.goodput_per_gpu},
              {"throughput_tokens_per_gpu_second", s.throughput_per_gpu},
              {"scale_actions", r.scale_actions},
              {"moves", r.moves},
              {"workers_started", r.workers_started},
              {"initial_prefill", r.initial_prefill},
              {"initial_decode", r.initial_decode},
              {"preemptions", r.preemptions},
              {"client_retries", r.client_retries},
              {"prefill_retries", r.prefill_retries},
              {"engine_steps", r.engine_steps},
              {"sequence_steps", r.sequence_steps},
              {"wall_seconds", r.wall_seconds},
              {"cpu_seconds", r.cpu_seconds},
              {"timeline_columns",
               {"t_s", "prefill_ready", "decode_ready", "prefill_desired", "decode_desired",
                "gpus_held", "arrivals_per_s"}},
              {"timeline", timeline}};
}

Json ComparisonJson(const ReportContext& ctx, const Comparison& c) {
  Json out{{"scenario", ScenarioJson(ctx)},
           {"initial", {{"prefill", c.initial.prefill}, {"decode", c.initial.decode}}},
           {"static_peak_sizing",
            {{"seed", {c.static_peak.seed.prefill, c.static_peak.seed.decode}},
             {"chosen", {c.static_peak.chosen.prefill, c.static_peak.chosen.decode}},
             {"met", c.static_peak.met},
             {"log", c.static_peak.log}}}};
  Json policies = Json::array();
  for (const RunResult& r : c.results) policies.push_back(RunJson(r));
  out["policies"] = policies;
  const RunResult* pd = Find(c, "pdpool");
  if (pd != nullptr) {
    Json ratios = Json::object();
    for (const RunResult& r : c.results) {
      if (&r == pd) continue;
      ratios[r.policy] = {
          {"goodput_per_gpu_ratio",
           r.summary.goodput_per_gpu > 0
               ? Json(pd->summary.goodput_per_gpu / r.summary.goodput_per_gpu)
               : Json(nullptr)},
          {"gpu_hours_ratio", r.summary.gpu_hours > 0
                                  ? Json(pd->summary.gpu_hours / r.summary.gpu_hours)
                                  : Json(nullptr)},
          {"target", Target(r.policy) > 0 ? Json(Target(r.policy)) : Json(nullptr)}};
    }
    out["pdpool_vs"] = ratios;
  }
  return out;
}

Json FixedBudgetJson(const ReportContext& ctx, const FixedBudgetComparison& c) {
  Json splits = Json::array();
  for (const RunResult& r : c.splits) splits.push_back(RunJson(r));
  Json out{{"scenario", ScenarioJson(ctx)},
           {"fixed_budget", true},
           {"splits", splits},
           {"pdpool", RunJson(c.pdpool)},
           {"pdpool_start", {c.pdpool_start.prefill, c.pdpool_start.decode}}};
  if (c.best_index >= 0) {
    const RunResult& best = c.splits[static_cast<size_t>(c.best_index)];
    out["best_split"] = best.policy;
    out["pdpool_vs_best_goodput_per_gpu_ratio"] =
        best.summary.goodput_per_gpu > 0
            ? Json(c.pdpool.summary.goodput_per_gpu / best.summary.goodput_per_gpu)
            : Json(nullptr);
    out["target"] = 1.088;
  }
  return out;
}

}  // namespace pdpool::bench::replay
