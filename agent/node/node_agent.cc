// NodeAgent: flag validation, node naming, pod IP ranges, the pod runner per node, and the set
// of SimNodes.
#include "agent/node/node_agent.h"

#include <unistd.h>

#include <cctype>
#include <cstdio>
#include <filesystem>
#include <map>
#include <regex>
#include <set>
#include <thread>

#include "agent/node/pod_data_source.h"
#include "agent/node/process_pod_runner.h"
#include "agent/node/status_only_pod_runner.h"
#include "common/log.h"

namespace pdpool::agent {
namespace {

// RFC 1123 subdomain, as Kubernetes requires of Node names.
bool IsDnsSubdomain(const std::string& s) {
  static const std::regex re("[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*");
  return !s.empty() && s.size() <= 253 && std::regex_match(s, re);
}

bool IsLabelValue(const std::string& s) {
  static const std::regex re("([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?");
  return s.size() <= 63 && std::regex_match(s, re);
}

bool IsLabelKey(const std::string& key) {
  std::string name = key;
  auto slash = key.find('/');
  if (slash != std::string::npos) {
    std::string prefix = key.substr(0, slash);
    name = key.substr(slash + 1);
    if (!IsDnsSubdomain(prefix)) return false;
  }
  return !name.empty() && IsLabelValue(name);
}

// A Kubernetes resource quantity ("64", "500m", "512Gi", "1.5e3").
bool IsQuantity(const std::string& s) {
  static const std::regex re(
      "\\+?([0-9]+(\\.[0-9]*)?|\\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E|[eE][-+]?[0-9]+)?");
  return std::regex_match(s, re);
}

// Whether `pattern` has exactly one integer conversion (%d, %3d, %03d) and no other '%'
// (except "%%").
bool IsNamePattern(const std::string& pattern) {
  int conversions = 0;
  for (size_t i = 0; i < pattern.size(); ++i) {
    if (pattern[i] != '%') continue;
    if (i + 1 < pattern.size() && pattern[i + 1] == '%') {
      ++i;
      continue;
    }
    size_t j = i + 1;
    while (j < pattern.size() && std::isdigit(static_cast<unsigned char>(pattern[j]))) ++j;
    if (j >= pattern.size() || pattern[j] != 'd' || j - i > 4) return false;
    ++conversions;
    i = j;
  }
  return conversions == 1;
}

std::string NodeName(const std::string& name, int count, int index) {
  if (name.find('%') != std::string::npos) {
    char buf[512];
    std::snprintf(buf, sizeof buf, name.c_str(), index);  // validated by IsNamePattern
    return buf;
  }
  return count == 1 ? name : name + "-" + std::to_string(index);
}

}  // namespace

StatusOr<Duration> ParseDuration(std::string_view text) {
  if (text.empty()) return Status::InvalidArgument("empty duration");
  if (text == "0") return Duration::zero();
  Duration total{0};
  size_t i = 0;
  while (i < text.size()) {
    size_t start = i;
    while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) ++i;
    if (i == start || i - start > 12) {
      return Status::InvalidArgument("bad duration \"" + std::string(text) +
                                     "\" (want e.g. 10s, 500ms, 1m30s)");
    }
    int64_t n = std::stoll(std::string(text.substr(start, i - start)));
    size_t unit_start = i;
    while (i < text.size() && !std::isdigit(static_cast<unsigned char>(text[i]))) ++i;
    std::string_view unit = text.substr(unit_start, i - unit_start);
    if (unit == "ns")
      total += std::chrono::nanoseconds(n);
    else if (unit == "us")
      total += std::chrono::microseconds(n);
    else if (unit == "ms")
      total += std::chrono::milliseconds(n);
    else if (unit == "s")
      total += std::chrono::seconds(n);
    else if (unit == "m")
      total += std::chrono::minutes(n);
    else if (unit == "h")
      total += std::chrono::hours(n);
    else
      return Status::InvalidArgument("bad duration \"" + std::string(text) +
                                     "\": unit must be ns, us, ms, s, m or h");
  }
  return total;
}

