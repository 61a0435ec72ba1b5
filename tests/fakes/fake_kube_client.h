// FakeKubeClient: an in-memory KubeClient that behaves like an API server closely enough for
// unit tests of informers, controllers and leader election:
//   - objects per type keyed by namespace/name; one global, monotonically increasing
//     resourceVersion stamped on every write; uid, creationTimestamp, generation (bumped when
//     anything outside metadata and status changes), generateName;
//   - status subresource semantics for every type: Create drops .status, Update ignores
//     .status, UpdateStatus and Patch(subresource "status") change only .status;
//   - AlreadyExists / NotFound / Conflict (stale resourceVersion, uid precondition) as the
//     server returns them; an Update that changes nothing is a no-op (no new version, no event);
//   - List/Watch with label selectors (=, ==, !=, exists, !exists, in, notin) and field
//     selectors (metadata.name, metadata.namespace; for pods also spec.nodeName, status.phase
//     and a few more); List pagination with limit/continue;
//   - Patch: merge (RFC 7386), JSON patch (RFC 6902; a patch that does not apply, a failed
//     "test" op included, is InvalidArgument like the server's 422), apply (treated as a merge
//     patch; creates a missing object) and strategic (approximated by a merge patch); a
//     resourceVersion or uid in the patch is a precondition (Conflict);
//   - Watch replays the retained event history after the requested resourceVersion (Gone when
//     it is older than the retained window, see CompactHistory/SetHistoryLimit); an empty or
//     "0" version starts with synthetic ADDED events for the current objects. With selectors,
//     objects that start or stop matching arrive as ADDED / DELETED, as from the real server.
//     Watches end when CloseWatches() is called (Ok), on cancel (Cancelled) or when the
//     callback returns false (Ok); the fake ignores timeout_seconds;
//   - fault injection (FailNext, SetCallHook) and per-method call counters.
// Not modelled: finalizers/deletionTimestamp (Delete removes at once), owner-reference garbage
// collection, admission, defaulting, validation beyond names.
// Like the real server for built-in types, List items carry no apiVersion/kind (custom
// resources' items do); Get, Create, Update and watch events always carry them.
// Thread-safety: thread-safe; any method may be called from any thread.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "common/clock.h"
#include "common/kube/kube_client.h"

namespace pdpool::kube {

// What a call is about, as passed to a call hook.
struct FakeCall {
  std::string method;  // "Get", "List", "Create", "Update", "UpdateStatus", "Patch",
                       // "Delete", "Watch"
  const ResourceType* type = nullptr;
  std::string ns;              // from the arguments, or the object for Update/UpdateStatus
  std::string name;            // empty for List/Watch and for Create with generateName
  const Json* body = nullptr;  // the object (Create/Update/UpdateStatus) or patch; else null
};

class FakeKubeClient final : public KubeClient {
 public:
  // `clock` stamps creationTimestamp; null means RealClock. It must outlive the client.
  explicit FakeKubeClient(Clock* clock = nullptr);
  // Ends all watches and waits for them to return.
  ~FakeKubeClient() override;

  StatusOr<Json> Get(const ResourceType& type, std::string_view ns, std::string_view name) override;
  StatusOr<Json> List(const ResourceType& type, std::string_view ns,
                      const ListOptions& options = {}) override;
  StatusOr<Json> Create(const ResourceType& type, std::string_view ns, const Json& object) override;
  StatusOr<Json> Update(const ResourceType& type, const Json& object) override;
  StatusOr<Json> UpdateStatus(const ResourceType& type, const Json& object) override;
  StatusOr<Json> Patch(const ResourceType& type, std::string_view ns, std::string_view name,
                       PatchType patch_type, const Json& patch,
                       const PatchOptions& options = {}) override;
  Status Delete(const ResourceType& type, std::string_view ns, std::string_view name,
                const DeleteOptions& options = {}) override;
  Status Watch(const ResourceType& type, std::string_view ns, const WatchOptions& options,
               const std::function<bool(const WatchEvent&)>& on_event,
               CancelToken* cancel) override;

