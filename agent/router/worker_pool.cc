// WorkerPool: selection, health and polling (see worker_pool.h).
#include "agent/router/worker_pool.h"

#include <algorithm>
#include <limits>
#include <unordered_map>

#include "common/log.h"

namespace pdpool::agent {

WorkerPool::WorkerPool(const Clock* clock, WorkerPoolOptions options)
    : clock_(clock), options_(std::move(options)) {}

WorkerPool::~WorkerPool() { StopPolling(); }

void WorkerPool::SetWorkers(const std::vector<WorkerSpec>& specs) {
  std::vector<std::shared_ptr<RouterWorker>> dropped;  // destroyed outside the lock
  std::lock_guard lock(mu_);
  std::unordered_map<std::string, std::shared_ptr<RouterWorker>> old;
  for (auto& w : workers_) old.emplace(w->address(), std::move(w));
  std::vector<std::shared_ptr<RouterWorker>> next;
  next.reserve(specs.size());
  for (const WorkerSpec& spec : specs) {
    auto it = old.find(spec.address);
    if (it != old.end()) {
      if (it->second->spec_.role != spec.role) {
        LogInfo("worker role changed",
                {{"worker", spec.address}, {"role", WorkerRoleName(spec.role)}});
        it->second->spec_.role = spec.role;
      }
      next.push_back(std::move(it->second));
      old.erase(it);
    } else {
      LogInfo("worker added", {{"worker", spec.address}, {"role", WorkerRoleName(spec.role)}});
      next.push_back(std::make_shared<RouterWorker>(spec, options_.client));
    }
  }
  for (auto& [address, w] : old) {
    LogInfo("worker removed", {{"worker", address}});
    dropped.push_back(std::move(w));
  }
  workers_ = std::move(next);
}

WorkerRole WorkerPool::RoleLocked(const RouterWorker& w) const {
  // The worker knows best: a role switch in place shows in its info before discovery sees it.
  if (w.info_ && w.info_->role) return *w.info_->role;
  return w.spec_.role;
}

bool WorkerPool::UsableLocked(const RouterWorker& w, TimePoint now) const {
  return w.info_ && w.info_->ready && !w.info_->draining && !w.info_->switching_role &&
         now >= w.unhealthy_until_;
}

double WorkerPool::ScoreLocked(const RouterWorker& w, WorkerRole role) const {
  const WorkerInfoReply& info = *w.info_;
  if (role == WorkerRole::kPrefill) {
    int64_t since_poll =
        w.prefill_tokens_.load(std::memory_order_relaxed) - w.prefill_tokens_at_poll_;
    return static_cast<double>(std::max<int64_t>(0, info.outstanding_prefill_tokens + since_poll));
  }
  // decode / both: KV usage, with the router's reservations since the poll added.
  int64_t reserved_since =
      w.reserved_tokens_.load(std::memory_order_relaxed) - w.reserved_tokens_at_poll_;
  double block_size = std::max(1, info.block_size);
  if (info.kv_blocks_total > 0) {
    double used = static_cast<double>(info.kv_blocks_total - info.kv_blocks_free) +
                  static_cast<double>(reserved_since) / block_size;
    return std::max(0.0, used) / static_cast<double>(info.kv_blocks_total);
  }
  // No block counts reported: the ratio, then the router's own reservations.
  return info.kv_usage_ratio +
         static_cast<double>(std::max<int64_t>(0, w.reserved_tokens_.load())) * 1e-12;
}

std::shared_ptr<RouterWorker> WorkerPool::Pick(WorkerRole role,
                                               const std::vector<const RouterWorker*>& exclude) {
  const TimePoint now = clock_->Now();
  std::lock_guard lock(mu_);
  double best = std::numeric_limits<double>::infinity();
  // Indices of the workers sharing the best score.
  thread_local std::vector<size_t> ties;
  ties.clear();
  for (size_t i = 0; i < workers_.size(); ++i) {
    const RouterWorker& w = *workers_[i];
    if (RoleLocked(w) != role || !UsableLocked(w, now)) continue;
    if (std::find(exclude.begin(), exclude.end(), &w) != exclude.end()) continue;
    double score = ScoreLocked(w, role);
    if (score < best - 1e-12) {
      best = score;
      ties.clear();
      ties.push_back(i);
    } else if (score <= best + 1e-12) {
      ties.push_back(i);
    }
  }
  if (ties.empty()) return nullptr;
  return workers_[ties[round_robin_[static_cast<int>(role)]++ % ties.size()]];
}

WorkerPool::Mode WorkerPool::CurrentMode() const {
  const TimePoint now = clock_->Now();
  std::lock_guard lock(mu_);
  bool prefill = false, decode = false, both = false;
  for (const auto& w : workers_) {
    if (!UsableLocked(*w, now)) continue;
    switch (RoleLocked(*w)) {
      case WorkerRole::kPrefill:
        prefill = true;
        break;
      case WorkerRole::kDecode:
        decode = true;
        break;
      case WorkerRole::kBoth:
        both = true;
        break;
    }
  }
  if (prefill && decode) return Mode::kDisaggregated;
  if (both) return Mode::kAggregated;
  return Mode::kNone;
}

int WorkerPool::MaxModelLen() const {
  std::lock_guard lock(mu_);
  int best = 0;
  for (const auto& w : workers_) {
    if (!w->info_ || w->info_->max_model_len <= 0) continue;
    if (best == 0 || w->info_->max_model_len < best) best = w->info_->max_model_len;
  }
  return best;
}

void WorkerPool::ReportFailure(RouterWorker* worker, const Status& status) {
  if (status.code() == StatusCode::kInvalidArgument || status.code() == StatusCode::kCancelled)
    return;  // the request's fault, or ours: the worker is fine
  const TimePoint now = clock_->Now();
  std::lock_guard lock(mu_);
  int n = ++worker->consecutive_failures_;
  auto backoff = options_.failure_backoff * (int64_t{1} << std::min(n - 1, 20));
  backoff = std::min(backoff, options_.max_failure_backoff);
  if (now + backoff > worker->unhealthy_until_) worker->unhealthy_until_ = now + backoff;
  if (n == 1) {
    LogWarn("worker failing; out of rotation",
            {{"worker", worker->address()},
             {"error", status.ToString()},
             {"backoff_ms", static_cast<int64_t>(backoff.count())}});
  }
}

void WorkerPool::ReportSuccess(RouterWorker* worker) {
  std::lock_guard lock(mu_);
  if (worker->consecutive_failures_ > 0) {
    LogInfo("worker recovered", {{"worker", worker->address()}});
    worker->consecutive_failures_ = 0;
  }
}

void WorkerPool::UpdateInfo(RouterWorker* worker, const StatusOr<WorkerInfoReply>& info,
                            int64_t prefill_tokens_at_poll, int64_t reserved_tokens_at_poll) {
  if (!info.ok()) {
    ReportFailure(worker, info.status());
    return;
  }
  std::lock_guard lock(mu_);
  worker->info_ = *info;
  worker->prefill_tokens_at_poll_ = prefill_tokens_at_poll;
  worker->reserved_tokens_at_poll_ = reserved_tokens_at_poll;
}

void WorkerPool::PollOnce() {
  for (const auto& w : Workers()) {
    int64_t prefill = w->prefill_tokens_.load();
    int64_t reserved = w->reserved_tokens_.load();
    UpdateInfo(w.get(), w->client().Info(), prefill, reserved);
  }
  std::lock_guard lock(poll_mu_);
  ++poll_rounds_;
  poll_cv_.notify_all();
}

void WorkerPool::StartPolling() {
  {
    std::lock_guard lock(poll_mu_);
    if (poller_.joinable()) return;
    stop_polling_ = false;
  }
  poller_ = std::thread([this] {
    std::unique_lock lock(poll_mu_);
    while (!stop_polling_) {
      lock.unlock();
      PollOnce();
      lock.lock();
      poll_cv_.wait_for(lock, options_.poll_interval, [this] { return stop_polling_; });
    }
  });
}

void WorkerPool::StopPolling() {
  {
    std::lock_guard lock(poll_mu_);
    stop_polling_ = true;
    poll_cv_.notify_all();
  }
  if (poller_.joinable()) poller_.join();
}

bool WorkerPool::WaitForPoll(std::chrono::milliseconds timeout) {
  std::unique_lock lock(poll_mu_);
  // A round that started before this call may have read stale state: wait for two.
  uint64_t target = poll_rounds_ + 2;
  return poll_cv_.wait_for(lock, timeout, [&] { return poll_rounds_ >= target || stop_polling_; });
}

void WorkerPool::AbortCalls() {
  for (const auto& w : Workers()) w->client().AbortCalls();
}

std::vector<WorkerPool::WorkerState> WorkerPool::Describe() const {
  const TimePoint now = clock_->Now();
  std::lock_guard lock(mu_);
  std::vector<WorkerState> out;
  out.reserve(workers_.size());
  for (const auto& w : workers_) {
    const char* state = now < w->unhealthy_until_ ? "unhealthy"
                        : UsableLocked(*w, now)   ? "ready"
                                                  : "not_ready";
    out.push_back({w->address(), RoleLocked(*w), state});
  }
  return out;
}

std::vector<std::shared_ptr<RouterWorker>> WorkerPool::Workers() const {
  std::lock_guard lock(mu_);
  return workers_;
}

}  // namespace pdpool::agent
