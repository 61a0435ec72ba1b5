// Informer: keeps a local cache of one resource type in sync with the API server (list, then
// watch from the list's resourceVersion; bookmarks advance it; 410 Gone → relist; errors →
// exponential backoff) and tells handlers what changed. The cache hands out read-only
// snapshots (shared_ptr<const Json>): callers copy before changing anything.
// Thread-safe: Run() on one thread; Get/List/ByIndex/HasSynced from any thread. Handlers run
// on the Run() thread, after the cache is updated, and must not block.
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/clock.h"
#include "common/kube/kube_client.h"

namespace pdpool::kube {

using ObjectPtr = std::shared_ptr<const Json>;

// "namespace/name", or "name" for cluster-scoped objects.
std::string ObjectKey(const Json& object);

struct InformerOptions {
  std::string ns;  // empty: all namespaces
  std::string label_selector;
  std::string field_selector;
  int watch_timeout_seconds = 300;
  // metadata.managedFields is often the largest part of an object and nothing pdpool reads:
  // drop it from the cache (as client-go users do with a transform) to save memory. Writes of
  // cached copies leave the server's managedFields as they are when the field is absent.
  bool strip_managed_fields = true;
  Duration initial_backoff = std::chrono::milliseconds(500);
  Duration max_backoff = std::chrono::seconds(30);
};

struct InformerHandler {
  std::function<void(const ObjectPtr&)> on_add;
  std::function<void(const ObjectPtr& old_obj, const ObjectPtr& new_obj)> on_update;
  std::function<void(const ObjectPtr&)> on_delete;
};

class Informer {
 public:
  // An index maps an object to the values it is filed under (e.g. "ns/pool-name").
  using IndexFunc = std::function<std::vector<std::string>(const Json&)>;

  Informer(KubeClient* client, ResourceType type, InformerOptions options = {});

  const ResourceType& type() const { return type_; }

  // Register before Run().
  void AddHandler(InformerHandler handler);
  void AddIndex(const std::string& name, IndexFunc fn);

  // Lists and watches until `cancel` fires.
  void Run(CancelToken* cancel);

  bool HasSynced() const { return synced_.load(); }
  // Waits until the first list has been stored; false on timeout or cancel.
  bool WaitForSync(Duration timeout, CancelToken* cancel = nullptr) const;

  ObjectPtr Get(const std::string& key) const;
  std::vector<ObjectPtr> List() const;
  std::vector<ObjectPtr> ByIndex(const std::string& index, const std::string& value) const;
  size_t Size() const;
  // Number of full lists done (1 after start; more after Gone or errors). For tests/metrics.
  int ListCount() const { return list_count_.load(); }

 private:
  // Returns the list's resourceVersion, or an error.
  StatusOr<std::string> ListAndReplace();
  void Apply(const WatchEvent& event);
  void StoreLocked(const std::string& key, ObjectPtr obj);
  void EraseLocked(const std::string& key);
  ObjectPtr Freeze(Json object) const;

  KubeClient* client_;
  const ResourceType type_;
  const InformerOptions options_;
  std::vector<InformerHandler> handlers_;
  std::map<std::string, IndexFunc> index_funcs_;

  mutable std::mutex mu_;
  mutable std::condition_variable synced_cv_;
  std::unordered_map<std::string, ObjectPtr> items_;
  // index name → value → keys
  std::map<std::string, std::unordered_map<std::string, std::map<std::string, bool>>> indices_;
  std::string resource_version_;
  std::atomic<bool> synced_{false};
  std::atomic<int> list_count_{0};
};

}  // namespace pdpool::kube
