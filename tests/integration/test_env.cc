// TestEnv implementation.
#include "tests/integration/test_env.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "common/kube/http_kube_client.h"
#include "common/kube/kubeconfig.h"

namespace pdpool::testing {
namespace {

std::string Env(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}

std::string Tail(const std::string& path, size_t max_bytes) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  return s.size() > max_bytes ? s.substr(s.size() - max_bytes) : s;
}

std::string Lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

}  // namespace

TestEnv::TestEnv() {
  kubeconfig_ = Env("PDPOOL_KUBECONFIG", PDPOOL_DEFAULT_KUBECONFIG);
  source_dir_ = Env("PDPOOL_SOURCE_DIR", PDPOOL_DEFAULT_SOURCE_DIR);
  build_dir_ = Env("PDPOOL_BUILD_DIR", PDPOOL_DEFAULT_BUILD_DIR);
  if (kubeconfig_.empty() || !std::filesystem::exists(kubeconfig_)) {
    ADD_FAILURE() << "no kubeconfig at " << kubeconfig_
                  << "): run integration tests through ctest, which starts the local control "
                     "plane (deploy/local/cluster.sh) as the kube_cluster fixture";
    return;
  }
  auto config = kube::LoadKubeConfigFile(kubeconfig_);
  if (!config.ok()) {
    ADD_FAILURE() << config.status().ToString();
    return;
  }
  auto client = kube::NewHttpKubeClient(*config);
  if (!client.ok()) {
    ADD_FAILURE() << client.status().ToString();
    return;
  }
  client_ = std::move(client).value();

  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string test_name = info ? Lower(std::string(info->name())) : "test";
  std::string clean;
  for (char c : test_name) clean.push_back(std::isalnum(static_cast<unsigned char>(c)) ? c : '-');
  if (clean.size() > 40) clean.resize(40);
  std::mt19937 rng(std::random_device{}());
  namespace_ = "it-" + clean + "-" + std::to_string(rng() % 100000);
  log_dir_ = build_dir_ + "/test-logs/" + namespace_;
  std::filesystem::create_directories(log_dir_);
  Json ns = {{"apiVersion", "v1"}, {"kind", "Namespace"}, {"metadata", {{"name", namespace_}}}};
  auto created = client_->Create(kube::kNamespaces, "", ns);
  if (!created.ok()) ADD_FAILURE() << "create namespace: " << created.status().ToString();
}

TestEnv::~TestEnv() {
  // Controllers first (so they stop recreating things), then clean the namespace while the
  // node agents still run, then the agents.
  for (auto& c : children_)
    if (c->name().rfind("controller", 0) == 0) c->Stop();
  if (client_) {
    kube::DeleteOptions fg;
    (void)client_->Delete(kube::kNamespaces, "", namespace_, fg);
    // Pods of a deleted namespace would stay Terminating (holding GPUs in the next test's
    // placement) once the node agents are gone: remove them now.
    auto pods = client_->List(kube::kPods, namespace_);
    if (pods.ok()) {
      for (const auto& p : (*pods)["items"]) {
        kube::DeleteOptions now;
        now.grace_period_seconds = 0;
        (void)client_->Delete(kube::kPods, namespace_, p["metadata"].value("name", ""), now);
      }
    }
  }
  for (auto& c : children_) c->Stop();
  children_.clear();
  // The nodes' agents are gone: remove their Nodes, or pods without node constraints (routers)
  // of the next test may be bound to a node that never runs them (the not-ready taint comes
  // only after the node monitor's grace period).
  if (client_) {
    for (const std::string& node : node_names_) (void)client_->Delete(kube::kNodes, "", node, {});
  }
}

std::string TestEnv::SourcePath(const std::string& relative) const {
  return source_dir_ + "/" + relative;
}
std::string TestEnv::BuildPath(const std::string& relative) const {
  return build_dir_ + "/" + relative;
}

CommandResult TestEnv::RunShell(const std::string& command) {
  CommandResult r;
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (!pipe) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, pipe)) > 0) r.output.append(buf, n);
  int status = pclose(pipe);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

std::unique_ptr<ChildProcess> TestEnv::StartLocalPrometheus(const std::string& controller_address,
                                                            const std::string& dir, int* port,
                                                            std::string* error) const {
  const std::string config = dir + "/prometheus.yml";
  CommandResult rendered = RunShell("'" + SourcePath("deploy/local/prometheus-config.sh") +
                                    "' --controller " + controller_address +
                                    " --scrape-interval 1s > '" + config + "'");
  if (rendered.exit_code != 0) {
    *error = "prometheus-config.sh failed: " + rendered.output;
    return nullptr;
  }
  *port = FreeLoopbackPort();
  return SpawnProcess("prometheus", "/usr/bin/prometheus",
                      {"--config.file=" + config, "--storage.tsdb.path=" + dir + "/prometheus-data",
                       "--web.listen-address=127.0.0.1:" + std::to_string(*port)},
                      dir + "/prometheus.log", error);
}

CommandResult TestEnv::Kubectl(const std::string& args, const std::string& stdin_text) {
  std::string input_file;
  std::string cmd = "kubectl --kubeconfig '" + kubeconfig_ + "' " + args;
  if (!stdin_text.empty()) {
    input_file = log_dir_ + "/stdin-" + std::to_string(std::rand()) + ".yaml";
    std::ofstream(input_file) << stdin_text;
    cmd += " < '" + input_file + "'";
  }
  CommandResult r = RunShell(cmd);
  if (!input_file.empty()) std::filesystem::remove(input_file);
  return r;
}

