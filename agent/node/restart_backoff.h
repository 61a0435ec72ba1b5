// Container restarts on a simulated node, as the kubelet decides them: whether a container that
// exited is started again (the pod's restartPolicy) and how long the node waits first (the
// crash-loop back-off: nothing before the first restart, then `initial` doubling up to `max`;
// a run that lasted `reset_after` forgives the earlier crashes). The kubelet's values are 10 s,
// 5 min and 10 min; the node agent's --restart-backoff and --max-restart-backoff scale them.
// Pure functions and a plain value type; thread-compatible.
#pragma once

#include <chrono>
#include <string_view>

#include "common/clock.h"

namespace pdpool::agent {

struct RestartBackoffPolicy {
  Duration initial = std::chrono::seconds(10);
  Duration max = std::chrono::minutes(5);
  Duration reset_after = std::chrono::minutes(10);
};

// Whether a container that exited with `exit_code` is restarted under `restart_policy`
// ("Always", "OnFailure", "Never"; anything else counts as the default, Always).
bool ShouldRestart(std::string_view restart_policy, int exit_code);

// The wait before the next start of a container that has crashed `crashes` times in a row
// (1 for the first exit): 0, then initial, 2 * initial, ... capped at max.
Duration RestartDelay(const RestartBackoffPolicy& policy, int crashes);

// The crash count after a run of `ran` that ended: `crashes + 1`, or 1 when the run lasted
// reset_after or longer (a container that ran for a long time is not crash-looping).
int CountCrash(const RestartBackoffPolicy& policy, int crashes, Duration ran);

}  // namespace pdpool::agent
