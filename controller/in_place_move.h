// In-place role moves: the planner's way to turn a ready prefill worker into a decode worker (or
// back) in seconds, without a new pod and without reloading weights. The reconciler
//  1. scales the receiving role's current ReplicaSet up by the moves (its pods count stays
//     right once the moved pod is adopted; a replacement the ReplicaSet controller may start in
//     between is not ready and is the first it deletes),
//  2. relabels each moved pod (pdpool.dev/role and pdpool.dev/template-hash of the receiving
//     ReplicaSet): the giving ReplicaSet releases it, the receiving one adopts it,
//  3. scales the giving ReplicaSet down by the moves,
//  4. tells each moved worker its new role (POST /internal/v1/role with the pool token): the
//     worker drains its in-flight work and switches; its downward-API labels file carries the
//     role too, so a restart comes back in the new role. Pod UID and restart count are unchanged
//     and the router follows the label.
// Pure helpers plus RoleNotifier, which makes the worker calls on its own thread so a draining
// worker never holds up a reconcile. RoleNotifier is thread-safe.
#pragma once

#include <condition_variable>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/clock.h"
#include "common/json.h"

namespace pdpool::controller {

// `count` pods to move out of a role: Running, Ready, not terminating, carrying `from_hash`
// (the giving role's current revision), most recently started first (they have the least
// warm state to lose). Fewer when fewer qualify.
std::vector<const Json*> PickWorkersToMove(const std::vector<const Json*>& pool_pods,
                                           std::string_view from_role, std::string_view from_hash,
                                           int count);

// The merge patch that moves a pod: labels role/template-hash, annotations
// pdpool.dev/moved-from and pdpool.dev/moved-at.
Json MovePatch(std::string_view from_role, std::string_view to_role, std::string_view to_hash,
               WallTime now);

struct RoleChange {
  std::string pod;  // namespace/name, for logs
  std::string ip;
  int port = 8000;
  std::string role;
  std::string token;
};

class RoleNotifier {
 public:
  RoleNotifier();
  ~RoleNotifier();  // finishes the call in progress, drops the rest
  // Queues the call; retried (1 s apart, up to `attempts`) on connection errors and 5xx.
  void Notify(RoleChange change, int attempts = 30);
  // Calls made so far that the worker accepted (for tests and logs).
  int succeeded() const;

 private:
  void Run();

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<RoleChange, int>> queue_;  // guarded by mu_
  bool stopping_ = false;                         // guarded by mu_
  int succeeded_ = 0;                             // guarded by mu_
  std::thread thread_;
};

}  // namespace pdpool::controller
