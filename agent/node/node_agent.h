// NodeAgent: `pdpool-agent node` without the command line: turns the node flags into one
// SimNodeOptions per simulated node (names, pod IP ranges, validation with errors that name
// the flag) and a PodRunner per node (--pod-runner: status-only, or process with its state
// directory, binary directory and restart back-off), and runs those nodes in one process,
// sharing one KubeClient.
// Thread-safe: Start and Stop from the owning thread.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "agent/node/pod_runner.h"
#include "agent/node/sim_node.h"
#include "common/clock.h"
#include "common/kube/kube_client.h"
#include "common/status.h"

namespace pdpool::agent {

// The node subcommand's flags, as given.
struct NodeAgentOptions {
  // Node name. With count > 1: "<name>-0".."<name>-<count-1>", or, when it contains one
  // printf integer conversion ("gb200-%02d"), that pattern applied to 0..count-1.
  std::string name = "pdpool-node";
  int count = 1;
  int gpus = 4;
  std::string clique = "nvl72-0";
  std::string gpu_product = "NVIDIA-GB200";
  std::vector<std::string> labels;  // "key=value"
  std::string cpu = "64";
  std::string memory = "512Gi";
  int max_pods = 110;
  std::string heartbeat_interval = "10s";
  // Second octet of pod IPs: node i of this process gives its pods 127.<ip_prefix>.<i>.2-254.
  // Agent processes sharing one machine need distinct values.
  int ip_prefix = 1;
  // What runs the pods: "status-only" (they only look alive) or "process" (local processes,
  // ProcessPodRunner).
  std::string pod_runner = "status-only";
  // process: where pdpool-agent and pdpool-controller are ("": the directory of this
  // executable).
  std::string binary_dir;
  // process: per-node state (volumes, container logs) goes to <state_dir>/<node name>/.
  std::string state_dir = "/var/lib/pdpool-agent";
  // process: crash-loop back-off (the kubelet's 10s doubling to 5m).
  std::string restart_backoff = "10s";
  std::string max_restart_backoff = "5m";
  // process: longest a pod gets to stop when the agent shuts down.
  std::string shutdown_grace_period = "30s";
};

// Validates the flags and expands them into per-node options. Errors name the flag and limit.
StatusOr<std::vector<SimNodeOptions>> ExpandNodeOptions(const NodeAgentOptions& options);

// "10s", "500ms", "1m30s", "2h" (Go duration syntax, non-negative, no fractions).
StatusOr<Duration> ParseDuration(std::string_view text);

using PodRunnerFactory = std::function<std::unique_ptr<PodRunner>(const SimNodeOptions&)>;

// The runner factory --pod-runner asks for. `api_server` is the URL containers reach the API
// server at (KUBERNETES_SERVICE_HOST/PORT), `client` reads the Secrets and ConfigMaps they
// mount; both outlive the factory's runners. Errors name the flag.
StatusOr<PodRunnerFactory> NewPodRunnerFactory(const NodeAgentOptions& options,
                                               kube::KubeClient* client, const Clock* clock,
                                               const std::string& api_server);

// "https://127.0.0.1:6443" → host "127.0.0.1", port "6443" ("[::1]:6443" → "::1"; no port:
// 443 for https, 80 for http). False when it is not such a URL.
bool SplitServerUrl(const std::string& url, std::string* host, std::string* port);

class NodeAgent {
 public:
  NodeAgent(kube::KubeClient* client, const Clock* clock, std::vector<SimNodeOptions> nodes,
            const PodRunnerFactory& runner_factory);
  ~NodeAgent();  // Stop()

  void Start();
  void Stop();

  size_t size() const { return nodes_.size(); }
  SimNode& node(size_t i) { return *nodes_[i]; }

 private:
  std::vector<std::unique_ptr<SimNode>> nodes_;
};

}  // namespace pdpool::agent
