// Container probes on a simulated node (startupProbe, readinessProbe, livenessProbe): the probe
// spec as the kubelet reads it (httpGet on the pod IP or `host`, port by number or by the name
// of a container port; tcpSocket; exec is not supported and always fails, saying so), the
// kubelet's state machine over its results (initialDelaySeconds, periodSeconds,
// successThreshold, failureThreshold), and one blocking probe attempt (at most timeoutSeconds).
// ProbeSpec/ParseProbe are pure, ProbeTracker is thread-compatible, RunProbe is thread-safe.
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/clock.h"
#include "common/json.h"
#include "common/status.h"

namespace pdpool::agent {

struct ProbeSpec {
  enum class Kind { kHttpGet, kTcpSocket, kUnsupported };
  Kind kind = Kind::kUnsupported;
  std::string host;  // the pod IP unless httpGet.host is set
  int port = 0;
  std::string path = "/";
  std::string scheme = "HTTP";  // HTTP or HTTPS (certificate not verified, as the kubelet)
  std::vector<std::pair<std::string, std::string>> headers;
  std::string unsupported;  // kUnsupported: why
  Duration initial_delay{0};
  Duration period = std::chrono::seconds(10);
  Duration timeout = std::chrono::seconds(1);
  int success_threshold = 1;
  int failure_threshold = 3;
};

// Reads `probe` (a container's readinessProbe etc.). Errors (a port name the container does not
// declare, a port out of range) name the field.
StatusOr<ProbeSpec> ParseProbe(const Json& probe, const Json& container, const std::string& pod_ip);

// The result of a probe over time, as the kubelet's prober worker keeps it: the first attempt
// is due initial_delay after the container started, then one every period; the result turns
// true after success_threshold successes in a row and false after failure_threshold failures
// in a row.
class ProbeTracker {
 public:
  // `initial`: the result before any attempt (false for readiness and startup, true for
  // liveness).
  ProbeTracker(ProbeSpec spec, TimePoint container_started, bool initial);

  const ProbeSpec& spec() const { return spec_; }
  bool result() const { return result_; }
  TimePoint next_due() const { return next_due_; }
  bool Due(TimePoint now) const { return now >= next_due_; }
  // failure_threshold failures in a row (a startup probe that gives up).
  bool failing() const { return failures_ >= spec_.failure_threshold; }
  // Records one attempt made at `now`; returns true when result() changed.
  bool Record(bool success, TimePoint now);

 private:
  ProbeSpec spec_;
  bool result_;
  int successes_ = 0;  // in a row
  int failures_ = 0;   // in a row
  TimePoint next_due_;
};

// When a container's prober next has work: the startup probe's next attempt until the container
// has started, then the earliest of readiness and liveness (the probes that run, as the kubelet
// runs them). TimePoint::max() when there is none. A probe that is not run keeps a next_due in
// the past: a loop waking for it would spin.
TimePoint NextProbeDue(const std::optional<ProbeTracker>& startup, bool started,
                       const std::optional<ProbeTracker>& readiness,
                       const std::optional<ProbeTracker>& liveness);

struct ProbeOutcome {
  bool success = false;
  std::string detail;  // "HTTP 503", "connection refused", ...
};

// One attempt: HTTP(S) GET whose status is 200-399, or a TCP connect; blocks at most
// spec.timeout (plus connect time on a loopback address).
ProbeOutcome RunProbe(const ProbeSpec& spec);

}  // namespace pdpool::agent