StatusOr<std::vector<SimNodeOptions>> ExpandNodeOptions(const NodeAgentOptions& o) {
  auto invalid = [](const std::string& m) { return Status::InvalidArgument(m); };
  if (o.count < 1 || o.count > 256) {
    return invalid("--count: must be 1..256 (one 127.<ip-prefix>.<i>.0/24 per node), got " +
                   std::to_string(o.count));
  }
  if (o.name.find('%') != std::string::npos && !IsNamePattern(o.name)) {
    return invalid("--name \"" + o.name +
                   "\": a pattern needs exactly one integer conversion such as %d or %02d");
  }
  if (o.gpus < 0 || o.gpus > 1024) {
    return invalid("--gpus: must be 0..1024, got " + std::to_string(o.gpus));
  }
  if (o.max_pods < 1 || o.max_pods > 253) {
    return invalid("--pods: must be 1..253 (pod IPs per node), got " + std::to_string(o.max_pods));
  }
  if (o.ip_prefix < 1 || o.ip_prefix > 255) {
    return invalid("--ip-prefix: must be 1..255, got " + std::to_string(o.ip_prefix));
  }
  if (!IsLabelValue(o.clique)) {
    return invalid("--clique \"" + o.clique +
                   "\": must be a label value (63 characters of [A-Za-z0-9_.-], alphanumeric at "
                   "both ends)");
  }
  if (o.gpu_product.empty() || !IsLabelValue(o.gpu_product)) {
    return invalid("--gpu-product \"" + o.gpu_product + "\": must be a non-empty label value");
  }
  if (!IsQuantity(o.cpu)) return invalid("--cpu \"" + o.cpu + "\": not a quantity (e.g. 64, 500m)");
  if (!IsQuantity(o.memory)) {
    return invalid("--memory \"" + o.memory + "\": not a quantity (e.g. 512Gi)");
  }
  auto interval = ParseDuration(o.heartbeat_interval);
  if (!interval.ok()) return invalid("--heartbeat-interval: " + interval.status().message());
  if (*interval <= Duration::zero() ||
      *interval >= std::chrono::seconds(kNodeLeaseDurationSeconds)) {
    return invalid("--heartbeat-interval " + o.heartbeat_interval +
                   ": must be > 0 and < 40s (the node lease duration)");
  }
  std::map<std::string, std::string> labels;
  for (const std::string& kv : o.labels) {
    auto eq = kv.find('=');
    if (eq == std::string::npos) return invalid("--label \"" + kv + "\": want key=value");
    std::string k = kv.substr(0, eq), v = kv.substr(eq + 1);
    if (!IsLabelKey(k)) return invalid("--label \"" + kv + "\": \"" + k + "\" is not a label key");
    if (!IsLabelValue(v)) {
      return invalid("--label \"" + kv + "\": \"" + v + "\" is not a label value");
    }
    labels[k] = v;
  }

  std::vector<SimNodeOptions> nodes;
  std::set<std::string> names;
  for (int i = 0; i < o.count; ++i) {
    SimNodeOptions n;
    n.name = NodeName(o.name, o.count, i);
    if (!IsDnsSubdomain(n.name)) {
      return invalid("--name: \"" + n.name +
                     "\" is not a valid node name (lower-case RFC 1123 subdomain, 253 characters)");
    }
    if (!names.insert(n.name).second) {
      return invalid("--name \"" + o.name + "\": gives \"" + n.name + "\" twice");
    }
    n.gpus = o.gpus;
    n.clique = o.clique;
    n.gpu_product = o.gpu_product;
    n.labels = labels;
    n.cpu = o.cpu;
    n.memory = o.memory;
    n.max_pods = o.max_pods;
    n.heartbeat_interval = *interval;
    n.pod_ip_prefix = "127." + std::to_string(o.ip_prefix) + "." + std::to_string(i) + ".";
    nodes.push_back(std::move(n));
  }
  return nodes;
}

bool SplitServerUrl(const std::string& url, std::string* host, std::string* port) {
  std::string rest = url;
  std::string default_port;
  if (rest.starts_with("https://")) {
    rest = rest.substr(8);
    default_port = "443";
  } else if (rest.starts_with("http://")) {
    rest = rest.substr(7);
    default_port = "80";
  } else {
    return false;
  }
  rest = rest.substr(0, rest.find('/'));
  if (rest.empty()) return false;
  std::string h, p;
  if (rest.front() == '[') {
    size_t close = rest.find(']');
    if (close == std::string::npos) return false;
    h = rest.substr(1, close - 1);
    if (close + 1 < rest.size()) {
      if (rest[close + 1] != ':') return false;
      p = rest.substr(close + 2);
    }
  } else {
    size_t colon = rest.rfind(':');
    h = rest.substr(0, colon);
    if (colon != std::string::npos) p = rest.substr(colon + 1);
  }
  if (p.empty()) p = default_port;
  if (h.empty() || p.find_first_not_of("0123456789") != std::string::npos) return false;
  *host = h;
  *port = p;
  return true;
}

