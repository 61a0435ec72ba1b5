// In-place role moves: pod choice, the relabel patch, and the worker calls.
#include "controller/in_place_move.h"

#include <httplib.h>

#include <algorithm>

#include "common/log.h"

namespace pdpool::controller {

namespace {

bool PodReady(const Json& pod) {
  if (JsonGet<std::string>(pod, "/status/phase", "") != "Running") return false;
  if (!JsonGet<std::string>(pod, "/metadata/deletionTimestamp", "").empty()) return false;
  for (const auto& c : JsonGet<Json>(pod, "/status/conditions", Json::array())) {
    if (c.value("type", "") == "Ready") return c.value("status", "") == "True";
  }
  return false;
}

}  // namespace

std::vector<const Json*> PickWorkersToMove(const std::vector<const Json*>& pool_pods,
                                           std::string_view from_role, std::string_view from_hash,
                                           int count) {
  std::vector<const Json*> candidates;
  for (const Json* pod : pool_pods) {
    if (JsonGet<std::string>(*pod, "/metadata/labels/pdpool.dev~1role", "") != from_role) continue;
    if (JsonGet<std::string>(*pod, "/metadata/labels/pdpool.dev~1template-hash", "") != from_hash) {
      continue;
    }
    if (PodReady(*pod)) candidates.push_back(pod);
  }
  std::sort(candidates.begin(), candidates.end(), [](const Json* a, const Json* b) {
    const auto sa = JsonGet<std::string>(*a, "/status/startTime", "");
    const auto sb = JsonGet<std::string>(*b, "/status/startTime", "");
    if (sa != sb) return sa > sb;
    return JsonGet<std::string>(*a, "/metadata/name", "") <
           JsonGet<std::string>(*b, "/metadata/name", "");
  });
  if (static_cast<int>(candidates.size()) > count) candidates.resize(std::max(0, count));
  return candidates;
}

Json MovePatch(std::string_view from_role, std::string_view to_role, std::string_view to_hash,
               WallTime now) {
  return {{"metadata",
           {{"labels",
             {{"pdpool.dev/role", std::string(to_role)},
              {"pdpool.dev/template-hash", std::string(to_hash)}}},
            {"annotations",
             {{"pdpool.dev/moved-from", std::string(from_role)},
              {"pdpool.dev/moved-at", FormatRfc3339(now)}}}}}};
}

RoleNotifier::RoleNotifier() : thread_([this] { Run(); }) {}

RoleNotifier::~RoleNotifier() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void RoleNotifier::Notify(RoleChange change, int attempts) {
  {
    std::lock_guard lock(mu_);
    queue_.emplace_back(std::move(change), attempts);
  }
  cv_.notify_all();
}

int RoleNotifier::succeeded() const {
  std::lock_guard lock(mu_);
  return succeeded_;
}

void RoleNotifier::Run() {
  std::unique_lock lock(mu_);
  while (true) {
    cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
    if (stopping_) return;
    auto [change, attempts] = std::move(queue_.front());
    queue_.pop_front();
    lock.unlock();
    httplib::Client client(change.ip, change.port);
    client.set_connection_timeout(2);
    // The worker answers once it has drained and switched (up to its drain timeout).
    client.set_read_timeout(120);
    httplib::Headers headers{{"Authorization", "Bearer " + change.token}};
    const std::string body = Json{{"role", change.role}}.dump();
    auto response = client.Post("/internal/v1/role", headers, body, "application/json");
    const int code = response ? response->status : 0;
    lock.lock();
    if (code == 200) {
      ++succeeded_;
      LogInfo("worker switched role", {{"pod", change.pod}, {"role", change.role}});
    } else if ((code == 0 || code >= 500) && attempts > 1 && !stopping_) {
      LogInfo("worker role call failed, retrying",
              {{"pod", change.pod}, {"role", change.role}, {"code", code}});
      lock.unlock();
      // Outside the lock: a retry waits a second without blocking Notify.
      std::this_thread::sleep_for(std::chrono::seconds(1));
      lock.lock();
      queue_.emplace_back(std::move(change), attempts - 1);
    } else {
      LogWarn("worker refused its new role",
              {{"pod", change.pod},
               {"role", change.role},
               {"code", code},
               {"body", response ? response->body : httplib::to_string(response.error())}});
    }
  }
}

}  // namespace pdpool::controller