void TestEnv::InstallCrd() {
  auto r = Kubectl("apply -f '" + SourcePath("crds/inferencepools.pdpool.dev.yaml") + "'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = Kubectl("wait --for condition=established --timeout=60s crd/inferencepools.pdpool.dev");
  ASSERT_EQ(r.exit_code, 0) << r.output;
}

ChildProcess* TestEnv::Start(const std::string& name, const std::string& binary,
                             const std::vector<std::string>& args) {
  std::string error;
  auto child = SpawnProcess(name, binary, args, log_dir_ + "/" + name + ".log", &error);
  if (!child) {
    ADD_FAILURE() << error;
    return nullptr;
  }
  children_.push_back(std::move(child));
  return children_.back().get();
}

ChildProcess* TestEnv::StartNodes(const std::string& prefix, int count, int gpus,
                                  const std::string& clique, const NodeStartOptions& options) {
  std::vector<std::string> args = {"node", "--kubeconfig", kubeconfig_, "--name", prefix};
  args.insert(args.end(), {"--count", std::to_string(count), "--gpus", std::to_string(gpus),
                           "--clique", clique, "--heartbeat-interval", "5s"});
  if (options.process_runner) {
    args.insert(args.end(), {"--pod-runner", "process", "--binary-dir", build_dir_, "--state-dir",
                             NodeStateDir(prefix)});
  }
  if (options.ip_prefix != 0) {
    args.insert(args.end(), {"--ip-prefix", std::to_string(options.ip_prefix)});
  }
  args.insert(args.end(), options.extra_args.begin(), options.extra_args.end());
  for (int i = 0; i < count; ++i) node_names_.push_back(prefix + "-" + std::to_string(i));
  return Start("nodes-" + prefix, BuildPath("pdpool-agent"), args);
}

std::string TestEnv::NodeStateDir(const std::string& prefix) const {
  return log_dir_ + "/nodes-" + prefix + "-state";
}

ChildProcess* TestEnv::StartController(const std::string& identity,
                                       const std::vector<std::string>& extra_args) {
  std::vector<std::string> args = {"--kubeconfig",
                                   kubeconfig_,
                                   "--namespace",
                                   namespace_,
                                   "--leader-election-namespace",
                                   namespace_,
                                   "--identity",
                                   identity,
                                   "--metrics-bind-address",
                                   "127.0.0.1"};
  // Any free port, unless the test names one (to point a Prometheus at it).
  if (std::find(extra_args.begin(), extra_args.end(), "--metrics-port") == extra_args.end()) {
    args.insert(args.end(), {"--metrics-port", "0"});
  }
  args.insert(args.end(), extra_args.begin(), extra_args.end());
  return Start("controller-" + identity, BuildPath("pdpool-controller"), args);
}

void TestEnv::WaitForNodes(const std::string& prefix, int count) {
  bool ok = WaitFor(
      [&] {
        int ready = 0;
        for (int i = 0; i < count; i++) {
          auto node = client_->Get(kube::kNodes, "", prefix + "-" + std::to_string(i));
          if (!node.ok()) return false;
          if (ConditionStatus((*node), "Ready") == "True" &&
              JsonGet<std::string>(*node, "/status/allocatable/nvidia.com~1gpu", "") != "" &&
              JsonGet<Json>(*node, "/spec/taints", Json::array()).empty())
            ready++;
        }
        return ready == count;
      },
      std::chrono::seconds(60));
  ASSERT_TRUE(ok) << "nodes " << prefix << "-* not Ready\n" << ChildLogs();
}

bool TestEnv::WaitFor(const std::function<bool()>& condition, Duration timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    if (condition()) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

Json TestEnv::GetPool(const std::string& name) {
  auto pool = client_->Get(kube::kInferencePools, namespace_, name);
  return pool.ok() ? *pool : Json();
}

std::vector<Json> TestEnv::ListReplicaSets(const std::string& pool, const std::string& role) {
  kube::ListOptions lo;
  lo.label_selector = "pdpool.dev/pool=" + pool + ",pdpool.dev/role=" + role;
  auto list = client_->List(kube::kReplicaSets, namespace_, lo);
  std::vector<Json> out;
  if (list.ok())
    for (auto& item : (*list)["items"]) out.push_back(item);
  return out;
}

std::vector<Json> TestEnv::ListPods(const std::string& label_selector) {
  kube::ListOptions lo;
  lo.label_selector = label_selector;
  auto list = client_->List(kube::kPods, namespace_, lo);
  std::vector<Json> out;
  if (list.ok())
    for (auto& item : (*list)["items"]) out.push_back(item);
  return out;
}

std::string TestEnv::ConditionStatus(const Json& object, const std::string& type) {
  for (const auto& c : JsonGet<Json>(object, "/status/conditions", Json::array()))
    if (c.value("type", "") == type) return c.value("status", "");
  return "";
}

std::string TestEnv::ConditionReason(const Json& object, const std::string& type) {
  for (const auto& c : JsonGet<Json>(object, "/status/conditions", Json::array()))
    if (c.value("type", "") == type) return c.value("reason", "");
  return "";
}

std::string TestEnv::ChildLogs(size_t max_bytes_each) {
  std::string out;
  for (auto& c : children_)
    out += "----- " + c->name() + " (" + c->log_path() + ")\n" +
           Tail(c->log_path(), max_bytes_each) + "\n";
  return out;
}

}  // namespace pdpool::testing
