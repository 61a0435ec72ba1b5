// router_overhead: the router target of TARGETS.md ("≤ 1 ms p99 added latency at 2000 req/s",
// sim backend, loopback, 2 cores). Starts sim workers and a router (build/pdpool-agent), then
// offers the same open-loop load twice: straight to the workers (the client drives the internal
// protocol itself: generate, or reserve → prefill → decode) and through the router's
// /v1/completions. Latency is measured from each request's scheduled send time (no coordinated
// omission), so a path that cannot keep up shows it. Added latency = router − direct at each
// percentile. Prints one table (metric | measured | target | ratio | result); --json writes it.
// Exit 0 when the measurement ran, 1 when it could not.
#include <httplib.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>
#include <vector>

#include "agent/worker/worker_protocol.h"
#include "common/json.h"
#include "tests/support/child_process.h"

namespace {

using namespace pdpool;
using Steady = std::chrono::steady_clock;
namespace protocol = agent::protocol;

struct LoadResult {
  std::vector<double> latencies_ms;  // successful requests
  int errors = 0;
  std::string first_error;
  double seconds = 0;
  double Percentile(double p) const {
    if (latencies_ms.empty()) return 0;
    std::vector<double> v = latencies_ms;
    std::sort(v.begin(), v.end());
    size_t i = static_cast<size_t>(p / 100.0 * static_cast<double>(v.size() - 1) + 0.5);
    return v[std::min(i, v.size() - 1)];
  }
  double Rate() const {
    return seconds > 0 ? static_cast<double>(latencies_ms.size()) / seconds : 0;
  }
};

// One request on a keep-alive client; empty on success, else what went wrong.
using RequestFn = std::function<std::string(httplib::Client&)>;

std::string Check(const httplib::Result& r, const char* must_contain = nullptr) {
  if (!r) return "no response: " + httplib::to_string(r.error());
  if (r->status != 200) return "HTTP " + std::to_string(r->status) + ": " + r->body.substr(0, 200);
  if (must_contain != nullptr && r->body.find(must_contain) == std::string::npos) {
    return "incomplete body: " + r->body.substr(0, 200);
  }
  return "";
}

LoadResult RunLoad(int port, double rate, double duration_s, int threads, const RequestFn& fn) {
  const int64_t total = static_cast<int64_t>(rate * duration_s);
  std::vector<std::vector<double>> lat(threads);
  std::atomic<int> errors{0};
  std::mutex error_mu;
  std::string first_error;
  const auto start = Steady::now() + std::chrono::milliseconds(1000);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      httplib::Client client("127.0.0.1", port);
      client.set_keep_alive(true);
      client.set_tcp_nodelay(true);
      client.set_read_timeout(30);
      (void)fn(client);  // warm-up: the connection is open before the clock starts
      for (int64_t i = t; i < total; i += threads) {
        const auto scheduled =
            start + std::chrono::nanoseconds(static_cast<int64_t>(1e9 * i / rate));
        std::this_thread::sleep_until(scheduled);
        std::string error = fn(client);
        if (error.empty()) {
          lat[t].push_back(
              std::chrono::duration<double, std::milli>(Steady::now() - scheduled).count());
        } else if (errors++ == 0) {
          std::lock_guard lock(error_mu);
          first_error = error;
        }
      }
    });
  }
  for (auto& th : pool) th.join();
  LoadResult r;
  r.seconds = std::chrono::duration<double>(Steady::now() - start).count();
  for (auto& v : lat) r.latencies_ms.insert(r.latencies_ms.end(), v.begin(), v.end());
  r.errors = errors;
  r.first_error = first_error;
  return r;
}

