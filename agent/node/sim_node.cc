// SimNode: registration, heartbeats and the pod lifecycle of one simulated node.
//
// Threads: the heartbeat thread owns registration, node status and the Lease; the informer
// thread lists and watches this node's pods (field selector spec.nodeName=<node>, one watch
// per node, as a kubelet has) and only records what it sees; the sync thread acts on pods one
// at a time (start, write status, finalize deletion); each runner Stop runs on its own thread
// so a long grace period holds up no other pod. Only the sync thread erases from pods_, so a
// PodState reference stays valid across the unlocked API calls it makes.
#include "agent/node/sim_node.h"

#include <sys/utsname.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <utility>

#include "common/log.h"

namespace pdpool::agent {
namespace {

using kube::ObjectPtr;

constexpr int kFirstHostOctet = 2;  // .0 network, .1 the host's own loopback address
constexpr int kLastHostOctet = 254;

std::string Str(const Json& doc, const char* pointer) {
  return JsonGet<std::string>(doc, pointer, "");
}

std::string PodKey(const Json& pod) {
  return Str(pod, "/metadata/namespace") + "/" + Str(pod, "/metadata/name");
}

bool HasDeletionTimestamp(const Json& pod) {
  return !Str(pod, "/metadata/deletionTimestamp").empty();
}

bool IsTerminalPhase(const std::string& phase) { return phase == "Succeeded" || phase == "Failed"; }

// Stable pseudo-identifiers for nodeInfo (machineID and friends), derived from the node name
// so they survive agent restarts.
std::string HexId(const std::string& seed) {
  size_t h1 = std::hash<std::string>{}(seed);
  size_t h2 = std::hash<std::string>{}(seed + "#");
  char buf[40];
  std::snprintf(buf, sizeof buf, "%016zx%016zx", h1, h2);
  return buf;
}

std::string KernelVersion() {
  struct utsname u {};
  if (uname(&u) != 0) return "unknown";
  return u.release;
}

const char* Architecture() {
#if defined(__x86_64__)
  return "amd64";
#elif defined(__aarch64__)
  return "arm64";
#else
  return "unknown";
#endif
}

// Seconds a pod being deleted gets to stop: metadata.deletionGracePeriodSeconds (set by the
// API server from the delete request or spec.terminationGracePeriodSeconds), else the spec's,
// else the Kubernetes default of 30.
Duration GracePeriod(const Json& pod) {
  int64_t secs = JsonGet<int64_t>(pod, "/metadata/deletionGracePeriodSeconds", -1);
  if (secs < 0) secs = JsonGet<int64_t>(pod, "/spec/terminationGracePeriodSeconds", 30);
  if (secs < 0) secs = 0;
  return std::chrono::seconds(secs);
}

// Replaces (or appends) condition `type`, keeping lastTransitionTime when status is unchanged,
// as metav1 condition semantics require.
void SetCondition(Json& conditions, const std::string& type, bool value, const std::string& reason,
                  const std::string& message, const std::string& now) {
  std::string status = value ? "True" : "False";
  Json cond = {{"type", type}, {"status", status}, {"lastTransitionTime", now}};
  if (!reason.empty()) cond["reason"] = reason;
  if (!message.empty()) cond["message"] = message;
  for (Json& c : conditions) {
    if (Str(c, "/type") != type) continue;
    if (Str(c, "/status") == status && !Str(c, "/lastTransitionTime").empty()) {
      cond["lastTransitionTime"] = c["lastTransitionTime"];
    }
    c = std::move(cond);
    return;
  }
  conditions.push_back(std::move(cond));
}

std::string ComputePodPhase(const Json& pod, const PodRunStatus& run) {
  using Phase = ContainerRunState::Phase;
  if (run.containers.empty()) return "Running";
  bool any_running = false, all_terminated = true, any_failed = false, ever_started = false;
  for (const auto& c : run.containers) {
    if (c.phase == Phase::kRunning) any_running = true;
    if (c.phase != Phase::kTerminated) all_terminated = false;
    if (c.phase == Phase::kTerminated && c.exit_code != 0) any_failed = true;
    if (c.phase != Phase::kWaiting || c.restart_count > 0) ever_started = true;
  }
  if (any_running) return "Running";
  std::string policy = JsonGet<std::string>(pod, "/spec/restartPolicy", "Always");
  if (all_terminated) {
    if (policy == "Never") return any_failed ? "Failed" : "Succeeded";
    if (policy == "OnFailure") return any_failed ? "Running" : "Succeeded";
    return "Running";  // Always: the runner restarts them
  }
  return ever_started ? "Running" : "Pending";
}

Json ContainerStatusJson(const ContainerRunState& c) {
  using Phase = ContainerRunState::Phase;
  Json state;
  switch (c.phase) {
    case Phase::kWaiting: {
      Json w = Json::object();
      if (!c.reason.empty()) w["reason"] = c.reason;
      if (!c.message.empty()) w["message"] = c.message;
      state["waiting"] = w;
      break;
    }
    case Phase::kRunning:
      state["running"] = {{"startedAt", FormatRfc3339(c.started_at)}};
      break;
    case Phase::kTerminated: {
      Json t = {{"exitCode", c.exit_code},
                {"startedAt", FormatRfc3339(c.started_at)},
                {"finishedAt", FormatRfc3339(c.finished_at)},
                {"containerID", c.container_id}};
      t["reason"] = c.reason.empty() ? (c.exit_code == 0 ? "Completed" : "Error") : c.reason;
      if (!c.message.empty()) t["message"] = c.message;
      state["terminated"] = t;
      break;
    }
  }
  Json last_state = Json::object();
  if (c.last_termination) {
    const ContainerTermination& t = *c.last_termination;
    Json term = {
        {"exitCode", t.exit_code},
        {"reason", t.reason.empty() ? (t.exit_code == 0 ? "Completed" : "Error") : t.reason},
        {"startedAt", FormatRfc3339(t.started_at)},
        {"finishedAt", FormatRfc3339(t.finished_at)}};
    if (!t.message.empty()) term["message"] = t.message;
    last_state["terminated"] = term;
  }
  Json status = {{"name", c.name},   {"state", state},       {"lastState", last_state},
                 {"ready", c.ready}, {"started", c.started}, {"restartCount", c.restart_count},
                 {"image", c.image}, {"imageID", c.image_id}};
  // A container that never started has no ID yet (the kubelet omits it too).
  if (!c.container_id.empty()) status["containerID"] = c.container_id;
  return status;
}

}  // namespace

SimNode::SimNode(kube::KubeClient* client, const Clock* clock, SimNodeOptions options,
                 std::unique_ptr<PodRunner> runner)
    : client_(client),
      clock_(clock),
      options_(std::move(options)),
      runner_(std::move(runner)),
      ip_owner_(256) {
  runner_->SetStatusListener(
      [this](const std::string& uid, const PodRunStatus& run) { OnRunnerStatus(uid, run); });
}

SimNode::~SimNode() { Stop(); }

void SimNode::Start() {
  {
    std::lock_guard lock(mu_);
    if (started_) return;
    started_ = true;
  }
  kube::InformerOptions io;
  io.field_selector = "spec.nodeName=" + options_.name;
  io.initial_backoff = options_.initial_backoff;
  io.max_backoff = options_.max_backoff;
  informer_ = std::make_unique<kube::Informer>(client_, kube::kPods, io);
  informer_->AddHandler(kube::InformerHandler{
      .on_add = [this](const ObjectPtr& pod) { OnPodEvent(pod, false); },
      .on_update = [this](const ObjectPtr&, const ObjectPtr& pod) { OnPodEvent(pod, false); },
      .on_delete = [this](const ObjectPtr& pod) { OnPodEvent(pod, true); },
  });
  heartbeat_thread_ = std::thread([this] { HeartbeatLoop(); });
  informer_thread_ = std::thread([this] { informer_->Run(&cancel_); });
  sync_thread_ = std::thread([this] { SyncLoop(); });
}

void SimNode::Stop() {
  {
    std::lock_guard lock(mu_);
    if (!started_ || stopping_) return;
    stopping_ = true;
  }
  cv_.notify_all();
  cancel_.Cancel();
  for (std::thread* t : {&heartbeat_thread_, &informer_thread_, &sync_thread_}) {
    if (t->joinable()) t->join();
  }
  std::map<std::string, std::thread> stoppers;
  {
    std::lock_guard lock(mu_);
    stoppers.swap(stoppers_);
  }
  for (auto& [uid, t] : stoppers) t.join();
  runner_->Shutdown();
  LogInfo("node agent stopped", {{"node", options_.name}});
}

bool SimNode::WaitUntil(TimePoint deadline) {
  std::unique_lock lock(mu_);
  heartbeat_waits_until_ = deadline;
  while (!stopping_) {
    TimePoint now = clock_->Now();
    if (now >= deadline) {
      heartbeat_waits_until_ = TimePoint::min();
      return true;
    }
    cv_.wait_for(lock, std::min<Duration>(deadline - now, options_.clock_poll));
  }
  return false;
}

bool SimNode::Quiescent() const {
  std::lock_guard lock(mu_);
  TimePoint now = clock_->Now();
  if (heartbeat_waits_until_ <= now || sync_busy_ || !stoppers_.empty()) return false;
  for (const auto& [uid, entry] : queue_) {
    if (entry.due <= now) return false;
  }
  return true;
}

Duration SimNode::Backoff(int failures) const {
  Duration d = options_.initial_backoff;
  for (int i = 0; i < failures && d < options_.max_backoff; ++i) d *= 2;
  return std::min(d, options_.max_backoff);
}

void SimNode::ReportResult(const std::string& op, const Status& status, const std::string& object) {
  std::string key = op + " " + object;
  std::lock_guard lock(log_mu_);
  auto it = failing_ops_.find(key);
  if (status.ok()) {
    if (it != failing_ops_.end()) {
      failing_ops_.erase(it);
      LogInfo("api call recovered", {{"node", options_.name}, {"op", op}, {"object", object}});
    }
    return;
  }
  api_errors_++;
  if (it == failing_ops_.end()) {
    failing_ops_.emplace(key, status.ToString());
    LogWarn(
        "api call failed, retrying with backoff",
        {{"node", options_.name}, {"op", op}, {"object", object}, {"error", status.ToString()}});
  } else {
    LogDebug(
        "api call failed again",
        {{"node", options_.name}, {"op", op}, {"object", object}, {"error", status.ToString()}});
  }
}

void SimNode::ForgetFailures(const std::string& object) {
  std::lock_guard lock(log_mu_);
  std::string suffix = " " + object;
  for (auto it = failing_ops_.begin(); it != failing_ops_.end();) {
    if (it->first.ends_with(suffix)) {
      it = failing_ops_.erase(it);
    } else {
      ++it;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Node registration and heartbeats.

Json SimNode::BuildNode() const {
  Json labels = {
      {"kubernetes.io/hostname", options_.name},
      {"kubernetes.io/os", "linux"},
      {"kubernetes.io/arch", Architecture()},
      {"nvidia.com/gpu.present", "true"},
      {"nvidia.com/gpu.product", options_.gpu_product},
      {"nvidia.com/gpu.count", std::to_string(options_.gpus)},
      {"pdpool.dev/simulated", "true"},
  };
  if (!options_.clique.empty()) labels["nvidia.com/gpu.clique"] = options_.clique;
  for (const auto& [k, v] : options_.labels) labels[k] = v;
  std::string cidr = options_.pod_ip_prefix + "0/24";
  return {{"apiVersion", "v1"},
          {"kind", "Node"},
          {"metadata", {{"name", options_.name}, {"labels", labels}}},
          {"spec", {{"podCIDR", cidr}, {"podCIDRs", Json::array({cidr})}}}};
}

Json SimNode::BuildNodeStatus(WallTime now) const {
  std::string now_s = FormatRfc3339(now);
  std::string registered_s = FormatRfc3339(registered_at_);
  auto condition = [&](const char* type, const char* status, const char* reason,
                       const char* message) {
    auto it = condition_transition_.find(type);
    return Json{
        {"type", type},
        {"status", status},
        {"reason", reason},
        {"message", message},
        {"lastHeartbeatTime", now_s},
        {"lastTransitionTime", it != condition_transition_.end() ? it->second : registered_s}};
  };
  Json resources = {{"cpu", options_.cpu},
                    {"memory", options_.memory},
                    {"pods", std::to_string(options_.max_pods)},
                    {"ephemeral-storage", "1Ti"},
                    {"nvidia.com/gpu", std::to_string(options_.gpus)}};
  return {
      {"capacity", resources},
      {"allocatable", resources},
      {"conditions",
       Json::array({
           condition("MemoryPressure", "False", "KubeletHasSufficientMemory",
                     "kubelet has sufficient memory available"),
           condition("DiskPressure", "False", "KubeletHasNoDiskPressure",
                     "kubelet has no disk pressure"),
           condition("PIDPressure", "False", "KubeletHasSufficientPID",
                     "kubelet has sufficient PID available"),
           condition("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
       })},
      {"addresses", Json::array({{{"type", "InternalIP"}, {"address", options_.host_ip}},
                                 {{"type", "Hostname"}, {"address", options_.name}}})},
      {"daemonEndpoints", {{"kubeletEndpoint", {{"Port", 0}}}}},
      {"nodeInfo",
       {{"machineID", HexId("machine/" + options_.name)},
        {"systemUUID", HexId("system/" + options_.name)},
        {"bootID", HexId("boot/" + options_.name)},
        {"kernelVersion", KernelVersion()},
        {"osImage", "pdpool simulated node"},
        {"containerRuntimeVersion", "pdpool://0.1.0"},
        {"kubeletVersion", "v1.20.2"},
        {"kubeProxyVersion", "v1.20.2"},
        {"operatingSystem", "linux"},
        {"architecture", Architecture()}}},
  };
}

void SimNode::RememberConditionTimes(const Json& node) {
  // Keeps the transition times the node already shows for conditions this agent reports with
  // the same status, so an agent restart is not a transition.
  static const std::map<std::string, std::string> kOurs = {{"Ready", "True"},
                                                           {"MemoryPressure", "False"},
                                                           {"DiskPressure", "False"},
                                                           {"PIDPressure", "False"}};
  condition_transition_.clear();
  const Json conditions = JsonGet<Json>(node, "/status/conditions", Json::array());
  if (!conditions.is_array()) return;
  for (const Json& c : conditions) {
    auto it = kOurs.find(Str(c, "/type"));
    if (it == kOurs.end() || Str(c, "/status") != it->second) continue;
    std::string t = Str(c, "/lastTransitionTime");
    if (!t.empty()) condition_transition_[it->first] = t;
  }
}

bool SimNode::Register() {
  Json node = BuildNode();
  Json stored;
  bool existed = false;
  auto created = client_->Create(kube::kNodes, "", node);
  if (created.ok()) {
    stored = std::move(*created);
  } else if (created.status().IsAlreadyExists()) {
    existed = true;
    // Another run of this agent (or a person) registered it: bring the labels up to date and
    // keep everything else, including labels this agent does not manage.
    Status last = Status::Conflict("node " + options_.name + " kept changing");
    for (int attempt = 0; attempt < 3 && stored.is_null(); ++attempt) {
      auto got = client_->Get(kube::kNodes, "", options_.name);
      if (!got.ok()) {
        last = got.status();
        if (got.status().IsNotFound()) continue;  // deleted meanwhile: create on next try
        break;
      }
      Json updated = *got;
      for (const auto& [k, v] : node["metadata"]["labels"].items()) {
        updated["metadata"]["labels"][k] = v;
      }
      if (updated == *got) {
        stored = std::move(*got);
        break;
      }
      auto put = client_->Update(kube::kNodes, updated);
      if (put.ok()) {
        stored = std::move(*put);
      } else {
        last = put.status();
        if (!put.status().IsConflict()) break;
      }
    }
    if (stored.is_null()) {
      ReportResult("register node", last, options_.name);
      return false;
    }
  } else {
    ReportResult("register node", created.status(), options_.name);
    return false;
  }
  ReportResult("register node", Status::Ok(), options_.name);
  node_uid_ = Str(stored, "/metadata/uid");
  registered_at_ = clock_->WallNow();
  RememberConditionTimes(stored);
  lease_.reset();
  LogInfo("node registered", {{"node", options_.name},
                              {"gpus", options_.gpus},
                              {"clique", options_.clique},
                              {"uid", node_uid_},
                              {"existing", existed ? "true" : "false"}});
  return true;
}

Status SimNode::PostNodeStatus() {
  Json patch = {{"status", BuildNodeStatus(clock_->WallNow())}};
  kube::PatchOptions po;
  po.subresource = "status";
  auto r = client_->Patch(kube::kNodes, "", options_.name, kube::PatchType::kMerge, patch, po);
  return r.ok() ? Status::Ok() : r.status();
}

Status SimNode::RenewLease() {
  std::string now = FormatRfc3339Micro(clock_->WallNow());
  Json owners = Json::array();
  if (!node_uid_.empty()) {
    // Owned by the Node, as a kubelet's lease is, so it goes with a deleted Node.
    owners.push_back(
        {{"apiVersion", "v1"}, {"kind", "Node"}, {"name", options_.name}, {"uid", node_uid_}});
  }
  Status last = Status::Ok();
  for (int attempt = 0; attempt < 3; ++attempt) {
    if (!lease_) {
      auto got = client_->Get(kube::kLeases, kNodeLeaseNamespace, options_.name);
      if (got.ok()) {
        lease_ = std::move(*got);
      } else if (got.status().IsNotFound()) {
        Json lease = {{"apiVersion", "coordination.k8s.io/v1"},
                      {"kind", "Lease"},
                      {"metadata", {{"name", options_.name}, {"namespace", kNodeLeaseNamespace}}},
                      {"spec",
                       {{"holderIdentity", options_.name},
                        {"leaseDurationSeconds", kNodeLeaseDurationSeconds},
                        {"renewTime", now}}}};
        if (!owners.empty()) lease["metadata"]["ownerReferences"] = owners;
        auto created = client_->Create(kube::kLeases, kNodeLeaseNamespace, lease);
        if (created.ok()) {
          lease_ = std::move(*created);
          return Status::Ok();
        }
        last = created.status();
        if (created.status().IsAlreadyExists()) continue;
        return last;
      } else {
        return got.status();
      }
    }
    Json lease = *lease_;
    lease["spec"]["holderIdentity"] = options_.name;
    lease["spec"]["leaseDurationSeconds"] = kNodeLeaseDurationSeconds;
    lease["spec"]["renewTime"] = now;
    if (!owners.empty()) lease["metadata"]["ownerReferences"] = owners;
    auto updated = client_->Update(kube::kLeases, lease);
    if (updated.ok()) {
      lease_ = std::move(*updated);
      return Status::Ok();
    }
    lease_.reset();
    last = updated.status();
    if (!last.IsConflict() && !last.IsNotFound()) return last;
  }
  return last;
}

bool SimNode::Heartbeat() {
  if (!node_exists_) {
    if (!Register()) return false;
    node_exists_ = true;
  }
  Status s = PostNodeStatus();
  if (s.IsNotFound()) {
    registered_ = false;
    node_exists_ = false;
    LogWarn("node deleted under the agent, re-registering", {{"node", options_.name}});
    if (!Register()) return false;
    node_exists_ = true;
    s = PostNodeStatus();
  }
  ReportResult("post node status", s, options_.name);
  if (!s.ok()) return false;
  registered_ = true;
  s = RenewLease();
  ReportResult("renew lease", s, std::string(kNodeLeaseNamespace) + "/" + options_.name);
  if (!s.ok()) return false;
  heartbeats_++;
  return true;
}

void SimNode::HeartbeatLoop() {
  int failures = 0;
  TimePoint next = clock_->Now();
  while (WaitUntil(next)) {
    if (Heartbeat()) {
      failures = 0;
      next = clock_->Now() + options_.heartbeat_interval;
    } else {
      // Never wait longer than a heartbeat: a stale lease makes the node NotReady.
      next = clock_->Now() + std::min(Backoff(failures++), options_.heartbeat_interval);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Pod IPs.

bool SimNode::ParseOwnIp(const std::string& ip, int* octet) const {
  if (!ip.starts_with(options_.pod_ip_prefix)) return false;
  std::string rest = ip.substr(options_.pod_ip_prefix.size());
  if (rest.empty() || rest.size() > 3 || rest.find_first_not_of("0123456789") != std::string::npos)
    return false;
  int v = std::stoi(rest);
  if (v < kFirstHostOctet || v > kLastHostOctet) return false;
  *octet = v;
  return true;
}

bool SimNode::ReserveIpLocked(const std::string& ip, const std::string& uid) {
  int octet = 0;
  if (!ParseOwnIp(ip, &octet)) return false;
  if (!ip_owner_[octet].empty() && ip_owner_[octet] != uid) return false;
  ip_owner_[octet] = uid;
  return true;
}

std::string SimNode::IpOwnedByLocked(const std::string& uid) const {
  for (int o = kFirstHostOctet; o <= kLastHostOctet; ++o) {
    if (ip_owner_[o] == uid) return options_.pod_ip_prefix + std::to_string(o);
  }
  return "";
}

std::string SimNode::AllocateIpLocked(const std::string& uid) {
  // Round robin, as host-local IPAM does, so a just-freed address is not handed straight to
  // the next pod while clients may still be talking to the old one.
  const int span = kLastHostOctet - kFirstHostOctet + 1;
  for (int i = 0; i < span; ++i) {
    int o = kFirstHostOctet + (ip_cursor_ - kFirstHostOctet + i) % span;
    if (ip_owner_[o].empty()) {
      ip_owner_[o] = uid;
      ip_cursor_ = o + 1 > kLastHostOctet ? kFirstHostOctet : o + 1;
      return options_.pod_ip_prefix + std::to_string(o);
    }
  }
  return "";
}

void SimNode::ReleaseIpsLocked(const std::string& uid) {
  for (int o = kFirstHostOctet; o <= kLastHostOctet; ++o) {
    if (ip_owner_[o] == uid) ip_owner_[o].clear();
  }
}

// ---------------------------------------------------------------------------------------------
// Pods.

void SimNode::OnPodEvent(const ObjectPtr& pod, bool deleted) {
  std::string uid = Str(*pod, "/metadata/uid");
  if (uid.empty()) return;
  // The watch is already filtered by the server; this guards against a selector that was not
  // honoured.
  if (!deleted && Str(*pod, "/spec/nodeName") != options_.name) return;
  std::lock_guard lock(mu_);
  auto it = pods_.find(uid);
  if (deleted) {
    if (it == pods_.end()) {
      ReleaseIpsLocked(uid);  // reserved at startup, deleted before it was seen
      return;
    }
    it->second.pod = pod;
    it->second.gone = true;
    EnqueueLocked(uid);
    return;
  }
  if (it == pods_.end()) {
    PodState state;
    state.pod = pod;
    // A pod this node started before the agent restarted keeps its address.
    std::string ip = Str(*pod, "/status/podIP");
    if (!IsTerminalPhase(Str(*pod, "/status/phase")) && !ip.empty() &&
        !JsonGet<bool>(*pod, "/spec/hostNetwork", false)) {
      ReserveIpLocked(ip, uid);
    }
    pods_.emplace(uid, std::move(state));
  } else {
    it->second.pod = pod;
  }
  EnqueueLocked(uid);
}

void SimNode::OnRunnerStatus(const std::string& uid, const PodRunStatus& run) {
  std::lock_guard lock(mu_);
  auto it = pods_.find(uid);
  if (it == pods_.end() || it->second.phase != PodPhase::kRunning) return;
  it->second.run = run;
  EnqueueLocked(uid);
}

void SimNode::EnqueueLocked(const std::string& uid, Duration delay) {
  TimePoint due = clock_->Now() + delay;
  auto [it, inserted] = queue_.emplace(uid, QueueEntry{due, next_seq_});
  if (inserted) {
    ++next_seq_;
  } else {
    it->second.due = std::min(it->second.due, due);
  }
  cv_.notify_all();
}

void SimNode::RetryLocked(const std::string& uid, PodState& state) {
  EnqueueLocked(uid, Backoff(state.failures++));
}

void SimNode::StartStopLocked(const std::string& uid, PodState& state, Duration grace) {
  state.phase = PodPhase::kStopping;
  LogInfo("stopping pod",
          {{"node", options_.name},
           {"pod", PodKey(*state.pod)},
           {"grace_seconds", std::chrono::duration_cast<std::chrono::seconds>(grace).count()}});
  stoppers_[uid] = std::thread([this, uid, grace] {
    runner_->Stop(uid, grace);
    std::lock_guard lock(mu_);
    auto it = pods_.find(uid);
    if (it != pods_.end()) it->second.phase = PodPhase::kStopped;
    ReleaseIpsLocked(uid);
    finished_stoppers_.push_back(uid);
    EnqueueLocked(uid);
  });
}

void SimNode::RecoverPodIps() {
  // Before handing out any address, reserve those that pods already running on this node show
  // in their status (the agent restarted), so a new pod never takes a live pod's IP. The
  // informer's cache is complete once synced; its handlers may still be delivering, which is
  // fine: reservations are by uid.
  while (!informer_->WaitForSync(std::chrono::milliseconds(200), &cancel_)) {
    if (cancel_.cancelled()) return;
  }
  std::lock_guard lock(mu_);
  for (const ObjectPtr& pod : informer_->List()) {
    std::string ip = Str(*pod, "/status/podIP");
    if (ip.empty() || IsTerminalPhase(Str(*pod, "/status/phase")) ||
        JsonGet<bool>(*pod, "/spec/hostNetwork", false)) {
      continue;
    }
    ReserveIpLocked(ip, Str(*pod, "/metadata/uid"));
  }
}

void SimNode::SyncLoop() {
  RecoverPodIps();
  std::unique_lock lock(mu_);
  while (!stopping_) {
    if (!finished_stoppers_.empty()) {
      std::vector<std::thread> done;
      for (const std::string& uid : finished_stoppers_) {
        auto it = stoppers_.find(uid);
        if (it == stoppers_.end()) continue;
        done.push_back(std::move(it->second));
        stoppers_.erase(it);
      }
      finished_stoppers_.clear();
      lock.unlock();
      for (auto& t : done) t.join();
      lock.lock();
      continue;
    }
    if (queue_.empty()) {
      cv_.wait(lock);
      continue;
    }
    TimePoint now = clock_->Now();
    auto next = std::min_element(queue_.begin(), queue_.end(), [now](const auto& a, const auto& b) {
      // Due entries in arrival order, then the earliest future one.
      bool a_due = a.second.due <= now, b_due = b.second.due <= now;
      if (a_due != b_due) return a_due;
      if (a_due) return a.second.seq < b.second.seq;
      return a.second.due < b.second.due;
    });
    if (next->second.due > now) {
      cv_.wait_for(lock, std::min<Duration>(next->second.due - now, options_.clock_poll));
      continue;
    }
    std::string uid = next->first;
    queue_.erase(next);
    sync_busy_ = true;
    lock.unlock();
    SyncPod(uid);
    lock.lock();
    sync_busy_ = false;
  }
}

void SimNode::SyncPod(const std::string& uid) {
  std::unique_lock lock(mu_);
  auto it = pods_.find(uid);
  if (it == pods_.end()) return;
  PodState& st = it->second;
  const ObjectPtr pod = st.pod;
  const std::string key = PodKey(*pod);
  const std::string ns = Str(*pod, "/metadata/namespace");
  const std::string pod_name = Str(*pod, "/metadata/name");

  if (st.gone) {
    // Deleted from the API server (by this node's finalizing delete, or forcibly by someone).
    if (st.phase == PodPhase::kRunning) {
      StartStopLocked(uid, st, std::chrono::seconds(0));
      return;
    }
    if (st.phase == PodPhase::kStopping) return;
    ReleaseIpsLocked(uid);
    pods_.erase(it);
    queue_.erase(uid);
    lock.unlock();
    ForgetFailures(key);
    LogInfo("pod gone", {{"node", options_.name}, {"pod", key}});
    return;
  }

  if (HasDeletionTimestamp(*pod)) {
    if (st.phase == PodPhase::kRunning) {
      StartStopLocked(uid, st, GracePeriod(*pod));
      return;
    }
    if (st.phase == PodPhase::kStopping || st.delete_sent) return;
    // Stopped (or never started): finish the deletion the way a kubelet does, with grace 0
    // and the uid as precondition so a new pod of the same name is never touched.
    ReleaseIpsLocked(uid);
    lock.unlock();
    kube::DeleteOptions opts;
    opts.grace_period_seconds = 0;
    opts.precondition_uid = uid;
    Status s = client_->Delete(kube::kPods, ns, pod_name, opts);
    bool done = s.ok() || s.IsNotFound() || s.IsConflict();
    ReportResult("delete pod", done ? Status::Ok() : s, key);
    lock.lock();
    if (done) {
      st.failures = 0;
      st.delete_sent = true;
      LogInfo("pod deleted", {{"node", options_.name}, {"pod", key}});
    } else {
      RetryLocked(uid, st);
    }
    return;
  }

  if (st.phase == PodPhase::kNew && IsTerminalPhase(Str(*pod, "/status/phase"))) {
    st.phase = PodPhase::kIgnored;  // finished before this agent saw it: nothing to run
    ReleaseIpsLocked(uid);
    return;
  }
  if (st.phase != PodPhase::kNew && st.phase != PodPhase::kRunning) return;

  if (st.phase == PodPhase::kNew) {
    if (JsonGet<bool>(*pod, "/spec/hostNetwork", false)) {
      st.ip = options_.host_ip;
    } else {
      st.ip = IpOwnedByLocked(uid);
      if (st.ip.empty()) st.ip = AllocateIpLocked(uid);
    }
    if (st.ip.empty()) {
      lock.unlock();
      ReportResult("allocate pod ip",
                   Status::Unavailable("no free pod IP in " + options_.pod_ip_prefix + "2-254"),
                   key);
      lock.lock();
      RetryLocked(uid, st);
      return;
    }
    st.start_time = clock_->WallNow();
    std::string existing_start = Str(*pod, "/status/startTime");
    WallTime parsed;
    if (!existing_start.empty() && ParseRfc3339(existing_start, &parsed)) st.start_time = parsed;
    const bool resumed = !Str(*pod, "/status/podIP").empty() && Str(*pod, "/status/podIP") == st.ip;
    PodStartRequest request{*pod, uid, st.ip, options_.host_ip, options_.name};
    st.phase = PodPhase::kRunning;
    lock.unlock();
    PodRunStatus run = runner_->Start(request);
    lock.lock();
    st.given = pod;
    if (!st.run) st.run = std::move(run);  // a listener update that came meanwhile is newer
    // "resumed": it already ran here before this agent (re)started, and keeps its address.
    LogInfo(resumed ? "pod resumed" : "pod started",
            {{"node", options_.name}, {"pod", key}, {"ip", st.ip}});
  }

  // kRunning. A newer object (relabelled, annotated) goes to the runner first, so what the
  // containers see of their pod follows the API server.
  if (st.given != pod) {
    st.given = pod;
    lock.unlock();
    runner_->Update(*pod);
    lock.lock();
  }

  // Make the API server show what the runner reports.
  Json desired =
      BuildPodStatus(*pod, *st.run, st.ip, options_.host_ip, st.start_time, clock_->WallNow());
  bool terminal = IsTerminalPhase(desired.value("phase", ""));
  if (!JsonContains(JsonGet<Json>(*pod, "/status", Json::object()), desired)) {
    // metadata.uid makes the patch conditional on this very pod, as a kubelet's status
    // manager does.
    Json patch = {{"metadata", {{"uid", uid}}}, {"status", desired}};
    kube::PatchOptions po;
    po.subresource = "status";
    lock.unlock();
    auto r = client_->Patch(kube::kPods, ns, pod_name, kube::PatchType::kMerge, patch, po);
    bool vanished = !r.ok() && (r.status().IsNotFound() || r.status().IsConflict());
    ReportResult("update pod status", r.ok() || vanished ? Status::Ok() : r.status(), key);
    lock.lock();
    if (vanished) return;  // its DELETED event follows
    if (!r.ok()) {
      RetryLocked(uid, st);
      return;
    }
    st.failures = 0;
    // Unless the watch brought something newer meanwhile, the response is the latest object.
    if (st.pod == pod) st.pod = std::make_shared<const Json>(std::move(*r));
    bool ready = false;
    for (const Json& c : desired["conditions"]) {
      if (Str(c, "/type") == "Ready") ready = Str(c, "/status") == "True";
    }
    LogInfo("pod status updated", {{"node", options_.name},
                                   {"pod", key},
                                   {"phase", desired.value("phase", "")},
                                   {"ready", ready ? "true" : "false"},
                                   {"ip", st.ip}});
  }
  st.failures = 0;
  if (terminal && st.phase == PodPhase::kRunning) {
    // All containers exited for good: let the runner clean up; the pod stays until deleted.
    StartStopLocked(uid, st, std::chrono::seconds(0));
  }
}

Json SimNode::BuildPodStatus(const Json& pod, const PodRunStatus& run, const std::string& pod_ip,
                             const std::string& host_ip, WallTime start_time, WallTime now) {
  std::string now_s = FormatRfc3339(now);
  bool all_ready = !run.containers.empty();
  std::string unready;
  Json container_statuses = Json::array();
  for (const auto& c : run.containers) {
    if (!c.ready) {
      all_ready = false;
      unready += (unready.empty() ? "" : " ") + c.name;
    }
    container_statuses.push_back(ContainerStatusJson(c));
  }
  Json conditions = JsonGet<Json>(pod, "/status/conditions", Json::array());
  if (!conditions.is_array()) conditions = Json::array();
  std::string not_ready_msg = "containers with unready status: [" + unready + "]";
  SetCondition(conditions, "Initialized", true, "", "", now_s);
  SetCondition(conditions, "Ready", all_ready, all_ready ? "" : "ContainersNotReady",
               all_ready ? "" : not_ready_msg, now_s);
  SetCondition(conditions, "ContainersReady", all_ready, all_ready ? "" : "ContainersNotReady",
               all_ready ? "" : not_ready_msg, now_s);
  SetCondition(conditions, "PodScheduled", true, "", "", now_s);
  Json status = {{"phase", ComputePodPhase(pod, run)},
                 {"conditions", conditions},
                 {"hostIP", host_ip},
                 {"startTime", FormatRfc3339(start_time)},
                 {"containerStatuses", container_statuses}};
  if (!pod_ip.empty()) {
    status["podIP"] = pod_ip;
    status["podIPs"] = Json::array({{{"ip", pod_ip}}});
  }
  return status;
}

}  // namespace pdpool::agent
