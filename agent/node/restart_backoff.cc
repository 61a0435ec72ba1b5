// Restart policy and crash-loop back-off: see restart_backoff.h.
#include "agent/node/restart_backoff.h"

#include <algorithm>

namespace pdpool::agent {

bool ShouldRestart(std::string_view restart_policy, int exit_code) {
  if (restart_policy == "Never") return false;
  if (restart_policy == "OnFailure") return exit_code != 0;
  return true;
}

Duration RestartDelay(const RestartBackoffPolicy& policy, int crashes) {
  if (crashes <= 1) return Duration::zero();
  Duration d = policy.initial;
  for (int i = 2; i < crashes && d < policy.max; ++i) d *= 2;
  return std::clamp(d, Duration::zero(), policy.max);
}

int CountCrash(const RestartBackoffPolicy& policy, int crashes, Duration ran) {
  if (ran >= policy.reset_after) return 1;
  return crashes + 1;
}

}  // namespace pdpool::agent
