// pdpool-controller: the InferencePool operator. Wires flags, the Kubernetes client and the
// Manager; all logic lives in the controller library.
#include <CLI/CLI.hpp>
#include <cstdlib>
#include <iostream>

#include "common/http_server.h"
#include "common/kube/http_kube_client.h"
#include "common/kube/kubeconfig.h"
#include "common/log.h"
#include "common/signals.h"
#include "controller/manager.h"

int main(int argc, char** argv) {
  pdpool::BlockTerminationSignals();
  CLI::App app{"pdpool-controller: reconciles InferencePools into prefill/decode ReplicaSets"};
  std::string kubeconfig;
  std::string log_level = "info";
  double qps = 200;
  int burst = 400;
  pdpool::controller::ManagerOptions options;
  if (const char* ns = std::getenv("POD_NAMESPACE"); ns && *ns)
    options.leader_election_namespace = ns;
  app.add_option("--kubeconfig", kubeconfig,
                 "Path to a kubeconfig (default: $KUBECONFIG, in-cluster, ~/.kube/config)");
  app.add_option("--namespace", options.watch_namespace,
                 "Only watch InferencePools in this namespace (default: all)");
  app.add_option("--leader-elect", options.leader_elect,
                 "Elect a leader on a Lease before reconciling")
      ->default_val(true);
  app.add_option("--leader-election-namespace", options.leader_election_namespace,
                 "Namespace of the leader Lease (default: $POD_NAMESPACE or default)")
      ->capture_default_str();
  app.add_option("--leader-election-id", options.leader_election_id, "Name of the leader Lease")
      ->capture_default_str();
  app.add_option("--identity", options.identity,
                 "Leader election identity (default: hostname_pid)");
  options.admin_host = pdpool::DefaultListenHost();
  app.add_option("--metrics-bind-address", options.admin_host,
                 "Address of /healthz, /readyz, /metrics")
      ->capture_default_str();
  app.add_option("--metrics-port", options.admin_port,
                 "Port of /healthz, /readyz, /metrics (0: any free port)")
      ->capture_default_str();
  app.add_option("--workers", options.workers, "Concurrent reconciles")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  app.add_option("--kube-api-qps", qps, "Client-side limit on API requests per second")
      ->capture_default_str();
  app.add_option("--kube-api-burst", burst, "Client-side burst of API requests")
      ->capture_default_str();
  double planner_warmup_seconds = 60;
  app.add_option("--planner-warmup", planner_warmup_seconds,
                 "Seconds a worker must have been ready before its samples refine the planner's "
                 "capacity model (model load and warm-up make the first samples unrepresentative)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  double planner_window_seconds = 60;
  app.add_option("--planner-window", planner_window_seconds,
                 "Shortest window (seconds) of the rates and latency percentiles the planner reads "
                 "each interval (the window is max(this, spec.autoscaling.interval)); shorter "
                 "reacts sooner, longer needs fewer requests per percentile")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--log-level", log_level, "debug|info|warn|error")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  if (!pdpool::SetLogLevel(log_level)) {
    std::cerr << "--log-level: unknown level '" << log_level << "' (debug|info|warn|error)\n";
    return 2;
  }
  auto config = pdpool::kube::LoadKubeConfig(kubeconfig);
  if (!config.ok()) {
    pdpool::LogError("cannot load Kubernetes configuration",
                     {{"error", config.status().ToString()}});
    return 1;
  }
  pdpool::kube::HttpKubeClientOptions client_options;
  client_options.qps = qps;
  client_options.burst = burst;
  client_options.user_agent = "pdpool-controller";
  auto client = pdpool::kube::NewHttpKubeClient(*config, client_options);
  if (!client.ok()) {
    pdpool::LogError("cannot create Kubernetes client", {{"error", client.status().ToString()}});
    return 1;
  }
  pdpool::LogInfo("starting pdpool-controller",
                  {{"server", config->server},
                   {"namespace", options.watch_namespace.empty() ? "*" : options.watch_namespace},
                   {"leader_elect", options.leader_elect ? "true" : "false"}});
  options.planner_warmup = std::chrono::duration_cast<pdpool::Duration>(
      std::chrono::duration<double>(planner_warmup_seconds));
  options.planner_window = std::chrono::duration_cast<pdpool::Duration>(
      std::chrono::duration<double>(planner_window_seconds));
  pdpool::controller::Manager manager(client->get(), options);
  pdpool::OnTerminationSignal([&manager] { manager.Stop(); });
  pdpool::Status s = manager.Run();
  if (!s.ok()) {
    pdpool::LogError("controller stopped", {{"error", s.ToString()}});
    return 1;
  }
  pdpool::LogInfo("controller stopped cleanly");
  return 0;
}
