// pdpool-live-replay: replays a request trace in real time (open loop) against a live pool's
// router (/v1/completions, streamed), measures each request client-side from its scheduled
// send time, samples the InferencePool and its pods' GPUs every second (--pool), shows a live
// view on stderr and writes timeseries.csv, requests.csv, summary.json and summary.md (--out).
// main() only wires flags to the schedule, the client, the sampler and the replay.
// Exit 0 when the replay ran (whatever the SLO), 1 when it could not start (bad flags, trace,
// router, pool or output directory) or its report could not be written.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>

#include "bench/live_replay/http_completion_client.h"
#include "bench/live_replay/live_replay.h"
#include "bench/live_replay/live_view.h"
#include "bench/live_replay/pool_sampler.h"
#include "bench/live_replay/report.h"
#include "bench/live_replay/schedule.h"
#include "bench/replay/trace.h"
#include "common/kube/http_kube_client.h"
#include "common/kube/kubeconfig.h"
#include "common/signals.h"
#include "controller/pool_spec.h"

namespace {

using namespace pdpool;
using namespace pdpool::bench::live_replay;

constexpr double kModelsTimeoutS = 10;
// In the non-TTY view: one line per this many seconds.
constexpr double kPlainLineInterval = 10;

int Fail(const std::string& message) {
  std::fprintf(stderr, "pdpool-live-replay: %s\n", message.c_str());
  return 1;
}

CLI::Validator DurationValidator() {
  return CLI::Validator(
      [](std::string& s) -> std::string {
        double v = 0;
        return controller::ParseDurationSeconds(s, &v) && v >= 0
                   ? std::string()
                   : "not a duration (e.g. 450ms, 2s, 1m30s): " + s;
      },
      "DURATION");
}

double Seconds(const std::string& text) {
  double v = 0;
  controller::ParseDurationSeconds(text, &v);
  return v;
}

struct Flags {
  std::string router;
  std::string model;
  std::string trace = bench::replay::DefaultTracePath();
  ScheduleOptions schedule;
  std::string slo_ttft = "450ms";
  std::string slo_tpot = "40ms";
  double percentile = 99;
  std::string kubeconfig;
  std::string ns;
  std::string pool;
  std::string out;
  std::string duration = "0";
  int max_inflight = 1024;
  std::string request_timeout = "120s";
  bool quiet = false;
};

void AddFlags(CLI::App& app, Flags& f) {
  app.add_option("--router", f.router, "the pool's router, e.g. http://127.41.3.2:8080")
      ->required();
  app.add_option("--model", f.model, "the requests' model (default: the first of /v1/models)");
  app.add_option("--trace", f.trace, "CSV: TIMESTAMP,ContextTokens,GeneratedTokens")
      ->capture_default_str();
  app.add_option("--window-start", f.schedule.window_start_s, "trace seconds: replay from here")
      ->capture_default_str();
  app.add_option("--window-end", f.schedule.window_end_s,
                 "trace seconds: replay up to here (<= 0: to the end of the trace)")
      ->capture_default_str();
  app.add_option("--rate-multiplier", f.schedule.rate_multiplier,
                 "X time-shifted copies of the window merged; X < 1 keeps each request with "
                 "probability X (as pdpool-replay)")
      ->capture_default_str();
  app.add_option("--time-compression", f.schedule.time_compression,
                 "trace seconds per wall second (>= 1): a request t s into the window is sent "
                 "t/C s after the start")
      ->capture_default_str();
  app.add_option("--seed", f.schedule.seed, "seed of the multiplier's offsets and thinning")
      ->capture_default_str();
  app.add_option("--max-prompt-tokens", f.schedule.max_prompt_tokens,
                 "cap on each prompt (0: none)")
      ->capture_default_str();
  app.add_option("--max-output-tokens", f.schedule.max_output_tokens,
                 "cap on each output (0: none)")
      ->capture_default_str();
  app.add_option("--slo-ttft", f.slo_ttft, "time-to-first-token limit")
      ->check(DurationValidator())
      ->capture_default_str();
  app.add_option("--slo-tpot", f.slo_tpot, "time-per-output-token limit")
      ->check(DurationValidator())
      ->capture_default_str();
  app.add_option("--percentile", f.percentile,
                 "the SLO is met when this % of requests meet both limits; also the percentile "
                 "reported beside p90/p99")
      ->check(CLI::Range(1.0, 100.0))
      ->capture_default_str();
  app.add_option("--kubeconfig", f.kubeconfig,
                 "kubeconfig for --pool (default: $KUBECONFIG, in-cluster, ~/.kube/config)");
  app.add_option("--namespace", f.ns, "namespace of --pool (default: the kubeconfig's)");
  app.add_option("--pool", f.pool,
                 "InferencePool to sample every second: workers ready/desired, GPUs held");
  app.add_option("--out", f.out,
                 "directory for timeseries.csv, requests.csv, summary.json, summary.md");
  app.add_option("--duration", f.duration, "wall-clock cap on sending (0: the whole window)")
      ->check(DurationValidator())
      ->capture_default_str();
  app.add_option("--max-inflight", f.max_inflight,
                 "requests in flight at most; one more fails as \"client overloaded\"")
      ->check(CLI::Range(1, 65536))
      ->capture_default_str();
  app.add_option("--request-timeout", f.request_timeout,
                 "longest the router may stay silent (before the first byte, between chunks)")
      ->check(DurationValidator())
      ->capture_default_str();
  app.add_flag("--quiet", f.quiet, "no live view");
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "pdpool-live-replay: replay a request trace in real time (open loop) against a live pool's "
      "router; measure each request, sample the pool, write a report"};
  Flags f;
  AddFlags(app, f);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 1;
  }
  if ((!f.kubeconfig.empty() || !f.ns.empty()) && f.pool.empty()) {
    return Fail("--kubeconfig and --namespace are for --pool: name the InferencePool to sample");
  }

  auto trace = bench::replay::LoadTraceCsv(f.trace);
  if (!trace.ok()) return Fail(trace.status().message());
  auto schedule = BuildSchedule(*trace, f.schedule);
  if (!schedule.ok()) return Fail(schedule.status().message());

  auto router = ParseRouterUrl(f.router);
  if (!router.ok()) return Fail(router.status().message());
  auto models = ListModels(*router, kModelsTimeoutS);
  if (!models.ok()) return Fail("router unreachable: " + models.status().message());
  if (f.model.empty()) {
    f.model = models->front();
  } else if (std::find(models->begin(), models->end(), f.model) == models->end()) {
    std::string served;
    for (const std::string& m : *models) served += (served.empty() ? "" : ", ") + m;
    return Fail("--model " + f.model + " is not served by " + f.router + " (it serves " + served +
                ")");
  }

  std::unique_ptr<kube::KubeClient> kube_client;
  std::unique_ptr<PoolSampler> sampler;
  if (!f.pool.empty()) {
    auto config = kube::LoadKubeConfig(f.kubeconfig);
    if (!config.ok()) return Fail("kubeconfig: " + config.status().message());
    kube::HttpKubeClientOptions client_options;
    client_options.user_agent = "pdpool-live-replay";
    auto client = kube::NewHttpKubeClient(*config, client_options);
    if (!client.ok()) return Fail("Kubernetes client: " + client.status().message());
    kube_client = std::move(*client);
    sampler = std::make_unique<PoolSampler>(kube_client.get(),
                                            f.ns.empty() ? config->default_namespace : f.ns, f.pool,
                                            &RealClock::Instance());
    if (auto first = sampler->Fetch(); !first.ok()) return Fail(first.status().message());
  }

  std::ofstream timeseries;
  if (!f.out.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(f.out, ec);
    if (ec) return Fail("--out " + f.out + ": " + ec.message());
    timeseries.open(f.out + "/timeseries.csv", std::ios::trunc);
    if (!timeseries) return Fail("--out: cannot write " + f.out + "/timeseries.csv");
    timeseries << TimeseriesHeader() << std::flush;
  }

  const bench::replay::SloLimits slo{Seconds(f.slo_ttft), Seconds(f.slo_tpot)};
  LiveReplayOptions options;
  options.model = f.model;
  options.duration_s = Seconds(f.duration);
  options.max_inflight = f.max_inflight;
  options.slo = slo;
  options.window_start_s = f.schedule.window_start_s;
  options.time_compression = f.schedule.time_compression;
  if (timeseries.is_open()) {
    options.on_second = [&timeseries](const TimeseriesRow& row) {
      timeseries << TimeseriesLine(row) << std::flush;
    };
  }
  const bool tty = isatty(STDERR_FILENO) == 1;
  LiveView view(stderr, tty);
  if (!f.quiet) {
    options.on_view = [&view, &slo, tty, next_line = 0.0](const LiveViewState& s) mutable {
      if (tty || s.elapsed_s >= next_line || s.finished) {
        view.Draw(s, slo);
        next_line = (std::floor(s.elapsed_s / kPlainLineInterval) + 1) * kPlainLineInterval;
      }
    };
  }

  HttpCompletionClientOptions client_options;
  client_options.read_timeout_s = Seconds(f.request_timeout);
  HttpCompletionClient client(*router, client_options, &RealClock::Instance());
  // No thread exists yet: from here SIGINT/SIGTERM stop the replay instead of the process.
  BlockTerminationSignals();
  LiveReplay replay(*schedule, options, &client, sampler.get(), &RealClock::Instance());
  OnTerminationSignal([&replay] { replay.Stop(); });
  const LiveReplayResult result = replay.Run();

  RunDescription description;
  description.router = f.router;
  description.model = f.model;
  description.trace_path = f.trace;
  description.schedule_options = f.schedule;
  description.scheduled = static_cast<int64_t>(schedule->requests.size());
  description.window_requests = schedule->window_requests;
  description.prompt_capped = schedule->prompt_capped;
  description.output_capped = schedule->output_capped;
  description.window_s = schedule->window_s;
  description.slo = slo;
  description.percentile = f.percentile;
  RunFacts facts;
  facts.wall_s = result.wall_s;
  facts.stop_reason = result.stop_reason;
  facts.overloaded = result.overloaded;
  facts.cut_off = result.cut_off;
  if (sampler) {
    description.pool = sampler->name();
    facts.gpus_sampled = true;
    facts.gpu_seconds = sampler->GpuSeconds(result.wall_s);
    facts.peak_gpus = sampler->PeakGpus();
    facts.sample_failures = sampler->failures();
  }
  const RunNumbers numbers = ComputeNumbers(result.records, description, facts);
  const std::string markdown = SummaryMarkdown(description, facts, numbers);
  std::fputs(markdown.c_str(), stdout);
  // Invalid UTF-8 (a path) is replaced rather than thrown on.
  const std::string json =
      SummaryJson(description, facts, numbers).dump(2, ' ', false, Json::error_handler_t::replace) +
      "\n";
  int exit_code = 0;
  if (!f.out.empty()) {
    for (const auto& [name, text] :
         {std::pair{"requests.csv", RequestsCsv(result.records, slo)},
          std::pair{"summary.json", json}, std::pair{"summary.md", markdown}}) {
      if (Status s = WriteTextFile(f.out + "/" + name, text); !s.ok())
        exit_code = Fail(s.message());
    }
  }
  return exit_code;
}
