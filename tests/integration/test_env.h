// TestEnv: what integration tests need around the real local control plane started by the
// kube_cluster ctest fixture (deploy/local/cluster.sh): a client, a fresh namespace per test,
// kubectl, child processes (controller, simulated nodes) that are stopped at teardown, and
// waiting on conditions with deadlines. Not thread-safe; one per test.
#pragma once

#include <sys/types.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/clock.h"
#include "common/kube/kube_client.h"
#include "tests/support/child_process.h"

namespace pdpool::testing {

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};

// How StartNodes runs the node agent.
struct NodeStartOptions {
  // --pod-runner process: the pods bound to the nodes run as local processes (state under
  // NodeStateDir(prefix), binaries from the build directory); otherwise they only look alive.
  bool process_runner = false;
  // --ip-prefix (0: the agent's default, 1). Tests whose pods listen on their pod IPs pick
  // their own, so they do not meet other test runs on this machine's loopback addresses.
  int ip_prefix = 0;
  std::vector<std::string> extra_args;
};

class TestEnv {
 public:
  // Skips nothing: fails loudly if the fixture's kubeconfig is missing.
  TestEnv();
  ~TestEnv();

  kube::KubeClient& client() { return *client_; }
  const std::string& kubeconfig() const { return kubeconfig_; }
  const std::string& ns() const { return namespace_; }
  std::string SourcePath(const std::string& relative) const;
  std::string BuildPath(const std::string& relative) const;

  CommandResult Kubectl(const std::string& args, const std::string& stdin_text = "");
  // Runs `command` with /bin/sh; stdout and stderr together.
  static CommandResult RunShell(const std::string& command);
  // Applies the CRD from crds/ and waits until it is established.
  void InstallCrd();

  // Starts a binary from the build directory with args; its output goes to a log file.
  ChildProcess* Start(const std::string& name, const std::string& binary,
                      const std::vector<std::string>& args);
  // pdpool-agent node --count n --gpus g --clique domain, names <prefix>-<i>.
  ChildProcess* StartNodes(const std::string& prefix, int count, int gpus,
                           const std::string& clique, const NodeStartOptions& options = {});
  // --state-dir of StartNodes(prefix, ...) with process_runner: node <name>'s pods are under
  // <NodeStateDir(prefix)>/<name>/pods/<namespace>_<pod>_<uid>/.
  std::string NodeStateDir(const std::string& prefix) const;
  // pdpool-controller with leader election in the test namespace and its own lease name; its
  // metrics port is any free one unless extra_args has --metrics-port.
  ChildProcess* StartController(const std::string& identity,
                                const std::vector<std::string>& extra_args = {});
  // Debian's Prometheus with deploy/local/prometheus-config.sh's configuration: the pools' pods
  // from the controller's /prometheus/targets at `controller_address` (host:port), and the
  // controller itself, scraped every second; config, data and log under `dir`, the API on a free
  // loopback port (*port). Null, with `error` set, when it cannot be started.
  std::unique_ptr<ChildProcess> StartLocalPrometheus(const std::string& controller_address,
                                                     const std::string& dir, int* port,
                                                     std::string* error) const;
  // Waits until the named nodes report Ready with their GPUs.
  void WaitForNodes(const std::string& prefix, int count);

  // Polls `condition` (every 100 ms) until true or the deadline passes; false on timeout.
  static bool WaitFor(const std::function<bool()>& condition, Duration timeout);

  // Shortcuts over the client (namespace = this test's).
  Json GetPool(const std::string& name);
  std::vector<Json> ListReplicaSets(const std::string& pool, const std::string& role);
  std::vector<Json> ListPods(const std::string& label_selector);
  static std::string ConditionStatus(const Json& object, const std::string& type);
  static std::string ConditionReason(const Json& object, const std::string& type);
  // Log tail of every child process, for failure messages.
  std::string ChildLogs(size_t max_bytes_each = 4000);

 private:
  std::string kubeconfig_;
  std::string source_dir_;
  std::string build_dir_;
  std::string namespace_;
  std::string log_dir_;
  std::unique_ptr<kube::KubeClient> client_;
  std::vector<std::unique_ptr<ChildProcess>> children_;
  std::vector<std::string> node_names_;  // Nodes StartNodes registered; deleted at teardown
};

}  // namespace pdpool::testing
