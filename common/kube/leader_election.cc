// LeaderElector implementation: client-go's tryAcquireOrRenew / renew loop / release on a
// coordination.k8s.io/v1 Lease.
#include "common/kube/leader_election.h"

#include <algorithm>
#include <cmath>
#include <functional>

#include "common/kube/resource.h"
#include "common/log.h"

namespace pdpool::kube {
namespace {

int64_t CeilSeconds(Duration d) {
  auto s = std::chrono::ceil<std::chrono::seconds>(d).count();
  return std::max<int64_t>(1, s);
}

}  // namespace

StatusOr<std::unique_ptr<LeaderElector>> LeaderElector::Create(LeaderElectionConfig config,
                                                               KubeClient* client, Clock* clock) {
  if (client == nullptr || clock == nullptr) {
    return Status::InvalidArgument("leader election: client and clock are required");
  }
  if (config.identity.empty()) {
    return Status::InvalidArgument("leader election: identity must not be empty");
  }
  if (config.lease_namespace.empty() || config.lease_name.empty()) {
    return Status::InvalidArgument("leader election: lease namespace and name must not be empty");
  }
  if (config.lease_duration <= Duration::zero() || config.renew_deadline <= Duration::zero() ||
      config.retry_period <= Duration::zero() || config.retry_jitter < 0) {
    return Status::InvalidArgument(
        "leader election: lease_duration, renew_deadline and retry_period must be positive, "
        "retry_jitter non-negative");
  }
  if (config.lease_duration <= config.renew_deadline) {
    return Status::InvalidArgument(
        "leader election: lease_duration must be greater than renew_deadline");
  }
  auto max_retry =
      std::chrono::duration_cast<Duration>(config.retry_period * (1.0 + config.retry_jitter));
  if (config.renew_deadline <= max_retry) {
    return Status::InvalidArgument(
        "leader election: renew_deadline must be greater than retry_period * (1 + retry_jitter)");
  }
  return std::unique_ptr<LeaderElector>(new LeaderElector(std::move(config), client, clock));
}

LeaderElector::LeaderElector(LeaderElectionConfig config, KubeClient* client, Clock* clock)
    : config_(std::move(config)),
      client_(client),
      clock_(clock),
      lease_ref_(config_.lease_namespace + "/" + config_.lease_name),
      jitter_state_(std::hash<std::string>{}(config_.identity) | 1) {}

Json LeaderElector::MakeSpec(const std::string& holder, int64_t duration_seconds,
                             const std::string& acquire, const std::string& renew,
                             int64_t transitions) const {
  return Json{{"holderIdentity", holder},
              {"leaseDurationSeconds", duration_seconds},
              {"acquireTime", acquire},
              {"renewTime", renew},
              {"leaseTransitions", transitions}};
}

std::string LeaderElector::ObserveLocked(const Json& lease, bool wrote) {
  Json spec = lease.contains("spec") && lease["spec"].is_object() ? lease["spec"] : Json::object();
  // Expiry is judged by *our* clock from the moment we saw the record change, as client-go
  // does, never by comparing the holder's renewTime with our wall clock: the two machines'
  // wall clocks may disagree by more than the lease duration, and a skewed candidate would
  // then steal a live lease (or never take over a dead one). Our monotonic clock only needs to
  // run at roughly the holder's rate.
  if (wrote || spec != observed_spec_) {
    observed_spec_ = spec;
    observed_time_ = clock_->Now();
  }
  observed_lease_ = lease;
  observed_holder_ = JsonGet<std::string>(spec, "/holderIdentity", "");
  if (!observed_holder_.empty() && observed_holder_ != reported_leader_) {
    reported_leader_ = observed_holder_;
    return observed_holder_;
  }
  return "";
}

void LeaderElector::ReportNewLeader(const std::string& holder) {
  if (holder.empty()) return;
  LogInfo("leader election: new leader observed",
          {{"lease", lease_ref_}, {"identity", config_.identity}, {"leader", holder}});
  if (config_.on_new_leader) config_.on_new_leader(holder);
}

bool LeaderElector::TryAcquireOrRenew() {
  std::lock_guard step(step_mu_);
  const std::string now = FormatRfc3339Micro(clock_->WallNow());
  const TimePoint attempt_start = clock_->Now();
  const int64_t duration_s = CeilSeconds(config_.lease_duration);
  const std::string& id = config_.identity;

  auto got = client_->Get(kLeases, config_.lease_namespace, config_.lease_name);
  if (!got.ok()) {
    if (!got.status().IsNotFound()) {
      LogWarn("leader election: cannot read lease",
              {{"lease", lease_ref_}, {"identity", id}, {"error", got.status().ToString()}});
      return false;
    }
    Json lease = {
        {"apiVersion", kLeases.ApiVersion()},
        {"kind", kLeases.kind},
        {"metadata", {{"name", config_.lease_name}, {"namespace", config_.lease_namespace}}},
        {"spec", MakeSpec(id, duration_s, now, now, 0)}};
    auto created = client_->Create(kLeases, config_.lease_namespace, lease);
    if (!created.ok()) {
      // AlreadyExists: another candidate created it first; we will see it next period.
      LogInfo("leader election: cannot create lease",
              {{"lease", lease_ref_}, {"identity", id}, {"error", created.status().ToString()}});
      return false;
    }
    std::string report;
    {
      std::lock_guard lock(mu_);
      report = ObserveLocked(*created, /*wrote=*/true);
      last_renew_ = attempt_start;
    }
    LogInfo("leader election: acquired lease", {{"lease", lease_ref_}, {"identity", id}});
    ReportNewLeader(report);
    return true;
  }

  const Json& lease = *got;
  std::string holder;
  std::string report;
  bool held_by_other = false;
  {
    std::lock_guard lock(mu_);
    report = ObserveLocked(lease, /*wrote=*/false);
    holder = observed_holder_;
    if (!holder.empty() && holder != id) {
      // The holder's own duration decides, as in client-go.
      int64_t held_s = JsonGet<int64_t>(observed_spec_, "/leaseDurationSeconds", 0);
      Duration held = held_s > 0 ? Duration(std::chrono::seconds(held_s)) : config_.lease_duration;
      held_by_other = observed_time_ + held > clock_->Now();
    }
  }
  ReportNewLeader(report);
  if (held_by_other) return false;

  std::string acquire_time = now;
  int64_t transitions = JsonGet<int64_t>(lease, "/spec/leaseTransitions", 0);
  if (holder == id) {
    acquire_time = JsonGet<std::string>(lease, "/spec/acquireTime", now);
  } else {
    ++transitions;
  }
  Json updated = lease;  // keeps metadata.resourceVersion: the write is conditional on it
  updated["spec"] = MakeSpec(id, duration_s, acquire_time, now, transitions);
  auto written = client_->Update(kLeases, updated);
  if (!written.ok()) {
    if (written.status().IsConflict()) {
      LogDebug("leader election: lease changed under us, retrying next period",
               {{"lease", lease_ref_}, {"identity", id}});
    } else {
      LogWarn("leader election: cannot write lease",
              {{"lease", lease_ref_}, {"identity", id}, {"error", written.status().ToString()}});
    }
    return false;
  }
  {
    std::lock_guard lock(mu_);
    report = ObserveLocked(*written, /*wrote=*/true);
    last_renew_ = attempt_start;
  }
  if (holder != id) {
    LogInfo("leader election: acquired lease",
            {{"lease", lease_ref_}, {"identity", id}, {"previous", holder}});
  }
  ReportNewLeader(report);
  return true;
}

bool LeaderElector::Release() {
  std::lock_guard step(step_mu_);
  Json lease;
  {
    std::lock_guard lock(mu_);
    if (observed_holder_ != config_.identity) return false;
    lease = observed_lease_;
  }
  const std::string now = FormatRfc3339Micro(clock_->WallNow());
  // Holder empty and a 1 s duration: any candidate may take the lease at its next attempt.
  lease["spec"] = MakeSpec("", 1, now, now, JsonGet<int64_t>(lease, "/spec/leaseTransitions", 0));
  auto written = client_->Update(kLeases, lease);
  if (!written.ok()) {
    LogWarn("leader election: cannot release lease", {{"lease", lease_ref_},
                                                      {"identity", config_.identity},
                                                      {"error", written.status().ToString()}});
    return false;
  }
  {
    std::lock_guard lock(mu_);
    ObserveLocked(*written, /*wrote=*/true);
    last_renew_.reset();
  }
  LogInfo("leader election: released lease",
          {{"lease", lease_ref_}, {"identity", config_.identity}});
  return true;
}

bool LeaderElector::IsLeader() const {
  std::lock_guard lock(mu_);
  return observed_holder_ == config_.identity && last_renew_.has_value() &&
         clock_->Now() - *last_renew_ < config_.renew_deadline;
}

std::string LeaderElector::GetLeader() const {
  std::lock_guard lock(mu_);
  return observed_holder_;
}

void LeaderElector::Kick() {
  std::lock_guard lock(mu_);
  cv_.notify_all();
}

bool LeaderElector::WaitUntil(TimePoint deadline, CancelToken* cancel) {
  std::unique_lock lock(mu_);
  while (true) {
    if (cancel != nullptr && cancel->cancelled()) return false;
    const TimePoint now = clock_->Now();
    if (now >= deadline) return true;
    // The deadline is on clock_, the wait on real time: equal for RealClock; for a FakeClock
    // Kick() or the poll interval makes us re-read the clock.
    Duration wait = deadline - now;
    if (config_.clock_poll_interval > Duration::zero()) {
      wait = std::min(wait, config_.clock_poll_interval);
    }
    cv_.wait_for(lock, wait);
  }
}

Duration LeaderElector::JitteredRetry() {
  if (config_.retry_jitter <= 0) return config_.retry_period;
  // xorshift64: only Run's thread calls this.
  jitter_state_ ^= jitter_state_ << 13;
  jitter_state_ ^= jitter_state_ >> 7;
  jitter_state_ ^= jitter_state_ << 17;
  double u = static_cast<double>(jitter_state_ >> 11) / static_cast<double>(1ull << 53);
  return std::chrono::duration_cast<Duration>(config_.retry_period *
                                              (1.0 + config_.retry_jitter * u));
}

Status LeaderElector::Run(CancelToken* cancel) {
  // Registered outside mu_: the token runs callbacks under its own lock, and Kick takes mu_.
  const int registration = cancel != nullptr ? cancel->Register([this] { Kick(); }) : 0;
  auto unregister = [&] {
    if (cancel != nullptr) cancel->Unregister(registration);
  };
  const std::string& id = config_.identity;

  // Acquire. Each period's deadline is fixed before its attempt, so time that passes during
  // the attempt counts toward the wait.
  while (true) {
    if (cancel != nullptr && cancel->cancelled()) {
      unregister();
      return Status::Ok();
    }
    const TimePoint next = clock_->Now() + JitteredRetry();
    if (TryAcquireOrRenew()) break;
    if (!WaitUntil(next, cancel)) {
      unregister();
      return Status::Ok();
    }
  }
  // Renew. The deadline counts from the start of the last successful attempt: others count
  // lease_duration (> renew_deadline) from when they saw that write, which was later, so we
  // stop acting as leader before anyone else may start. Both times are fixed before
  // on_started_leading, so a test that advances a FakeClock once it sees leadership cannot
  // shift them.
  TimePoint last_renew;
  {
    std::lock_guard lock(mu_);
    last_renew = last_renew_.value_or(clock_->Now());
  }
  TimePoint next = last_renew + config_.retry_period;
  LogInfo("leader election: started leading", {{"lease", lease_ref_}, {"identity", id}});
  if (config_.on_started_leading) config_.on_started_leading();

  Status result;
  while (true) {
    if (!WaitUntil(next, cancel)) {
      if (config_.release_on_cancel) (void)Release();
      result = Status::Ok();
      break;
    }
    const TimePoint attempt = clock_->Now();
    next = attempt + config_.retry_period;
    if (TryAcquireOrRenew()) {
      last_renew = attempt;
      continue;
    }
    const std::string holder = GetLeader();
    if (!holder.empty() && holder != id) {
      result = Status::Unavailable("leader election: lease " + lease_ref_ + " taken by " + holder);
      break;
    }
    if (clock_->Now() - last_renew >= config_.renew_deadline) {
      result = Status::Unavailable("leader election: could not renew lease " + lease_ref_ +
                                   " within the renew deadline");
      break;
    }
  }
  if (!result.ok()) {
    LogWarn("leader election: lost leadership",
            {{"lease", lease_ref_}, {"identity", id}, {"reason", result.message()}});
  } else {
    LogInfo("leader election: stopped leading", {{"lease", lease_ref_}, {"identity", id}});
  }
  if (config_.on_stopped_leading) config_.on_stopped_leading();
  unregister();
  return result;
}

}  // namespace pdpool::kube
