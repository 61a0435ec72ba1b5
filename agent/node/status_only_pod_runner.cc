// StatusOnlyPodRunner: reports every container running and ready; nothing is executed.
#include "agent/node/status_only_pod_runner.h"

namespace pdpool::agent {
namespace {

// The startedAt this runner reported for `container` before the agent restarted, so a restart
// does not make a long-running pod look freshly started. Only trusted when the containerID is
// the one this runner writes.
bool PreviousStartedAt(const Json& pod, const std::string& container,
                       const std::string& container_id, WallTime* out) {
  const Json* statuses = nullptr;
  try {
    statuses = &pod.at("status").at("containerStatuses");
  } catch (...) {
    return false;
  }
  if (!statuses->is_array()) return false;
  for (const Json& cs : *statuses) {
    if (JsonGet<std::string>(cs, "/name", "") != container) continue;
    if (JsonGet<std::string>(cs, "/containerID", "") != container_id) return false;
    std::string started = JsonGet<std::string>(cs, "/state/running/startedAt", "");
    WallTime t;
    if (started.empty() || !ParseRfc3339(started, &t)) return false;
    *out = t;
    return true;
  }
  return false;
}

}  // namespace

void StatusOnlyPodRunner::SetStatusListener(StatusListener /*listener*/) {
  // Nothing ever changes after Start, so there is nothing to report.
}

PodRunStatus StatusOnlyPodRunner::Start(const PodStartRequest& request) {
  PodRunStatus status;
  WallTime now = clock_->WallNow();
  const Json& pod = request.pod;
  const Json* containers = nullptr;
  try {
    containers = &pod.at("spec").at("containers");
  } catch (...) {
  }
  if (containers != nullptr && containers->is_array()) {
    for (const Json& c : *containers) {
      ContainerRunState cs;
      cs.name = JsonGet<std::string>(c, "/name", "");
      cs.image = JsonGet<std::string>(c, "/image", "");
      cs.image_id = cs.image;
      cs.container_id = "pdpool://" + request.uid + "/" + cs.name;
      cs.phase = ContainerRunState::Phase::kRunning;
      cs.ready = true;
      cs.started = true;
      cs.started_at = now;
      PreviousStartedAt(pod, cs.name, cs.container_id, &cs.started_at);
      status.containers.push_back(std::move(cs));
    }
  }
  std::lock_guard lock(mu_);
  running_.insert(request.uid);
  return status;
}

void StatusOnlyPodRunner::Stop(const std::string& uid, Duration /*grace_period*/) {
  std::lock_guard lock(mu_);
  running_.erase(uid);
}

size_t StatusOnlyPodRunner::running_pods() const {
  std::lock_guard lock(mu_);
  return running_.size();
}

}  // namespace pdpool::agent
