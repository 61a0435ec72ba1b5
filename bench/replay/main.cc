// pdpool-replay: replays a request trace in virtual time through pdpool's real scheduler (sim
// backend) under four autoscaling policies — static-peak, threshold (HPA-like), dynamo-style
// (NVIDIA Dynamo's SLA planner) and pdpool's planner — and compares SLO attainment, latency
// percentiles, GPU-hours and goodput per GPU (TARGETS.md, Planner). --fixed-budget compares
// every fixed prefill:decode split of the GPU budget with pdpool's planner rebalancing it.
// main() only wires flags to the harness (bench/replay/harness.h) and the report.
// Exit 0 when the replay ran (whatever the targets), 1 on bad input or a failed run.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <thread>

#include "agent/engine/sim/gpu_catalog.h"
#include "bench/replay/harness.h"
#include "bench/replay/report.h"
#include "bench/replay/trace.h"

namespace {

using namespace pdpool;
using namespace pdpool::bench::replay;

// "2s", "100ms", "1.5m", "250us", or a bare number of seconds.
bool ParseSeconds(const std::string& text, double* out) {
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(text, &used);
  } catch (...) {
    return false;
  }
  const std::string unit = text.substr(used);
  double scale = 1;
  if (unit.empty() || unit == "s") {
    scale = 1;
  } else if (unit == "ms") {
    scale = 1e-3;
  } else if (unit == "us") {
    scale = 1e-6;
  } else if (unit == "m" || unit == "min") {
    scale = 60;
  } else if (unit == "h") {
    scale = 3600;
  } else {
    return false;
  }
  if (!(v >= 0) || !std::isfinite(v)) return false;
  *out = v * scale;
  return true;
}

CLI::Validator SecondsValidator() {
  return CLI::Validator(
      [](std::string& s) -> std::string {
        double v = 0;
        return ParseSeconds(s, &v) ? std::string() : "not a duration (e.g. 2s, 100ms): " + s;
      },
      "DURATION");
}

double Seconds(const std::string& s) {
  double v = 0;
  ParseSeconds(s, &v);
  return v;
}

std::vector<std::string> Split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, sep)) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

// glibc's per-thread cache keeps only 7 freed chunks of each size; the scheduler builds and
// frees a few small vectors per sequence per step (hundreds per step), so most of them miss
// it and go through the slower bins — about a fifth of an hour-long replay. GLIBC_TUNABLES is
// read at process start only: set a larger cache and re-exec once (unless the user set it).
void ReexecWithLargerMallocCache(char** argv) {
  if (std::getenv("GLIBC_TUNABLES") != nullptr || std::getenv("PDPOOL_REPLAY_REEXEC") != nullptr) {
    return;
  }
  setenv("GLIBC_TUNABLES", "glibc.malloc.tcache_count=4096", 1);
  setenv("PDPOOL_REPLAY_REEXEC", "1", 1);
  execv("/proc/self/exe", argv);
  unsetenv("GLIBC_TUNABLES");  // exec failed: run as we are
}

}  // namespace

