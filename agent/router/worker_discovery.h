// Worker discovery for the router: either static lists from flags (--prefill/--decode/--workers)
// or a Kubernetes informer over the pool's pods (label pdpool.dev/pool=<pool>; role from label
// pdpool.dev/role; address podIP:<worker port>; only Running pods with Ready=True that are
// not being deleted). Either way the result is handed to WorkerPool::SetWorkers, whole, each
// time something changes.
// Thread-safety: free functions are pure; KubeWorkerDiscovery's Start/Stop from one thread.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "agent/router/worker_pool.h"
#include "common/json.h"
#include "common/kube/informer.h"
#include "common/kube/kube_client.h"
#include "common/status.h"

namespace pdpool::agent {

inline constexpr const char* kPoolLabel = "pdpool.dev/pool";
inline constexpr const char* kRoleLabel = "pdpool.dev/role";

// "host:port,host:port" lists per role. Errors name the flag and the bad entry; an address
// may appear only once across all lists.
StatusOr<std::vector<WorkerSpec>> ParseStaticWorkers(std::string_view prefill,
                                                     std::string_view decode,
                                                     std::string_view both);

// The worker a pod stands for, or nullopt when it should get no traffic (not Running, not
// Ready, being deleted, no pod IP, no or unknown role label).
std::optional<WorkerSpec> WorkerSpecFromPod(const Json& pod, int worker_port);

struct KubeDiscoveryOptions {
  std::string ns = "default";
  std::string pool;
  int worker_port = 8000;
};

class KubeWorkerDiscovery {
 public:
  // `client` and `pool` must outlive this object.
  KubeWorkerDiscovery(kube::KubeClient* client, KubeDiscoveryOptions options, WorkerPool* pool);
  ~KubeWorkerDiscovery();  // Stop()

  void Start();
  void Stop();
  bool WaitForSync(Duration timeout);

 private:
  // Recomputes the whole set from the cache (level-triggered: any event, same answer).
  void Resync();

  KubeDiscoveryOptions options_;
  WorkerPool* pool_;
  kube::Informer informer_;
  kube::CancelToken cancel_;
  std::thread thread_;
};

}  // namespace pdpool::agent