bool WaitReady(int port) {
  httplib::Client c("127.0.0.1", port);
  for (int i = 0; i < 600; ++i) {
    auto res = c.Get("/readyz");
    if (res && res->status == 200) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"router_overhead: added latency of the pdpool router over sim workers"};
  double rate = 2000;
  double duration = 10;
  int threads = 64;
  int max_tokens = 4;
  std::string mode = "aggregated,disaggregated";
  std::string json_path;
  std::string agent = (std::filesystem::path(argv[0]).parent_path() / "pdpool-agent").string();
  std::string model = "test-tiny";
  app.add_option("--rate", rate, "offered requests per second")->capture_default_str();
  app.add_option("--duration", duration, "seconds of load per phase")->capture_default_str();
  app.add_option("--threads", threads, "client threads (keep-alive connections)")
      ->capture_default_str();
  app.add_option("--max-tokens", max_tokens, "tokens per request")->capture_default_str();
  app.add_option("--modes", mode, "aggregated,disaggregated")->capture_default_str();
  app.add_option("--model", model, "model shape of the sim workers")->capture_default_str();
  app.add_option("--agent", agent, "pdpool-agent binary")->capture_default_str();
  app.add_option("--json", json_path, "write the results as JSON here");
  CLI11_PARSE(app, argc, argv);

  const std::string dir =
      std::filesystem::temp_directory_path() / ("router-overhead-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  const std::string token_file = dir + "/token";
  const std::string token = "bench-token";
  std::ofstream(token_file) << token;
  std::vector<std::unique_ptr<testing::ChildProcess>> children;
  auto start = [&](const std::string& name, std::vector<std::string> args) -> int {
    const int port = testing::FreeLoopbackPort();
    args.insert(args.end(), {"--host", "127.0.0.1", "--port", std::to_string(port),
                             "--auth-token-file", token_file, "--log-level", "warn"});
    std::string error;
    auto c = testing::SpawnProcess(name, agent, args, dir + "/" + name + ".log", &error);
    if (!c) {
      std::fprintf(stderr, "router_overhead: %s\n", error.c_str());
      std::exit(1);
    }
    children.push_back(std::move(c));
    if (!WaitReady(port)) {
      std::fprintf(stderr, "router_overhead: %s not ready (log %s/%s.log)\n", name.c_str(),
                   dir.c_str(), name.c_str());
      std::exit(1);
    }
    return port;
  };
  auto worker = [&](const std::string& role) {
    return start(role + std::to_string(children.size()),
                 {"worker", "--role", role, "--backend", "sim", "--model", model, "--gpu", "H200"});
  };
  const httplib::Headers auth = {{"Authorization", "Bearer " + token}};
  const pdpool::Json prompt_ids =
      pdpool::Json::array({104, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100});
  const std::string completion = pdpool::Json{
      {"model", "bench"},
      {"prompt", "hello world"},
      {"max_tokens", max_tokens},
      {"temperature", 0},
      {"ignore_eos", true}}.dump();

  struct Row {
    std::string metric;
    double measured;
    std::string target;
    double ratio;
    std::string result;
  };
  std::vector<Row> rows;
  pdpool::Json json = {{"rate", rate},       {"duration_s", duration},
                       {"threads", threads}, {"max_tokens", max_tokens},
                       {"model", model},     {"phases", pdpool::Json::object()}};

  auto report = [&](const std::string& name, const LoadResult& direct, const LoadResult& routed) {
    const double add50 = routed.Percentile(50) - direct.Percentile(50);
    const double add99 = routed.Percentile(99) - direct.Percentile(99);
    rows.push_back({name + ": direct p50 (ms)", direct.Percentile(50), "peer", 0, "-"});
    rows.push_back({name + ": direct p99 (ms)", direct.Percentile(99), "peer", 0, "-"});
    rows.push_back({name + ": via router p50 (ms)", routed.Percentile(50), "-", 0, "-"});
    rows.push_back({name + ": via router p99 (ms)", routed.Percentile(99), "-", 0, "-"});
    rows.push_back({name + ": added p50 (ms)", add50, "-", 0, "-"});
    // The added latency means something only where both paths carried the offered load.
    const bool direct_held = direct.errors == 0 && direct.Rate() >= 0.98 * rate;
    const bool routed_held = routed.errors == 0 && routed.Rate() >= 0.98 * rate;
    rows.push_back({name + ": added p99 (ms)", add99, "<= 1 ms", add99 / 1.0,
                    !direct_held   ? "n/a: direct path saturated"
                    : !routed_held ? "MISSED"
                    : add99 <= 1.0 ? "met"
                                   : "MISSED"});
    rows.push_back({name + ": rate direct (req/s)", direct.Rate(), "peer", 0, "-"});
    rows.push_back({name + ": rate via router (req/s)", routed.Rate(),
                    ">= " + std::to_string(static_cast<int>(rate)), routed.Rate() / rate,
                    routed.Rate() >= 0.98 * rate && routed.errors == 0 ? "met" : "MISSED"});
    rows.push_back({name + ": errors direct", static_cast<double>(direct.errors), "0", 0, "-"});
    rows.push_back({name + ": errors via router", static_cast<double>(routed.errors), "0", 0,
                    routed.errors == 0 ? "met" : "MISSED"});
    if (!direct.first_error.empty())
      std::fprintf(stderr, "%s direct, first error: %s\n", name.c_str(),
                   direct.first_error.c_str());
    if (!routed.first_error.empty())
      std::fprintf(stderr, "%s via router, first error: %s\n", name.c_str(),
                   routed.first_error.c_str());
    json["phases"][name] = {{"direct_p50_ms", direct.Percentile(50)},
                            {"direct_p99_ms", direct.Percentile(99)},
                            {"router_p50_ms", routed.Percentile(50)},
                            {"router_p99_ms", routed.Percentile(99)},
                            {"added_p50_ms", add50},
                            {"added_p99_ms", add99},
                            {"direct_rate", direct.Rate()},
                            {"router_rate", routed.Rate()},
                            {"direct_errors", direct.errors},
                            {"router_errors", routed.errors}};
  };

  const bool aggregated = ("," + mode + ",").find(",aggregated,") != std::string::npos;
  const bool disaggregated = ("," + mode + ",").find(",disaggregated,") != std::string::npos;

  if (aggregated) {
    const int both = worker("both");
    const int router = start("router-agg", {"router", "--served-model-name", "bench", "--workers",
                                            "127.0.0.1:" + std::to_string(both)});
    const std::string gen = pdpool::Json{
        {"prompt_token_ids", prompt_ids},
        {"max_tokens", max_tokens},
        {"sampling", {{"temperature", 0}}},
        {"ignore_eos", true}}.dump();
    LoadResult direct = RunLoad(both, rate, duration, threads, [&](httplib::Client& c) {
      return Check(c.Post(protocol::kGeneratePath, auth, gen, "application/json"), "finish_reason");
    });
    LoadResult routed = RunLoad(router, rate, duration, threads, [&](httplib::Client& c) {
      return Check(c.Post("/v1/completions", completion, "application/json"), "usage");
    });
    report("aggregated", direct, routed);
  }
  if (disaggregated) {
    const int prefill = worker("prefill");
    const int decode = worker("decode");
    const int router = start("router-disagg", {"router", "--served-model-name", "bench",
                                               "--prefill", "127.0.0.1:" + std::to_string(prefill),
                                               "--decode", "127.0.0.1:" + std::to_string(decode)});
    LoadResult direct = RunLoad(decode, rate, duration, threads, [&](httplib::Client& dc) {
      thread_local httplib::Client pc("127.0.0.1", prefill);
      pc.set_keep_alive(true);
      pc.set_tcp_nodelay(true);
      auto r = dc.Post(
          protocol::kReservePath, auth,
          pdpool::Json{{"prompt_tokens", prompt_ids.size()}, {"max_tokens", max_tokens}}.dump(),
          "application/json");
      if (std::string e = Check(r); !e.empty()) return "reserve: " + e;
      const pdpool::Json res = pdpool::Json::parse(r->body);
      auto p = pc.Post(protocol::kPrefillPath, auth,
                       pdpool::Json{{"prompt_token_ids", prompt_ids},
                                    {"sampling", {{"temperature", 0}}},
                                    {"destination",
                                     {{"transport", "tcp"},
                                      {"kv_address", res["kv_address"]},
                                      {"reservation_id", res["reservation_id"]},
                                      {"blocks", res["blocks"]}}}}
                           .dump(),
                       "application/json");
      if (std::string e = Check(p); !e.empty()) return "prefill: " + e;
      auto d = dc.Post(protocol::kDecodePath, auth,
                       pdpool::Json{{"reservation_id", res["reservation_id"]},
                                    {"first_token", pdpool::Json::parse(p->body)["first_token"]},
                                    {"prompt_token_ids", prompt_ids},
                                    {"max_tokens", max_tokens},
                                    {"sampling", {{"temperature", 0}}},
                                    {"ignore_eos", true}}
                           .dump(),
                       "application/json");
      return Check(d, "finish_reason");
    });
    LoadResult routed = RunLoad(router, rate, duration, threads, [&](httplib::Client& c) {
      return Check(c.Post("/v1/completions", completion, "application/json"), "usage");
    });
    report("disaggregated", direct, routed);
  }
  for (auto& c : children) c->Stop(std::chrono::seconds(10));

  std::printf(
      "router_overhead: sim workers (%s, H200 model), %d client threads, %.0f req/s offered for "
      "%.0f s per phase, %d tokens per request\n",
      model.c_str(), threads, rate, duration, max_tokens);
  std::printf("| %-46s | %12s | %-10s | %6s | %-10s |\n", "metric", "measured", "target", "ratio",
              "result");
  std::printf("|%s|%s|%s|%s|%s|\n", std::string(48, '-').c_str(), std::string(14, '-').c_str(),
              std::string(12, '-').c_str(), std::string(8, '-').c_str(),
              std::string(12, '-').c_str());
  for (const Row& r : rows) {
    std::printf("| %-46s | %12.3f | %-10s | %6s | %-10s |\n", r.metric.c_str(), r.measured,
                r.target.c_str(),
                r.ratio > 0 ? (std::to_string(r.ratio).substr(0, 5)).c_str() : "-",
                r.result.c_str());
  }
  if (!json_path.empty()) std::ofstream(json_path) << json.dump(2) << "\n";
  std::filesystem::remove_all(dir);
  return 0;
}
