// KubeClient: the narrow interface to the Kubernetes API server. HttpKubeClient talks to a
// real one; tests/fakes/fake_kube_client.h keeps objects in memory. Implementations are
// thread-safe: any method may be called from any thread.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/json.h"
#include "common/kube/resource.h"
#include "common/status.h"

namespace pdpool::kube {

struct ListOptions {
  std::string label_selector;  // "a=b,c in (d)"
  std::string field_selector;  // "spec.nodeName=n1"
  std::string resource_version;
  int64_t limit = 0;
  std::string continue_token;
};

struct WatchOptions {
  std::string label_selector;
  std::string field_selector;
  std::string resource_version;  // start after this version
  bool allow_bookmarks = true;
  int timeout_seconds = 300;  // server closes the stream after this
};

enum class PatchType {
  kMerge,      // application/merge-patch+json
  kJson,       // application/json-patch+json
  kStrategic,  // application/strategic-merge-patch+json (built-in types only)
  kApply,      // application/apply-patch+yaml (server-side apply; body is JSON)
};

struct PatchOptions {
  std::string field_manager = "pdpool";
  bool force = false;       // server-side apply: take ownership of conflicting fields
  std::string subresource;  // "" or "status"
};

struct DeleteOptions {
  std::string propagation_policy;  // "", "Foreground", "Background", "Orphan"
  std::string precondition_uid;
  std::optional<int64_t> grace_period_seconds;
};

struct WatchEvent {
  std::string type;  // ADDED, MODIFIED, DELETED, BOOKMARK, ERROR
  Json object;
};

// Cancels blocking calls (watches) from another thread. Thread-safe.
class CancelToken {
 public:
  void Cancel();
  bool cancelled() const { return cancelled_.load(); }
  // Runs `fn` on Cancel (at once if already cancelled). Returns an id for Unregister.
  int Register(std::function<void()> fn);
  void Unregister(int id);

 private:
  std::atomic<bool> cancelled_{false};
  std::mutex mu_;
  int next_id_ = 0;
  std::vector<std::pair<int, std::function<void()>>> callbacks_;
};

class KubeClient {
 public:
  virtual ~KubeClient() = default;

  virtual StatusOr<Json> Get(const ResourceType& type, std::string_view ns,
                             std::string_view name) = 0;
  // Returns the List object (items, metadata.resourceVersion); follows `continue` itself
  // when options.limit is 0.
  virtual StatusOr<Json> List(const ResourceType& type, std::string_view ns,
                              const ListOptions& options = {}) = 0;
  virtual StatusOr<Json> Create(const ResourceType& type, std::string_view ns,
                                const Json& object) = 0;
  // PUT of the whole object; Conflict when metadata.resourceVersion is stale.
  virtual StatusOr<Json> Update(const ResourceType& type, const Json& object) = 0;
  // PUT to the /status subresource.
  virtual StatusOr<Json> UpdateStatus(const ResourceType& type, const Json& object) = 0;
  virtual StatusOr<Json> Patch(const ResourceType& type, std::string_view ns, std::string_view name,
                               PatchType patch_type, const Json& patch,
                               const PatchOptions& options = {}) = 0;
  virtual Status Delete(const ResourceType& type, std::string_view ns, std::string_view name,
                        const DeleteOptions& options = {}) = 0;
  // Blocks, calling on_event for each event, until the server ends the stream (Ok), an error
  // occurs (Gone when the resourceVersion is too old), on_event returns false (Ok), or
  // `cancel` fires (Cancelled).
  virtual Status Watch(const ResourceType& type, std::string_view ns, const WatchOptions& options,
                       const std::function<bool(const WatchEvent&)>& on_event,
                       CancelToken* cancel) = 0;
};

}  // namespace pdpool::kube
