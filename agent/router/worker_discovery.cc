// Worker discovery: static flag lists and the pod informer (see worker_discovery.h).
#include "agent/router/worker_discovery.h"

#include <algorithm>
#include <set>

#include "common/kube/resource.h"
#include "common/log.h"

namespace pdpool::agent {
namespace {

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

Status AppendList(std::string_view flag, std::string_view list, WorkerRole role,
                  std::set<std::string>* seen, std::vector<WorkerSpec>* out) {
  size_t start = 0;
  while (start <= list.size()) {
    size_t comma = list.find(',', start);
    if (comma == std::string_view::npos) comma = list.size();
    std::string_view entry = Trim(list.substr(start, comma - start));
    start = comma + 1;
    if (entry.empty()) continue;
    std::string host;
    int port = 0;
    Status s = ParseHostPort(entry, &host, &port);
    if (!s.ok()) return Status::InvalidArgument(std::string(flag) + ": " + s.message());
    if (!seen->insert(std::string(entry)).second) {
      return Status::InvalidArgument(std::string(flag) + ": worker address '" + std::string(entry) +
                                     "' is listed more than once");
    }
    out->push_back({std::string(entry), role});
  }
  return Status::Ok();
}

}  // namespace

StatusOr<std::vector<WorkerSpec>> ParseStaticWorkers(std::string_view prefill,
                                                     std::string_view decode,
                                                     std::string_view both) {
  std::vector<WorkerSpec> out;
  std::set<std::string> seen;
  if (Status s = AppendList("--prefill", prefill, WorkerRole::kPrefill, &seen, &out); !s.ok())
    return s;
  if (Status s = AppendList("--decode", decode, WorkerRole::kDecode, &seen, &out); !s.ok())
    return s;
  if (Status s = AppendList("--workers", both, WorkerRole::kBoth, &seen, &out); !s.ok()) return s;
  return out;
}

std::optional<WorkerSpec> WorkerSpecFromPod(const Json& pod, int worker_port) {
  if (JsonPath(pod, {"metadata", "deletionTimestamp"}) != nullptr) return std::nullopt;
  if (JsonStringAt(pod, {"status", "phase"}) != "Running") return std::nullopt;
  bool ready = false;
  if (const Json* conds = JsonPath(pod, {"status", "conditions"}); conds && conds->is_array()) {
    for (const Json& c : *conds) {
      if (JsonStringAt(c, {"type"}) == "Ready") ready = JsonStringAt(c, {"status"}) == "True";
    }
  }
  if (!ready) return std::nullopt;
  std::string ip = JsonStringAt(pod, {"status", "podIP"});
  if (ip.empty()) return std::nullopt;
  const Json* labels = JsonPath(pod, {"metadata", "labels"});
  if (labels == nullptr) return std::nullopt;
  auto role = ParseWorkerRole(JsonStringAt(*labels, {kRoleLabel}));
  if (!role) return std::nullopt;
  std::string host = ip.find(':') != std::string::npos ? "[" + ip + "]" : ip;
  return WorkerSpec{host + ":" + std::to_string(worker_port), *role};
}

namespace {

kube::InformerOptions PodInformerOptions(const KubeDiscoveryOptions& o) {
  kube::InformerOptions io;
  io.ns = o.ns;
  io.label_selector = std::string(kPoolLabel) + "=" + o.pool;
  return io;
}

}  // namespace

KubeWorkerDiscovery::KubeWorkerDiscovery(kube::KubeClient* client, KubeDiscoveryOptions options,
                                         WorkerPool* pool)
    : options_(std::move(options)),
      pool_(pool),
      informer_(client, kube::kPods, PodInformerOptions(options_)) {
  kube::InformerHandler h;
  h.on_add = [this](const kube::ObjectPtr&) { Resync(); };
  h.on_update = [this](const kube::ObjectPtr&, const kube::ObjectPtr&) { Resync(); };
  h.on_delete = [this](const kube::ObjectPtr&) { Resync(); };
  informer_.AddHandler(std::move(h));
}

KubeWorkerDiscovery::~KubeWorkerDiscovery() { Stop(); }

void KubeWorkerDiscovery::Start() {
  if (thread_.joinable()) return;
  thread_ = std::thread([this] { informer_.Run(&cancel_); });
  LogInfo("watching worker pods", {{"namespace", options_.ns},
                                   {"selector", std::string(kPoolLabel) + "=" + options_.pool}});
}

void KubeWorkerDiscovery::Stop() {
  cancel_.Cancel();
  if (thread_.joinable()) thread_.join();
}

bool KubeWorkerDiscovery::WaitForSync(Duration timeout) {
  if (!informer_.WaitForSync(timeout, &cancel_)) return false;
  Resync();  // an empty list fires no handler
  return true;
}

void KubeWorkerDiscovery::Resync() {
  std::vector<WorkerSpec> specs;
  for (const auto& pod : informer_.List()) {
    if (auto spec = WorkerSpecFromPod(*pod, options_.worker_port)) specs.push_back(*spec);
  }
  std::sort(specs.begin(), specs.end(),
            [](const WorkerSpec& a, const WorkerSpec& b) { return a.address < b.address; });
  pool_->SetWorkers(specs);
}

}  // namespace pdpool::agent
