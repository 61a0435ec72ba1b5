// ProcessPodRunner: see process_pod_runner.h.
//
// Each pod has a PodWorker with one thread. That thread sets up the pod's volumes, then loops:
// it starts containers that are due, polls their processes for exits, runs probes that are due,
// restarts per restartPolicy after the back-off, rewrites downward-API files when Update brought
// new labels, and reports every change through the runner's listener. Stop asks the thread to
// stop the containers and joins it. Only the pod's thread forks its containers and reaps them,
// so PR_SET_PDEATHSIG (tied to the forking thread) fires only if the agent itself dies.
#include "agent/node/process_pod_runner.h"

#include <signal.h>

#include <algorithm>
#include <condition_variable>
#include <filesystem>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "agent/node/container_env.h"
#include "agent/node/container_image.h"
#include "agent/node/container_probe.h"
#include "agent/node/container_process.h"
#include "agent/node/pod_volumes.h"
#include "common/log.h"

namespace pdpool::agent {
namespace {

using Phase = ContainerRunState::Phase;

constexpr char kContainerCreating[] = "ContainerCreating";
constexpr char kConfigError[] = "CreateContainerConfigError";
constexpr char kCrashLoopBackOff[] = "CrashLoopBackOff";
constexpr char kStartError[] = "StartError";
constexpr int kStartErrorExitCode = 128;  // what container runtimes report for a failed start

std::string Str(const Json& doc, const char* pointer) {
  return JsonGet<std::string>(doc, pointer, "");
}

std::string PodKey(const Json& pod) {
  return Str(pod, "/metadata/namespace") + "/" + Str(pod, "/metadata/name");
}

Duration PodGracePeriod(const Json& pod) {
  int64_t secs = JsonGet<int64_t>(pod, "/spec/terminationGracePeriodSeconds", 30);
  return std::chrono::seconds(std::max<int64_t>(0, secs));
}

int64_t Seconds(Duration d) { return std::chrono::duration_cast<std::chrono::seconds>(d).count(); }

bool SameTermination(const std::optional<ContainerTermination>& a,
                     const std::optional<ContainerTermination>& b) {
  if (a.has_value() != b.has_value()) return false;
  if (!a) return true;
  return a->exit_code == b->exit_code && a->reason == b->reason && a->message == b->message &&
         a->started_at == b->started_at && a->finished_at == b->finished_at;
}

bool SameState(const ContainerRunState& a, const ContainerRunState& b) {
  return a.name == b.name && a.image == b.image && a.container_id == b.container_id &&
         a.phase == b.phase && a.ready == b.ready && a.started == b.started &&
         a.restart_count == b.restart_count && a.started_at == b.started_at &&
         a.finished_at == b.finished_at && a.exit_code == b.exit_code && a.reason == b.reason &&
         a.message == b.message && SameTermination(a.last_termination, b.last_termination);
}

bool SameStatus(const PodRunStatus& a, const PodRunStatus& b) {
  if (a.containers.size() != b.containers.size()) return false;
  for (size_t i = 0; i < a.containers.size(); ++i) {
    if (!SameState(a.containers[i], b.containers[i])) return false;
  }
  return true;
}

// What this runner (or a previous agent's) reported for `container` of a pod it ran before the
// agent restarted: its restartCount, and whether it had started at all.
void PreviousRun(const Json& pod, const std::string& uid, const std::string& container,
                 int* restart_count, bool* ran) {
  const Json* statuses = JsonPath(pod, {"status", "containerStatuses"});
  if (statuses == nullptr || !statuses->is_array()) return;
  for (const Json& cs : *statuses) {
    if (Str(cs, "/name") != container) continue;
    if (!Str(cs, "/containerID").starts_with("pdpool://" + uid + "/")) return;
    *restart_count = std::max(0, JsonGet<int>(cs, "/restartCount", 0));
    *ran = JsonChild(JsonGet<Json>(cs, "/state", Json::object()), "waiting") == nullptr ||
           *restart_count > 0;
    return;
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// PodWorker: one pod.

class ProcessPodRunner::PodWorker {
 public:
  PodWorker(ProcessPodRunner* runner, const PodStartRequest& request)
      : runner_(runner),
        options_(runner->options_),
        clock_(runner->clock_),
        uid_(request.uid),
        pod_(request.pod),
        key_(PodKey(request.pod)),
        runtime_{request.pod_ip, request.host_ip, request.node_name},
        pod_dir_(runner->PodDir(request.pod)),
        volumes_(pod_dir_ + "/volumes", runner->data_) {
    const Json* containers = JsonPath(pod_, {"spec", "containers"});
    if (containers != nullptr && containers->is_array()) {
      for (const Json& c : *containers) {
        Slot slot;
        slot.spec = c;
        slot.state.name = Str(c, "/name");
        slot.state.image = Str(c, "/image");
        slot.state.image_id = slot.state.image;
        slot.state.phase = Phase::kWaiting;
        slot.state.reason = kContainerCreating;
        PreviousRun(pod_, uid_, slot.state.name, &slot.state.restart_count, &slot.ran_before);
        slots_.push_back(std::move(slot));
      }
    }
    reported_ = Snapshot();
    initial_ = reported_;
    grace_ = PodGracePeriod(pod_);
  }

  ~PodWorker() {
    if (thread_.joinable()) {
      RequestStop(Duration::zero());
      thread_.join();
    }
  }

  const PodRunStatus& initial_status() const { return initial_; }

  void Begin() {
    thread_ = std::thread([this] { Run(); });
  }

  void SetPod(const Json& pod) {
    std::lock_guard lock(mu_);
    pending_pod_ = pod;
    grace_ = PodGracePeriod(pod);
    cv_.notify_all();
  }

  void RequestStop(Duration grace) {
    std::lock_guard lock(mu_);
    if (!stop_) {
      stop_ = true;
      stop_grace_ = grace;
    }
    cv_.notify_all();
  }

  void Join() {
    if (thread_.joinable()) thread_.join();
  }

  // spec.terminationGracePeriodSeconds of the latest pod object.
  Duration grace_period() {
    std::lock_guard lock(mu_);
    return grace_;
  }

 private:
  struct Slot {
    Json spec;
    ContainerRunState state;
    std::unique_ptr<ContainerProcess> process;
    std::optional<ProbeTracker> startup, readiness, liveness;
    TimePoint run_started{};
    TimePoint next_start{};   // a (re)start is not due before this
    bool want_start = true;   // false once terminated for good (restartPolicy)
    bool ran_before = false;  // a previous agent ran it: the first start is a restart
    int starts = 0;           // by this runner
    int crashes = 0;          // exits in a row, for the back-off
    std::optional<TimePoint> kill_deadline;  // stopping it (failed probe): SIGKILL then
    std::string kill_message;
    std::string last_problem;  // logged once until it changes
    Duration config_retry{0};  // next wait after a config error (doubles; 0: none yet)
  };

  // The pod thread's loop.
  void Run() {
    Duration retry = options_.setup_retry;
    while (true) {
      TakePendingPod();
      Status s = volumes_.SetUp(pod_, runtime_);
      if (s.ok()) break;
      const std::string message = "MountVolume.SetUp failed for " + s.message();
      if (message != volume_problem_) {
        volume_problem_ = message;
        LogWarn("pod volumes not ready, retrying",
                {{"node", options_.node_name}, {"pod", key_}, {"error", s.message()}});
      }
      for (Slot& slot : slots_) SetWaiting(slot, kContainerCreating, message);
      Report();
      if (!WaitFor(clock_->Now() + retry)) {
        Finish();
        return;
      }
      retry = std::min(retry * 2, options_.setup_retry_max);
    }
    if (!volume_problem_.empty()) {
      LogInfo("pod volumes ready", {{"node", options_.node_name}, {"pod", key_}});
    }
    for (Slot& slot : slots_) SetWaiting(slot, kContainerCreating, "");
    while (true) {
      if (TakePendingPod()) RefreshDownwardApi();
      const TimePoint now = clock_->Now();
      for (Slot& slot : slots_) Step(slot, now);
      Report();
      if (!WaitFor(NextWake(clock_->Now()))) break;
    }
    Finish();
  }

  // Waits until `deadline`, a stop request or a pod update. False when stopping.
  bool WaitFor(TimePoint deadline) {
    std::unique_lock lock(mu_);
    while (!stop_ && !pending_pod_) {
      TimePoint now = clock_->Now();
      if (now >= deadline) return true;
      cv_.wait_for(lock, std::min<Duration>(deadline - now, options_.poll_interval));
    }
    return !stop_;
  }

  bool TakePendingPod() {
    std::optional<Json> pod;
    {
      std::lock_guard lock(mu_);
      pod.swap(pending_pod_);
    }
    if (!pod) return false;
    pod_ = std::move(*pod);
    return true;
  }

  TimePoint NextWake(TimePoint now) const {
    TimePoint wake = TimePoint::max();
    for (const Slot& slot : slots_) {
      if (slot.process) {
        wake = std::min(wake, now + options_.poll_interval);
        wake = std::min(wake, NextProbeDue(slot.startup, slot.state.started, slot.readiness,
                                           slot.liveness));
        if (slot.kill_deadline) wake = std::min(wake, *slot.kill_deadline);
      } else if (slot.want_start) {
        wake = std::min(wake, slot.next_start);
      }
    }
    return wake;
  }

  void RefreshDownwardApi() {
    StatusOr<bool> changed = volumes_.RefreshDownwardApi(pod_, runtime_);
    if (!changed.ok()) {
      LogWarn("cannot update downward-API volume",
              {{"node", options_.node_name}, {"pod", key_}, {"error", changed.status().message()}});
    } else if (*changed) {
      LogInfo("downward-API volume updated", {{"node", options_.node_name}, {"pod", key_}});
    }
  }

  void Step(Slot& slot, TimePoint now) {
    if (slot.process) {
      if (std::optional<ContainerExit> exit = slot.process->Poll()) {
        OnExit(slot, *exit, now);
      } else if (slot.kill_deadline) {
        if (now >= *slot.kill_deadline) {
          slot.process->Signal(SIGKILL);
          slot.kill_deadline = TimePoint::max();
        }
        return;
      } else {
        RunProbes(slot, now);
        return;
      }
    }
    if (slot.want_start && now >= slot.next_start) StartContainer(slot, now);
  }

  void SetWaiting(Slot& slot, const std::string& reason, const std::string& message) {
    slot.state.phase = Phase::kWaiting;
    slot.state.reason = reason;
    slot.state.message = message;
    slot.state.ready = false;
    slot.state.started = false;
  }

  // A container that cannot be created yet (config error, image missing): waits and retries.
  void NotCreated(Slot& slot, const std::string& reason, const std::string& message,
                  TimePoint now) {
    SetWaiting(slot, reason, message);
    if (message != slot.last_problem) {
      slot.last_problem = message;
      LogWarn("cannot create container", {{"node", options_.node_name},
                                          {"pod", key_},
                                          {"container", slot.state.name},
                                          {"reason", reason},
                                          {"error", message}});
    }
    slot.config_retry = slot.config_retry == Duration::zero()
                            ? options_.setup_retry
                            : std::min(slot.config_retry * 2, options_.setup_retry_max);
    slot.next_start = now + slot.config_retry;
  }

  void StartContainer(Slot& slot, TimePoint now) {
    ContainerEnvContext context{runtime_, options_.api_server_host, options_.api_server_port};
    StatusOr<std::vector<EnvVar>> env = BuildContainerEnv(pod_, slot.spec, context, runner_->data_);
    if (!env.ok()) return NotCreated(slot, kConfigError, env.status().message(), now);
    ContainerCommand command = ExpandContainerCommand(slot.spec, *env);
    StatusOr<ResolvedCommand> resolved = ResolveContainerCommand(slot.state.image, command.command,
                                                                 command.args, options_.binary_dir);
    if (!resolved.ok() && resolved.status().IsNotFound()) {
      return NotCreated(slot, kImageNeverPullReason, resolved.status().message(), now);
    }
    StatusOr<std::vector<BindMount>> mounts = volumes_.MountsFor(slot.spec);
    if (!mounts.ok()) return NotCreated(slot, kConfigError, mounts.status().message(), now);
    if (!resolved.ok()) return StartFailed(slot, resolved.status().message(), now);

    const int restart = slot.state.restart_count + ((slot.starts > 0 || slot.ran_before) ? 1 : 0);
    const std::string log_dir = pod_dir_ + "/logs/" + slot.state.name;
    std::error_code ec;
    std::filesystem::create_directories(log_dir, ec);
    ContainerLaunch launch;
    launch.path = resolved->path;
    launch.argv = resolved->argv;
    for (const EnvVar& v : *env) launch.env.push_back(v.name + "=" + v.value);
    launch.working_dir = Str(slot.spec, "/workingDir");
    launch.mounts = std::move(*mounts);
    launch.log_path = log_dir + "/" + std::to_string(restart) + ".log";
    StatusOr<std::unique_ptr<ContainerProcess>> process = ContainerProcess::Spawn(launch);
    slot.last_problem.clear();
    slot.config_retry = Duration::zero();
    slot.state.restart_count = restart;
    slot.starts++;
    if (!process.ok()) return StartFailed(slot, process.status().message(), now);

    slot.process = std::move(*process);
    slot.run_started = now;
    slot.kill_deadline.reset();
    slot.kill_message.clear();
    ContainerRunState& st = slot.state;
    st.phase = Phase::kRunning;
    st.reason.clear();
    st.message.clear();
    st.container_id = "pdpool://" + uid_ + "/" + st.name;
    st.started_at = clock_->WallNow();
    st.exit_code = 0;
    slot.startup = MakeProbe(slot, "startupProbe", now, false);
    slot.readiness.reset();
    slot.liveness.reset();
    if (!slot.startup) StartupDone(slot, now);
    LogInfo("container started", {{"node", options_.node_name},
                                  {"pod", key_},
                                  {"container", st.name},
                                  {"pid", static_cast<int64_t>(slot.process->pid())},
                                  {"restart_count", st.restart_count},
                                  {"log", launch.log_path}});
  }

  std::optional<ProbeTracker> MakeProbe(const Slot& slot, const char* field, TimePoint now,
                                        bool initial) {
    const Json* probe = JsonChild(slot.spec, field);
    if (probe == nullptr) return std::nullopt;
    StatusOr<ProbeSpec> spec = ParseProbe(*probe, slot.spec, runtime_.pod_ip);
    if (!spec.ok()) {
      // A probe that cannot work fails every time, saying why (as the kubelet's does for a
      // port name the container lacks).
      ProbeSpec broken;
      broken.unsupported = std::string(field) + ": " + spec.status().message();
      spec = broken;
    }
    return ProbeTracker(std::move(*spec), now, initial);
  }

  void StartupDone(Slot& slot, TimePoint now) {
    slot.state.started = true;
    slot.readiness = MakeProbe(slot, "readinessProbe", now, false);
    slot.liveness = MakeProbe(slot, "livenessProbe", now, true);
    slot.state.ready = !slot.readiness.has_value();
  }

  ProbeOutcome Probe(Slot& slot, ProbeTracker& tracker, const char* kind, TimePoint now,
                     bool* changed) {
    ProbeOutcome outcome = RunProbe(tracker.spec());
    *changed = tracker.Record(outcome.success, now);
    if (!outcome.success) {
      LogDebug("probe failed", {{"node", options_.node_name},
                                {"pod", key_},
                                {"container", slot.state.name},
                                {"probe", kind},
                                {"detail", outcome.detail}});
    }
    return outcome;
  }

  void RunProbes(Slot& slot, TimePoint now) {
    bool changed = false;
    if (slot.startup && !slot.state.started) {
      if (!slot.startup->Due(now)) return;
      ProbeOutcome outcome = Probe(slot, *slot.startup, "startup", now, &changed);
      if (slot.startup->result()) {
        StartupDone(slot, now);
      } else if (slot.startup->failing()) {
        Kill(slot, "Startup probe failed: " + outcome.detail, now);
      }
      return;
    }
    if (slot.readiness && slot.readiness->Due(now)) {
      ProbeOutcome outcome = Probe(slot, *slot.readiness, "readiness", now, &changed);
      if (changed) {
        slot.state.ready = slot.readiness->result();
        LogInfo("container readiness changed", {{"node", options_.node_name},
                                                {"pod", key_},
                                                {"container", slot.state.name},
                                                {"ready", slot.state.ready ? "true" : "false"},
                                                {"detail", outcome.detail}});
      }
    }
    if (slot.liveness && slot.liveness->Due(now)) {
      ProbeOutcome outcome = Probe(slot, *slot.liveness, "liveness", now, &changed);
      if (changed && !slot.liveness->result()) {
        Kill(slot, "Liveness probe failed: " + outcome.detail, now);
      }
    }
  }

  // Stops a running container that failed a probe; OnExit restarts it per restartPolicy.
  void Kill(Slot& slot, const std::string& message, TimePoint now) {
    const Duration grace = std::max(grace_period(), options_.min_kill_grace);
    LogWarn("container failed a probe, killing it", {{"node", options_.node_name},
                                                     {"pod", key_},
                                                     {"container", slot.state.name},
                                                     {"reason", message},
                                                     {"grace_seconds", Seconds(grace)}});
    slot.kill_message = message;
    slot.kill_deadline = now + grace;
    slot.state.ready = false;
    slot.process->Signal(SIGTERM);
  }

  void StartFailed(Slot& slot, const std::string& message, TimePoint now) {
    LogWarn("container start failed", {{"node", options_.node_name},
                                       {"pod", key_},
                                       {"container", slot.state.name},
                                       {"error", message}});
    slot.run_started = now;
    const WallTime wall = clock_->WallNow();
    ContainerTermination term{kStartErrorExitCode, kStartError, message, wall, wall};
    Terminated(slot, term, now);
  }

  void OnExit(Slot& slot, const ContainerExit& exit, TimePoint now) {
    ContainerTermination term;
    term.exit_code = exit.exit_code;
    term.reason = exit.exit_code == 0 ? "Completed" : "Error";
    term.message = slot.kill_message;
    term.started_at = slot.state.started_at;
    term.finished_at = clock_->WallNow();
    LogInfo("container exited", {{"node", options_.node_name},
                                 {"pod", key_},
                                 {"container", slot.state.name},
                                 {"exit_code", exit.exit_code},
                                 {"signal", exit.signal}});
    slot.process.reset();
    slot.kill_deadline.reset();
    slot.kill_message.clear();
    Terminated(slot, term, now);
  }

  // After a run ended (or failed to start): restart per restartPolicy, or stay terminated.
  void Terminated(Slot& slot, const ContainerTermination& term, TimePoint now) {
    slot.startup.reset();
    slot.readiness.reset();
    slot.liveness.reset();
    ContainerRunState& st = slot.state;
    st.ready = false;
    st.started = false;
    slot.crashes = CountCrash(options_.restart_backoff, slot.crashes, now - slot.run_started);
    const std::string policy = JsonGet<std::string>(pod_, "/spec/restartPolicy", "Always");
    if (!ShouldRestart(policy, term.exit_code)) {
      slot.want_start = false;
      st.phase = Phase::kTerminated;
      st.exit_code = term.exit_code;
      st.reason = term.reason;
      st.message = term.message;
      st.started_at = term.started_at;
      st.finished_at = term.finished_at;
      return;
    }
    st.last_termination = term;
    const Duration delay = RestartDelay(options_.restart_backoff, slot.crashes);
    slot.next_start = now + delay;
    if (delay > Duration::zero()) {
      SetWaiting(slot, kCrashLoopBackOff,
                 "back-off " + std::to_string(Seconds(delay)) + "s restarting failed container=" +
                     st.name + " pod=" + Str(pod_, "/metadata/name") + "_" +
                     Str(pod_, "/metadata/namespace") + "(" + uid_ + ")");
    }
  }

  void Report() {
    PodRunStatus now = Snapshot();
    if (SameStatus(now, reported_)) return;
    reported_ = now;
    {
      std::lock_guard lock(mu_);
      if (stop_) return;  // the node no longer wants to hear about this pod
    }
    runner_->Notify(uid_, now);
  }

  PodRunStatus Snapshot() const {
    PodRunStatus status;
    for (const Slot& slot : slots_) status.containers.push_back(slot.state);
    return status;
  }

  // Stops every container (SIGTERM to its process group, SIGKILL after the grace period) and
  // removes the pod's volumes.
  void Finish() {
    Duration grace;
    {
      std::lock_guard lock(mu_);
      grace = stop_grace_;
    }
    grace = std::max(grace, options_.min_kill_grace);
    const TimePoint deadline = clock_->Now() + grace;
    bool any = false;
    for (Slot& slot : slots_) {
      if (!slot.process || slot.process->Poll()) continue;
      any = true;
      slot.process->Signal(SIGTERM);
    }
    if (any) {
      LogInfo("stopping containers",
              {{"node", options_.node_name}, {"pod", key_}, {"grace_seconds", Seconds(grace)}});
    }
    bool killed = false;
    while (true) {
      bool running = false;
      for (Slot& slot : slots_) {
        if (slot.process && !slot.process->Poll()) running = true;
      }
      if (!running) break;
      if (!killed && clock_->Now() >= deadline) {
        killed = true;
        LogWarn("containers outlived their grace period, killing them",
                {{"node", options_.node_name}, {"pod", key_}, {"grace_seconds", Seconds(grace)}});
        for (Slot& slot : slots_) {
          if (slot.process) slot.process->Signal(SIGKILL);
        }
      }
      std::this_thread::sleep_for(
          std::min<Duration>(options_.poll_interval, std::chrono::milliseconds(50)));
    }
    for (Slot& slot : slots_) {
      if (!slot.process) continue;
      std::optional<ContainerExit> exit = slot.process->Poll();
      LogInfo("container stopped", {{"node", options_.node_name},
                                    {"pod", key_},
                                    {"container", slot.state.name},
                                    {"exit_code", exit ? exit->exit_code : -1},
                                    {"signal", exit ? exit->signal : 0}});
      slot.process.reset();
    }
    volumes_.TearDown();
  }

  ProcessPodRunner* const runner_;
  const ProcessPodRunnerOptions& options_;
  const Clock* const clock_;
  const std::string uid_;

  // Pod thread only (after construction).
  Json pod_;
  const std::string key_;
  const PodRuntimeFields runtime_;
  const std::string pod_dir_;
  PodVolumes volumes_;
  std::vector<Slot> slots_;
  PodRunStatus reported_;
  PodRunStatus initial_;  // what Start returned (immutable)
  std::string volume_problem_;

  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  Duration stop_grace_{0};
  Duration grace_{0};
  std::optional<Json> pending_pod_;
  std::thread thread_;
};

// ---------------------------------------------------------------------------------------------
// ProcessPodRunner.

ProcessPodRunner::ProcessPodRunner(const Clock* clock, PodDataSource data,
                                   ProcessPodRunnerOptions options)
    : clock_(clock), data_(std::move(data)), options_(std::move(options)) {}

ProcessPodRunner::~ProcessPodRunner() { Shutdown(); }

void ProcessPodRunner::SetStatusListener(StatusListener listener) {
  std::lock_guard lock(mu_);
  listener_ = std::move(listener);
}

std::string ProcessPodRunner::PodDir(const Json& pod) const {
  return options_.node_dir + "/pods/" + Str(pod, "/metadata/namespace") + "_" +
         Str(pod, "/metadata/name") + "_" + Str(pod, "/metadata/uid");
}

PodRunStatus ProcessPodRunner::Start(const PodStartRequest& request) {
  std::lock_guard lock(mu_);
  auto it = pods_.find(request.uid);
  if (it != pods_.end()) return it->second->initial_status();
  auto worker = std::make_shared<PodWorker>(this, request);
  PodRunStatus initial = worker->initial_status();
  worker->Begin();
  pods_.emplace(request.uid, std::move(worker));
  return initial;
}

void ProcessPodRunner::Update(const Json& pod) {
  std::shared_ptr<PodWorker> worker;
  {
    std::lock_guard lock(mu_);
    auto it = pods_.find(Str(pod, "/metadata/uid"));
    if (it == pods_.end()) return;
    worker = it->second;
  }
  worker->SetPod(pod);
}

void ProcessPodRunner::Stop(const std::string& uid, Duration grace_period) {
  std::shared_ptr<PodWorker> worker;
  {
    std::lock_guard lock(mu_);
    auto it = pods_.find(uid);
    if (it == pods_.end()) return;
    worker = std::move(it->second);
    pods_.erase(it);
  }
  worker->RequestStop(grace_period);
  worker->Join();
}

void ProcessPodRunner::Shutdown() {
  std::map<std::string, std::shared_ptr<PodWorker>> pods;
  {
    std::lock_guard lock(mu_);
    pods.swap(pods_);
  }
  if (pods.empty()) return;
  LogInfo("stopping all pods of the node",
          {{"node", options_.node_name}, {"pods", static_cast<int64_t>(pods.size())}});
  // All at once: each pod's thread runs its own SIGTERM → grace → SIGKILL.
  for (auto& [uid, worker] : pods) {
    worker->RequestStop(std::min(worker->grace_period(), options_.shutdown_grace));
  }
  for (auto& [uid, worker] : pods) worker->Join();
}

size_t ProcessPodRunner::running_pods() const {
  std::lock_guard lock(mu_);
  return pods_.size();
}

void ProcessPodRunner::Notify(const std::string& uid, const PodRunStatus& status) {
  StatusListener listener;
  {
    std::lock_guard lock(mu_);
    listener = listener_;
  }
  if (listener) listener(uid, status);
}

}  // namespace pdpool::agent
