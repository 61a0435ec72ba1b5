// CancelToken: lets one thread stop another's blocking call (a watch, a rate-limiter wait, a
// leader-election loop). Thread-safe.
//
// Callbacks run while mu_ is held. That is deliberate: Unregister takes mu_ too, so once it
// returns, the callback is neither running nor will it run, and the caller may destroy whatever
// the callback refers to (a condition variable on its stack, say). The price: a callback must
// not call Register, Unregister or Cancel on the same token.
#include <algorithm>
#include <utility>

#include "common/kube/kube_client.h"

namespace pdpool::kube {

void CancelToken::Cancel() {
  std::lock_guard lock(mu_);
  if (cancelled_.exchange(true)) return;
  std::vector<std::pair<int, std::function<void()>>> callbacks;
  callbacks.swap(callbacks_);
  for (auto& [id, fn] : callbacks) {
    if (fn) fn();
  }
}

int CancelToken::Register(std::function<void()> fn) {
  std::unique_lock lock(mu_);
  int id = ++next_id_;
  if (cancelled_.load()) {
    // Already cancelled: run at once, on the caller's thread. The lock is released first so a
    // callback that takes the caller's own locks cannot deadlock against a concurrent Cancel.
    lock.unlock();
    if (fn) fn();
    return id;
  }
  callbacks_.emplace_back(id, std::move(fn));
  return id;
}

void CancelToken::Unregister(int id) {
  std::lock_guard lock(mu_);
  callbacks_.erase(std::remove_if(callbacks_.begin(), callbacks_.end(),
                                  [id](const auto& entry) { return entry.first == id; }),
                   callbacks_.end());
}

}  // namespace pdpool::kube