int main(int argc, char** argv) {
  ReexecWithLargerMallocCache(argv);
  CLI::App app{
      "pdpool-replay: compare autoscaling policies on a request trace replayed in virtual time "
      "through the real scheduler (sim backend)"};
  Scenario sc;
  sc.trace_path = DefaultTracePath();
  sc.rate_multiplier = 30;
  sc.scheduler.max_batched_tokens = 8192;
  sc.scheduler.max_running = 256;
  sc.scheduler.max_model_len = 32768;
  sc.scheduler.max_waiting = 1024;
  std::string ttft = "2s", tpot = "200ms", worker_start = "120s", interval = "15s",
              dynamo_interval = "180s", stabilization = "300s", warmup = "300s";
  std::string gpu = "gb200";
  std::string time_window;
  std::string gpus_per_replica = "4";
  std::string policy = "all";
  std::string json_path;
  std::string dynamo_predictor = "constant";
  bool fixed_budget = false;
  HarnessOptions options;
  options.jobs = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));

  app.add_option("--trace", sc.trace_path, "CSV: TIMESTAMP,ContextTokens,GeneratedTokens")
      ->capture_default_str();
  app.add_option("--rate-multiplier", sc.rate_multiplier,
                 "X: X time-shifted copies of the trace merged (fraction: one thinned copy)")
      ->capture_default_str();
  app.add_option("--shift-window", sc.shift_window_s,
                 "seconds: the copies' random offsets are uniform in [0, this)")
      ->capture_default_str();
  app.add_option("--time-window", time_window,
                 "START:END seconds into the trace (END empty or 0: to its end)");
  app.add_option("--model", sc.model_name, "model preset")->capture_default_str();
  app.add_option("--gpu", gpu, "GPU: h100, h200, b200, gb200")->capture_default_str();
  app.add_option("--gpus", sc.gpus, "GPU budget (the rack)")->capture_default_str();
  app.add_option("--gpus-per-replica", gpus_per_replica,
                 "tensor parallel per worker: N, or P:D for prefill and decode")
      ->capture_default_str();
  app.add_option("--ttft", ttft, "TTFT limit")->check(SecondsValidator())->capture_default_str();
  app.add_option("--tpot", tpot, "TPOT limit")->check(SecondsValidator())->capture_default_str();
  app.add_option("--percentile", sc.percentile, "SLO percentile of the planner signals")
      ->check(CLI::Range(50.0, 99.9))
      ->capture_default_str();
  app.add_option("--worker-start", worker_start,
                 "time a new worker loads before it serves (70B: pod start, 141 GB of weights "
                 "from a node-local cache, engine warm-up)")
      ->check(SecondsValidator())
      ->capture_default_str();
  app.add_option("--warmup", warmup,
                 "replayed but not scored: requests arriving before this, GPU time before it")
      ->check(SecondsValidator())
      ->capture_default_str();
  app.add_option("--move-time", sc.move_s, "seconds an in-place role move takes after its drain")
      ->capture_default_str();
  app.add_option("--interval", interval, "pdpool's and threshold's decision interval")
      ->check(SecondsValidator())
      ->capture_default_str();
  app.add_option("--dynamo-interval", dynamo_interval, "dynamo-style's adjustment interval")
      ->check(SecondsValidator())
      ->capture_default_str();
  app.add_option("--dynamo-predictor", dynamo_predictor, "constant or arima")
      ->check(CLI::IsMember({"constant", "arima"}))
      ->capture_default_str();
  std::string dynamo_correction = "clamped";
  app.add_option("--dynamo-prefill-correction", dynamo_correction,
                 "clamped: demand x min(1, TTFT/profiled) as Dynamo's code; full: x TTFT/profiled")
      ->check(CLI::IsMember({"clamped", "full"}))
      ->capture_default_str();
  std::string static_sizing = "replay";
  app.add_option("--static-sizing", static_sizing,
                 "replay: smallest P:D meeting 99% on replays of the busiest minutes; model: "
                 "PerfModel capacity at 80% utilization of the busiest minutes")
      ->check(CLI::IsMember({"replay", "model"}))
      ->capture_default_str();
  app.add_option("--stabilization", stabilization, "pdpool's scale-down stabilization window")
      ->check(SecondsValidator())
      ->capture_default_str();
  app.add_option("--policy", policy,
                 "all, or a comma list of static-peak, threshold, dynamo-style, pdpool")
      ->capture_default_str();
  app.add_flag("--fixed-budget", fixed_budget,
               "hold all --gpus: every fixed prefill:decode split vs pdpool's rebalancing");
  app.add_option("--seed", sc.seed, "seed of the copies' offsets")->capture_default_str();
  app.add_option("--max-batched-tokens", sc.scheduler.max_batched_tokens, "per worker step")
      ->capture_default_str();
  app.add_option("--max-running", sc.scheduler.max_running, "sequences per worker batch")
      ->capture_default_str();
  app.add_option("--max-model-len", sc.scheduler.max_model_len, "prompt + output tokens")
      ->capture_default_str();
  app.add_option("--jobs", options.jobs, "replays run at once (threads)")->capture_default_str();
  app.add_flag("--verify-backend", options.verify_backend,
               "also run every step through SimBackend::Step and check its modeled time (slow)");
  bool print_decisions = false;
  app.add_flag("--decisions", print_decisions,
               "print every policy decision that changed the pool (time and reason)");
  app.add_flag("--all-decisions", options.record_every_decision,
               "with --decisions: print the holds too");
  app.add_option("--json", json_path, "write the results as JSON here");
  CLI11_PARSE(app, argc, argv);

  sc.ttft_s = Seconds(ttft);
  sc.tpot_s = Seconds(tpot);
  sc.worker_start_s = Seconds(worker_start);
  sc.score_from_s = Seconds(warmup);
  options.pdpool.interval_s = Seconds(interval);
  options.threshold.interval_s = Seconds(interval);
  options.dynamo.interval_s = Seconds(dynamo_interval);
  options.pdpool.scale_down_stabilization_s = Seconds(stabilization);
  options.dynamo.prefill_correction = dynamo_correction == "full"
                                          ? DynamoSettings::PrefillCorrection::kFull
                                          : DynamoSettings::PrefillCorrection::kClamped;
  options.static_sizing_by_replay = static_sizing == "replay";
  options.dynamo.predictor =
      dynamo_predictor == "arima" ? LoadPredictor::Kind::kArima : LoadPredictor::Kind::kConstant;
  if (options.pdpool.interval_s <= 0 || options.dynamo.interval_s <= 0) {
    std::fprintf(stderr, "pdpool-replay: --interval and --dynamo-interval must be > 0\n");
    return 1;
  }
  if (policy != "all") options.policies = Split(policy, ',');
  for (std::string& p : options.policies) {
    if (p == "dynamo") p = "dynamo-style";
    if (p == "static") p = "static-peak";
  }
  {
    const std::vector<std::string> parts = Split(gpus_per_replica, ':');
    try {
      if (parts.size() == 1) {
        sc.prefill_tp = sc.decode_tp = std::stoi(parts[0]);
      } else if (parts.size() == 2) {
        sc.prefill_tp = std::stoi(parts[0]);
        sc.decode_tp = std::stoi(parts[1]);
      } else {
        throw std::invalid_argument("shape");
      }
    } catch (...) {
      std::fprintf(stderr, "pdpool-replay: --gpus-per-replica must be N or P:D, got \"%s\"\n",
                   gpus_per_replica.c_str());
      return 1;
    }
    if (sc.prefill_tp < 1 || sc.decode_tp < 1) {
      std::fprintf(stderr, "pdpool-replay: --gpus-per-replica must be >= 1\n");
      return 1;
    }
  }
  if (!time_window.empty()) {
    const size_t colon = time_window.find(':');
    double start = 0, end = 0;
    if (colon == std::string::npos || !ParseSeconds(time_window.substr(0, colon), &start) ||
        (colon + 1 < time_window.size() && !ParseSeconds(time_window.substr(colon + 1), &end)) ||
        (end > 0 && end <= start)) {
      std::fprintf(stderr,
                   "pdpool-replay: --time-window must be START:END seconds with END > START, "
                   "got \"%s\"\n",
                   time_window.c_str());
      return 1;
    }
    sc.window_start_s = start;
    sc.window_end_s = end;
  }
  auto model = agent::ModelConfigFromPreset(sc.model_name);
  if (!model.ok()) {
    std::fprintf(stderr, "pdpool-replay: --model: %s\n", model.status().message().c_str());
    return 1;
  }
  sc.model = *model;
  {
    auto g = agent::LookupGpu(gpu);
    if (!g.ok()) {
      std::fprintf(stderr, "pdpool-replay: --gpu: %s\n", g.status().message().c_str());
      return 1;
    }
    sc.gpu = g->name;
  }
  if (sc.scheduler.max_model_len > sc.model.max_position_embeddings &&
      sc.model.max_position_embeddings > 0) {
    sc.scheduler.max_model_len = sc.model.max_position_embeddings;
  }

  const auto load_start = std::chrono::steady_clock::now();
  auto loaded = LoadTraceCsv(sc.trace_path);
  if (!loaded.ok()) {
    std::fprintf(stderr, "pdpool-replay: %s\n", loaded.status().message().c_str());
    return 1;
  }
  std::vector<TraceRequest> window = SelectWindow(*loaded, sc.window_start_s, sc.window_end_s);
  if (window.empty()) {
    std::fprintf(stderr, "pdpool-replay: --time-window %s holds no request of %s\n",
                 time_window.c_str(), sc.trace_path.c_str());
    return 1;
  }
  MultiplierOptions mo;
  mo.multiplier = sc.rate_multiplier;
  mo.shift_window_s = sc.shift_window_s;
  mo.seed = sc.seed;
  mo.span_s = sc.window_end_s > 0 ? sc.window_end_s - sc.window_start_s : 0;
  auto trace = ApplyRateMultiplier(window, mo);
  if (!trace.ok()) {
    std::fprintf(stderr, "pdpool-replay: %s\n", trace.status().message().c_str());
    return 1;
  }
  // Scoring starts after the warm-up, but never later than a quarter into a short window.
  {
    const double span = window.back().arrival_s;
    sc.score_from_s = std::min(sc.score_from_s, span / 4);
  }
  ReportContext ctx;
  ctx.scenario = &sc;
  ctx.original = ComputeTraceStats(window);
  ctx.replayed = ComputeTraceStats(*trace);
  if (std::abs(sc.ttft_s - 2.0) < 1e-9 && std::abs(sc.tpot_s - 0.2) < 1e-9) {
    ctx.slo_name = "MLPerf llama2-70b server";
  } else if (std::abs(sc.ttft_s - 0.45) < 1e-9 && std::abs(sc.tpot_s - 0.04) < 1e-9) {
    ctx.slo_name = "MLPerf llama2-70b interactive";
  }
  ctx.load_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();
  std::fputs(ScenarioText(ctx).c_str(), stdout);
  std::fflush(stdout);

  Json json;
  if (fixed_budget) {
    auto result = RunFixedBudget(sc, *trace, options);
    if (!result.ok()) {
      std::fprintf(stderr, "pdpool-replay: %s\n", result.status().ToString().c_str());
      return 1;
    }
    std::fputs(FixedBudgetText(ctx, *result).c_str(), stdout);
    if (print_decisions) {
      std::printf("\ndecisions of pdpool:\n");
      for (const std::string& d : result->pdpool.decisions) std::printf("  %s\n", d.c_str());
    }
    json = FixedBudgetJson(ctx, *result);
  } else {
    auto result = RunComparison(sc, *trace, options);
    if (!result.ok()) {
      std::fprintf(stderr, "pdpool-replay: %s\n", result.status().ToString().c_str());
      return 1;
    }
    std::fputs(ComparisonText(ctx, *result).c_str(), stdout);
    if (print_decisions) {
      for (const RunResult& r : result->results) {
        std::printf("\ndecisions of %s:\n", r.policy.c_str());
        for (const std::string& d : r.decisions) std::printf("  %s\n", d.c_str());
      }
    }
    json = ComparisonJson(ctx, *result);
  }
  if (!json_path.empty()) {
    std::ofstream f(json_path);
    f << json.dump(2) << "\n";
    if (!f) {
      std::fprintf(stderr, "pdpool-replay: --json %s: cannot write\n", json_path.c_str());
      return 1;
    }
  }
  return 0;
}