  // ---- Test helpers -------------------------------------------------------------------------

  // Stores `object` as given, .status included (a fixture), creating or replacing it; stamps
  // metadata and emits ADDED/MODIFIED like any write. Not counted, not subject to faults.
  StatusOr<Json> Upsert(const ResourceType& type, Json object);

  // The next call of `method` ("Update", ...; "*" for any) on `type` (any type when null) fails
  // with `status` without touching the store. Queued faults are consumed in order.
  void FailNext(std::string_view method, Status status, const ResourceType* type = nullptr);
  // Called before every call (outside the client's lock, so it may call the client; calls it
  // makes do not run the hook again). A non-ok return fails the call with that status. Pass
  // an empty function to remove it.
  void SetCallHook(std::function<Status(const FakeCall&)> hook);

  // Number of calls of `method` (attempts, failed ones included) on `type`, or on any type.
  int CallCount(std::string_view method, const ResourceType& type) const;
  int CallCount(std::string_view method) const;
  // Create + Update + UpdateStatus + Patch + Delete calls on `type`.
  int WriteCount(const ResourceType& type) const;
  void ResetCallCounts();

  // The latest resourceVersion handed out.
  int64_t CurrentResourceVersion() const;
  // Number of objects of `type` in `ns` (all namespaces when empty).
  size_t ObjectCount(const ResourceType& type, std::string_view ns = "") const;

  // Forgets all event history: watches from any resourceVersion older than the current one
  // now get Gone.
  void CompactHistory();
  // Keeps at most `max_events` events per type (0: unlimited, the default).
  void SetHistoryLimit(size_t max_events);
  // Sends a BOOKMARK (at the current resourceVersion) to every open watch that allows them.
  void SendBookmark();
  // Ends every open watch (each returns Ok), as when the server closes the streams. Watches
  // started afterwards are not affected.
  void CloseWatches();
  // Number of watches currently open.
  int ActiveWatches() const;
  // Waits (real time) until at least `n` watches are open; false on timeout.
  bool WaitForWatches(int n, Duration timeout) const;

 private:
  struct Event {
    int64_t rv;
    std::string type;  // ADDED, MODIFIED, DELETED
    Json object;
    Json old;  // previous state for MODIFIED, else null
  };
  struct TypeStore {
    std::map<std::string, Json> objects;  // "ns/name" (or "name") -> object
    std::deque<Event> history;
    int64_t history_start = 0;  // events with rv > history_start are all retained
  };
  struct Fault {
    std::string method;
    std::string type_key;  // empty: any type
    Status status;
  };

  // Counts the call, runs the hook and queued faults. Non-ok: fail the call with it.
  Status Intercept(const FakeCall& call);
  TypeStore& StoreLocked(const ResourceType& type);
  const TypeStore* FindStoreLocked(const ResourceType& type) const;
  StatusOr<Json> CreateLocked(const ResourceType& type, std::string ns, Json object,
                              bool keep_status);
  StatusOr<Json> CommitUpdateLocked(const ResourceType& type, const std::string& key, Json updated);
  void RecordLocked(TypeStore& store, std::string event_type, const Json& object, Json old);
  std::string NewUidLocked();
  std::string GenerateNameLocked(const TypeStore& store, const std::string& ns,
                                 const std::string& prefix);

  Clock* const clock_;
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;  // any write, bookmark, close, cancel, watch count
  std::map<std::string, TypeStore> stores_;
  int64_t rv_ = 0;
  int64_t compacted_rv_ = 0;
  size_t history_limit_ = 0;
  uint64_t uid_counter_ = 0;
  uint64_t name_counter_ = 0;
  uint64_t close_epoch_ = 0;
  uint64_t bookmark_epoch_ = 0;
  int active_watches_ = 0;
  std::multiset<int64_t> watch_cursors_;  // what each open watch has read up to
  bool destroying_ = false;
  std::deque<Fault> faults_;
  std::function<Status(const FakeCall&)> hook_;
  std::map<std::pair<std::string, std::string>, int> calls_;  // (method, type key) -> count
};

}  // namespace pdpool::kube
