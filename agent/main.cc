// pdpool-agent: the per-node binary. Each mode is a subcommand; this file only parses flags,
// builds the real dependencies (kubeconfig, HTTP client, clock, pod runner) and runs the mode
// until SIGTERM/SIGINT.
#include <CLI/CLI.hpp>
#include <memory>
#include <string>

#include "agent/node/node_agent.h"
#include "agent/router/router_command.h"
#include "agent/worker/worker_command.h"
#include "common/clock.h"
#include "common/kube/http_kube_client.h"
#include "common/kube/kubeconfig.h"
#include "common/log.h"
#include "common/signals.h"

namespace {

using namespace pdpool;

// `pdpool-agent node`.
struct NodeCommand {
  CLI::App* command = nullptr;
  std::string kubeconfig;
  agent::NodeAgentOptions options;

  explicit NodeCommand(CLI::App& app) {
    command = app.add_subcommand(
        "node",
        "Run simulated GPU nodes for the local rack, as a minimal kubelet: register each Node "
        "(nvidia.com/gpu capacity, NVLink-domain label, Ready), renew its Lease in "
        "kube-node-lease, give the pods the scheduler binds to it a 127.x.y.z pod IP, run them "
        "(--pod-runner) and report their status, and finish their deletion.");
    command->add_option("--kubeconfig", kubeconfig,
                        "kubeconfig file (default: $KUBECONFIG, in-cluster, ~/.kube/config)");
    command
        ->add_option("--name", options.name,
                     "node name; with --count N > 1 the nodes are <name>-0..<name>-(N-1), or, "
                     "if the name holds one printf integer conversion (gb200-%02d), that "
                     "pattern applied to 0..N-1")
        ->capture_default_str();
    command->add_option("--count", options.count, "simulated nodes in this process (1-256)")
        ->capture_default_str();
    command->add_option("--gpus", options.gpus, "GPUs per node (capacity nvidia.com/gpu)")
        ->capture_default_str();
    command
        ->add_option("--clique", options.clique,
                     "NVLink domain id (label nvidia.com/gpu.clique; empty: no label)")
        ->capture_default_str();
    command->add_option("--gpu-product", options.gpu_product, "label nvidia.com/gpu.product")
        ->capture_default_str();
    command
        ->add_option("--label", options.labels,
                     "extra node label key=value (repeatable; overrides built-in labels)")
        ->expected(1)
        ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
    command->add_option("--cpu", options.cpu, "cpu capacity per node (quantity)")
        ->capture_default_str();
    command->add_option("--memory", options.memory, "memory capacity per node (quantity)")
        ->capture_default_str();
    command->add_option("--pods", options.max_pods, "max pods per node (1-253)")
        ->capture_default_str();
    command
        ->add_option("--heartbeat-interval", options.heartbeat_interval,
                     "lease renewal and node status interval (Go duration, < 40s)")
        ->capture_default_str();
    command
        ->add_option("--ip-prefix", options.ip_prefix,
                     "second octet of pod IPs: node i of this process gives its pods "
                     "127.<ip-prefix>.<i>.2-254 (Linux routes all of 127/8 to loopback); agent "
                     "processes on one machine need distinct values (1-255)")
        ->capture_default_str();
    command
        ->add_option("--pod-runner", options.pod_runner,
                     "what runs the pods bound to the nodes: status-only (reported running and "
                     "ready, nothing runs) or process (each container a local process in its "
                     "own mount namespace, as a kubelet would; needs root)")
        ->check(CLI::IsMember({"status-only", "process"}))
        ->capture_default_str();
    command->add_option("--binary-dir", options.binary_dir,
                        "process: where the pdpool/agent and pdpool/controller images' binaries "
                        "(pdpool-agent, pdpool-controller) are (default: this executable's "
                        "directory)");
    command
        ->add_option("--state-dir", options.state_dir,
                     "process: node state (pod volumes, container logs under "
                     "<state-dir>/<node>/pods/<ns>_<pod>_<uid>/)")
        ->capture_default_str();
    command
        ->add_option("--restart-backoff", options.restart_backoff,
                     "process: first crash-loop back-off, doubling per crash (Go duration)")
        ->capture_default_str();
    command
        ->add_option("--max-restart-backoff", options.max_restart_backoff,
                     "process: longest crash-loop back-off (Go duration)")
        ->capture_default_str();
    command
        ->add_option("--shutdown-grace-period", options.shutdown_grace_period,
                     "process: longest a pod gets to stop when the agent shuts down (Go duration)")
        ->capture_default_str();
  }
};

int RunNode(const NodeCommand& cmd) {
  auto nodes = agent::ExpandNodeOptions(cmd.options);
  if (!nodes.ok()) {
    LogError("invalid flags", {{"error", nodes.status().message()}});
    return 2;
  }
  auto config = kube::LoadKubeConfig(cmd.kubeconfig);
  if (!config.ok()) {
    LogError("cannot load kubeconfig",
             {{"path", cmd.kubeconfig}, {"error", config.status().ToString()}});
    return 1;
  }
  auto client = kube::NewHttpKubeClient(*config);
  if (!client.ok()) {
    LogError("cannot create API client",
             {{"server", config->server}, {"error", client.status().ToString()}});
    return 1;
  }
  const Clock* clock = &RealClock::Instance();
  auto runners = agent::NewPodRunnerFactory(cmd.options, client->get(), clock, config->server);
  if (!runners.ok()) {
    LogError("invalid flags", {{"error", runners.status().message()}});
    return 2;
  }
  agent::NodeAgent node_agent(client->get(), clock, std::move(*nodes), *runners);
  node_agent.Start();
  LogInfo("node agent running", {{"nodes", node_agent.size()}, {"server", config->server}});
  WaitForTerminationSignal();
  node_agent.Stop();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  BlockTerminationSignals();  // before any thread starts, so they all inherit the mask

  CLI::App app{"pdpool-agent: the pdpool per-node agent"};
  app.require_subcommand(1);
  app.fallthrough();  // global flags are also accepted after the subcommand
  std::string log_level = "info";
  app.add_option("--log-level", log_level, "debug, info, warn or error")
      ->check(CLI::IsMember({"debug", "info", "warn", "error"}))
      ->capture_default_str();
  NodeCommand node(app);
  agent::RouterCommand router(app);
  agent::WorkerCommand worker(app);

  CLI11_PARSE(app, argc, argv);
  SetLogLevel(log_level);
  if (node.command->parsed()) return RunNode(node);
  if (worker.parsed()) return worker.Run();
  if (router.parsed()) return router.Run();
  return 2;
}