StatusOr<PodRunnerFactory> NewPodRunnerFactory(const NodeAgentOptions& o, kube::KubeClient* client,
                                               const Clock* clock, const std::string& api_server) {
  auto invalid = [](const std::string& m) { return Status::InvalidArgument(m); };
  if (o.pod_runner == "status-only") {
    return PodRunnerFactory([clock](const SimNodeOptions&) -> std::unique_ptr<PodRunner> {
      return std::make_unique<StatusOnlyPodRunner>(clock);
    });
  }
  if (o.pod_runner != "process") {
    return invalid("--pod-runner \"" + o.pod_runner + "\": must be status-only or process");
  }
  ProcessPodRunnerOptions base;
  auto backoff = ParseDuration(o.restart_backoff);
  if (!backoff.ok() || *backoff <= Duration::zero()) {
    return invalid("--restart-backoff \"" + o.restart_backoff + "\": must be a duration > 0");
  }
  auto max_backoff = ParseDuration(o.max_restart_backoff);
  if (!max_backoff.ok() || *max_backoff < *backoff) {
    return invalid("--max-restart-backoff \"" + o.max_restart_backoff +
                   "\": must be a duration >= --restart-backoff");
  }
  auto shutdown = ParseDuration(o.shutdown_grace_period);
  if (!shutdown.ok()) {
    return invalid("--shutdown-grace-period: " + shutdown.status().message());
  }
  base.restart_backoff.initial = *backoff;
  base.restart_backoff.max = *max_backoff;
  // The kubelet forgets a container's crashes after twice the longest back-off.
  base.restart_backoff.reset_after = 2 * *max_backoff;
  base.shutdown_grace = *shutdown;
  std::error_code ec;
  base.binary_dir = o.binary_dir;
  if (base.binary_dir.empty()) {
    auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
    if (ec) return invalid("--binary-dir: not given, and /proc/self/exe: " + ec.message());
    base.binary_dir = exe.parent_path().string();
  }
  if (!std::filesystem::is_directory(base.binary_dir, ec)) {
    return invalid("--binary-dir " + base.binary_dir + ": not a directory");
  }
  if (o.state_dir.empty()) return invalid("--state-dir: must not be empty");
  std::filesystem::create_directories(o.state_dir, ec);
  if (ec) return invalid("--state-dir " + o.state_dir + ": " + ec.message());
  base.node_dir = std::filesystem::absolute(o.state_dir, ec).string();
  if (!SplitServerUrl(api_server, &base.api_server_host, &base.api_server_port)) {
    return invalid("API server URL \"" + api_server +
                   "\" (from the kubeconfig): want https://host:port");
  }
  if (::geteuid() != 0) {
    LogWarn(
        "the process pod runner needs root (a private mount namespace per container); "
        "containers will fail to start",
        {{"euid", static_cast<int64_t>(::geteuid())}});
  }
  PodDataSource data = ApiPodDataSource(client);
  return PodRunnerFactory(
      [clock, data, base](const SimNodeOptions& node) -> std::unique_ptr<PodRunner> {
        ProcessPodRunnerOptions options = base;
        options.node_name = node.name;
        options.node_dir = base.node_dir + "/" + node.name;
        return std::make_unique<ProcessPodRunner>(clock, data, options);
      });
}

NodeAgent::NodeAgent(kube::KubeClient* client, const Clock* clock,
                     std::vector<SimNodeOptions> nodes, const PodRunnerFactory& runner_factory) {
  for (auto& n : nodes) {
    auto runner = runner_factory(n);
    nodes_.push_back(std::make_unique<SimNode>(client, clock, std::move(n), std::move(runner)));
  }
}

NodeAgent::~NodeAgent() { Stop(); }

void NodeAgent::Start() {
  for (auto& n : nodes_) n->Start();
}

void NodeAgent::Stop() {
  // Stopped in parallel: each waits for its watch to end and any pod stop under way.
  std::vector<std::thread> stoppers;
  for (auto& n : nodes_) stoppers.emplace_back([&n] { n->Stop(); });
  for (auto& t : stoppers) t.join();
}

}  // namespace pdpool::agent
