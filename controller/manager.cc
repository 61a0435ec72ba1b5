// Manager implementation: wiring of informers, queue, workers, leader election, admin server.
#include "controller/manager.h"

#include <unistd.h>

#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "common/admin_server.h"
#include "common/kube/event_recorder.h"
#include "common/kube/informer.h"
#include "common/kube/leader_election.h"
#include "common/kube/work_queue.h"
#include "common/log.h"
#include "controller/controller_metrics.h"
#include "controller/pool_reconciler.h"
#include "controller/prometheus_targets.h"

namespace pdpool::controller {
namespace {

// The pool that owns a child object (controller owner reference to an InferencePool).
std::string OwnerPoolKey(const Json& object) {
  std::string ns = JsonGet<std::string>(object, "/metadata/namespace", "");
  const Json* refs = nullptr;
  if (object.contains("metadata") && object["metadata"].contains("ownerReferences"))
    refs = &object["metadata"]["ownerReferences"];
  if (!refs || !refs->is_array()) return "";
  for (const auto& ref : *refs) {
    if (ref.value("kind", "") == "InferencePool" && ref.value("controller", false) &&
        ref.value("apiVersion", "").rfind("pdpool.dev/", 0) == 0)
      return ns + "/" + ref.value("name", "");
  }
  return "";
}

// Fields of a Node that change what placement sees; heartbeats alone do not.
Json NodePlacementView(const Json& node) {
  Json view;
  view["labels"] = JsonGet<Json>(node, "/metadata/labels", Json::object());
  view["allocatable"] = JsonGet<Json>(node, "/status/allocatable", Json::object());
  view["unschedulable"] = JsonGet<bool>(node, "/spec/unschedulable", false);
  view["taints"] = JsonGet<Json>(node, "/spec/taints", Json::array());
  std::string ready;
  for (const auto& c : JsonGet<Json>(node, "/status/conditions", Json::array()))
    if (c.value("type", "") == "Ready") ready = c.value("status", "");
  view["ready"] = ready;
  return view;
}

// What the reconciler reads of a child: its spec, identity and replica counts.
Json ChildView(const Json& child) {
  Json view;
  view["spec"] = JsonGet<Json>(child, "/spec", nullptr);
  view["labels"] = JsonGet<Json>(child, "/metadata/labels", nullptr);
  view["annotations"] = JsonGet<Json>(child, "/metadata/annotations", nullptr);
  view["owners"] = JsonGet<Json>(child, "/metadata/ownerReferences", nullptr);
  view["deleting"] = JsonGet<Json>(child, "/metadata/deletionTimestamp", nullptr);
  view["replicas"] = JsonGet<Json>(child, "/status/replicas", nullptr);
  view["ready"] = JsonGet<Json>(child, "/status/readyReplicas", nullptr);
  // Secrets: whether the token is still there is what the reconcile checks.
  view["data"] = JsonGet<Json>(child, "/data", nullptr);
  return view;
}

bool PodHoldsGpus(const Json& pod) {
  std::string phase = JsonGet<std::string>(pod, "/status/phase", "");
  return !JsonGet<std::string>(pod, "/spec/nodeName", "").empty() && phase != "Succeeded" &&
         phase != "Failed";
}

}  // namespace

struct Manager::Impl {
  Impl(kube::KubeClient* c, ManagerOptions o, Clock* clk)
      : client(c), options(std::move(o)), clock(clk), queue(clk) {}

  kube::KubeClient* client;
  ManagerOptions options;
  Clock* clock;
  ControllerMetrics metrics;
  kube::WorkQueue queue;
  kube::CancelToken cancel;           // stops everything
  kube::CancelToken informer_cancel;  // stops informers
  std::unique_ptr<kube::EventRecorder> events;
  std::vector<std::unique_ptr<kube::Informer>> informers;
  kube::Informer* pools = nullptr;
  std::atomic<kube::Informer*> pod_cache{nullptr};  // set once the controllers start (leader)
  std::unique_ptr<planner::PoolAutoscaler> autoscaler;
  std::unique_ptr<RoleNotifier> role_notifier;
  std::unique_ptr<PoolReconciler> reconciler;
  std::vector<std::thread> threads;
  std::atomic<bool> leading{false};
  std::atomic<bool> lost_leadership{false};
  std::atomic<bool> synced{false};
  std::mutex mu;
  std::condition_variable cv;
  bool stopping = false;

  kube::Informer* NewInformer(const kube::ResourceType& type, kube::InformerOptions io) {
    informers.push_back(std::make_unique<kube::Informer>(client, type, std::move(io)));
    return informers.back().get();
  }

  void EnqueueAllPools(const std::function<bool(const Json&)>& filter) {
    for (const auto& p : pools->List())
      if (filter(*p)) queue.Add(kube::ObjectKey(*p));
  }

  void StartControllers() {
    events = std::make_unique<kube::EventRecorder>(client, "pdpool-controller", clock);
    kube::InformerOptions scoped;
    scoped.ns = options.watch_namespace;
    kube::InformerOptions children = scoped;
    children.label_selector = kPoolLabel;
    // The router Deployment's own ReplicaSets inherit the pool label; only workers' matter.
    kube::InformerOptions worker_sets = scoped;
    worker_sets.label_selector =
        std::string(kPoolLabel) + "," + kRoleLabel + " in (prefill,decode)";

    pools = NewInformer(kube::kInferencePools, scoped);
    auto* rs = NewInformer(kube::kReplicaSets, worker_sets);
    auto* deps = NewInformer(kube::kDeployments, children);
    auto* svcs = NewInformer(kube::kServices, children);
    kube::InformerOptions token_secrets = scoped;
    token_secrets.label_selector = kTokenSecretSelector;
    auto* secrets = NewInformer(kube::kSecrets, token_secrets);
    // Placement needs every pod and node: GPUs used by anyone count.
    auto* pods = NewInformer(kube::kPods, {});
    auto* nodes = NewInformer(kube::kNodes, {});
    pod_cache.store(pods);
    for (auto* inf : {rs, deps, svcs, pods}) inf->AddIndex(kPoolIndex, PoolIndexValues);

    pools->AddHandler(kube::InformerHandler{
        [this](const kube::ObjectPtr& o) { queue.Add(kube::ObjectKey(*o)); },
        [this](const kube::ObjectPtr& old_obj, const kube::ObjectPtr& new_obj) {
          // Our own status writes come back as updates; only spec and metadata changes matter.
          if (JsonGet<int64_t>(*old_obj, "/metadata/generation", 0) ==
                  JsonGet<int64_t>(*new_obj, "/metadata/generation", 0) &&
              JsonGet<Json>(*old_obj, "/metadata/labels", nullptr) ==
                  JsonGet<Json>(*new_obj, "/metadata/labels", nullptr) &&
              JsonGet<Json>(*old_obj, "/metadata/deletionTimestamp", nullptr) ==
                  JsonGet<Json>(*new_obj, "/metadata/deletionTimestamp", nullptr))
            return;
          queue.Add(kube::ObjectKey(*new_obj));
        },
        [this](const kube::ObjectPtr& o) { queue.Forget(kube::ObjectKey(*o)); }});
    auto owner_handler =
        kube::InformerHandler{[this](const kube::ObjectPtr& o) {
                                if (auto k = OwnerPoolKey(*o); !k.empty()) queue.Add(k);
                              },
                              [this](const kube::ObjectPtr& old_obj, const kube::ObjectPtr& o) {
                                // kube-controller-manager rewrites children's status often
                                // (observedGeneration, conditions); only what the pool's reconcile
                                // reads is worth a pass.
                                if (ChildView(*old_obj) == ChildView(*o)) return;
                                if (auto k = OwnerPoolKey(*o); !k.empty()) queue.Add(k);
                              },
                              [this](const kube::ObjectPtr& o) {
                                if (auto k = OwnerPoolKey(*o); !k.empty()) queue.Add(k);
                              }};
    // A deleted token Secret is recreated at once: without it new pods cannot start. (Running
    // pods read the token at start and keep the old one: repair, not rotation.)
    for (auto* inf : {rs, deps, svcs, secrets}) inf->AddHandler(owner_handler);
    auto waiting_for_capacity = [](const Json& pool) {
      for (const auto& c : JsonGet<Json>(pool, "/status/conditions", Json::array()))
        if (c.value("type", "") == "Degraded" && c.value("status", "") == "True" &&
            c.value("reason", "") == "InsufficientCapacity")
          return true;
      return JsonGet<std::string>(pool, "/status/placement/domain", "").empty();
    };
    nodes->AddHandler(kube::InformerHandler{
        [this](const kube::ObjectPtr&) { EnqueueAllPools([](const Json&) { return true; }); },
        [this](const kube::ObjectPtr& old_obj, const kube::ObjectPtr& new_obj) {
          if (NodePlacementView(*old_obj) != NodePlacementView(*new_obj))
            EnqueueAllPools([](const Json&) { return true; });
        },
        [this](const kube::ObjectPtr&) { EnqueueAllPools([](const Json&) { return true; }); }});
    // A GPU pod going away frees capacity another pool may be waiting for.
    auto pod_freed = [this, waiting_for_capacity](const kube::ObjectPtr& o) {
      if (PodHoldsGpus(*o) || JsonGet<std::string>(*o, "/spec/nodeName", "").empty()) {
        EnqueueAllPools(waiting_for_capacity);
      }
    };
    pods->AddHandler(kube::InformerHandler{
        nullptr,
        [pod_freed](const kube::ObjectPtr& old_obj, const kube::ObjectPtr& new_obj) {
          if (PodHoldsGpus(*old_obj) && !PodHoldsGpus(*new_obj)) pod_freed(old_obj);
        },
        [pod_freed](const kube::ObjectPtr& o) { pod_freed(o); }});

    planner::AutoscalerOptions autoscaler_options;
    autoscaler_options.source_factory = planner::DefaultMetricsSourceFactory(clock);
    autoscaler_options.warmup = options.planner_warmup;
    autoscaler_options.min_window = options.planner_window;
    autoscaler = std::make_unique<planner::PoolAutoscaler>(autoscaler_options, &metrics);
    role_notifier = std::make_unique<RoleNotifier>();
    reconciler = std::make_unique<PoolReconciler>(
        client, ClusterCaches{pools, rs, deps, svcs, pods, nodes, secrets}, events.get(), clock,
        autoscaler.get(), role_notifier.get());

    for (auto& inf : informers) {
      kube::Informer* raw = inf.get();
      threads.emplace_back([this, raw] { raw->Run(&informer_cancel); });
    }
    for (int i = 0; i < options.workers; i++) threads.emplace_back([this] { Worker(); });
  }

  // Reconciling before every cache is synced would act on a partial picture of the cluster.
  bool WaitForCaches() {
    for (auto& inf : informers) {
      if (!inf->WaitForSync(std::chrono::hours(24), &informer_cancel)) return false;
    }
    if (!synced.exchange(true)) LogInfo("caches synced", {{"pools", pools->Size()}});
    return true;
  }

  void Worker() {
    if (!WaitForCaches()) return;
    while (auto next = queue.Get()) {
      const std::string& key = *next;
      metrics.SetQueueDepth(static_cast<double>(queue.Len()));
      auto start = clock->Now();
      ReconcileResult r = reconciler->Reconcile(key);
      double secs = std::chrono::duration<double>(clock->Now() - start).count();
      if (!r.status.ok()) {
        metrics.ObserveReconcile("error", secs);
        LogWarn(
            "reconcile failed",
            {{"pool", key}, {"error", r.status.ToString()}, {"retries", queue.NumRequeues(key)}});
        queue.AddRateLimited(key);
      } else if (r.requeue_after.count() > 0) {
        metrics.ObserveReconcile(r.invalid_spec ? "invalid" : "requeue", secs);
        queue.Forget(key);
        queue.AddAfter(key, r.requeue_after);
      } else {
        metrics.ObserveReconcile(r.invalid_spec ? "invalid" : "success", secs);
        queue.Forget(key);
      }
      queue.Done(key);
      metrics.SetPools(static_cast<double>(pools->Size()));
    }
  }

  void WaitForStop() {
    std::unique_lock lock(mu);
    cv.wait(lock, [this] { return stopping; });
  }

  void RequestStop() {
    {
      std::lock_guard lock(mu);
      stopping = true;
    }
    cv.notify_all();
  }
};

Manager::Manager(kube::KubeClient* client, ManagerOptions options, Clock* clock)
    : impl_(std::make_unique<Impl>(client, std::move(options), clock)) {
  if (impl_->options.identity.empty()) {
    char host[256] = {0};
    gethostname(host, sizeof host - 1);
    impl_->options.identity = std::string(host) + "_" + std::to_string(getpid());
  }
}

Manager::~Manager() { Stop(); }

void Manager::Stop() { impl_->RequestStop(); }

Status Manager::Run() {
  Impl& m = *impl_;
  AdminServer::Options admin;
  admin.host = m.options.admin_host;
  admin.port = m.options.admin_port;
  // Ready once this replica is useful: caches synced as leader, or waiting as a standby.
  admin.ready = [&m] { return m.synced.load() || (m.options.leader_elect && !m.leading.load()); };
  // Prometheus HTTP service discovery of the pools' pods (from the leader's cache; a standby
  // answers an empty list).
  admin.endpoints.push_back({kPrometheusTargetsPath, "application/json", [&m] {
                               kube::Informer* pods = m.pod_cache.load();
                               if (!pods || !m.synced.load()) return std::string("[]");
                               return PrometheusTargets(pods->List()).dump();
                             }});
  AdminServer server(admin, m.metrics.registry());
  if (Status s = server.Start(); !s.ok()) return s;

  std::unique_ptr<kube::LeaderElector> elector;
  std::thread election_thread;
  if (m.options.leader_elect) {
    kube::LeaderElectionConfig cfg;
    cfg.lease_namespace = m.options.leader_election_namespace;
    cfg.lease_name = m.options.leader_election_id;
    cfg.identity = m.options.identity;
    cfg.on_started_leading = [&m] {
      LogInfo("became leader", {{"identity", m.options.identity}});
      m.leading = true;
      m.metrics.SetLeader(true);
      m.StartControllers();
    };
    cfg.on_stopped_leading = [&m] {
      if (m.leading.exchange(false)) {
        m.metrics.SetLeader(false);
        std::lock_guard lock(m.mu);
        if (!m.stopping) {
          LogError("lost leadership", {{"identity", m.options.identity}});
          m.lost_leadership = true;
        }
      }
      m.RequestStop();
    };
    cfg.on_new_leader = [&m](const std::string& id) {
      if (id != m.options.identity) LogInfo("leader is", {{"identity", id}});
    };
    auto created = kube::LeaderElector::Create(cfg, m.client, m.clock);
    if (!created.ok()) return created.status();
    elector = std::move(created).value();
    election_thread = std::thread([&m, &elector] {
      Status s = elector->Run(&m.cancel);
      if (!s.ok()) {
        LogError("leader election ended", {{"error", s.ToString()}});
        m.RequestStop();
      }
    });
  } else {
    m.leading = true;
    m.metrics.SetLeader(true);
    m.StartControllers();
  }

  m.WaitForStop();
  LogInfo("shutting down", {{"identity", m.options.identity}});
  m.queue.ShutDown();
  m.informer_cancel.Cancel();
  for (auto& t : m.threads) t.join();
  m.threads.clear();
  if (m.events && !m.events->Flush())
    LogWarn("events not written before shutdown", {{"dropped_so_far", m.events->dropped()}});
  // Cancelling the elector releases the lease so a standby takes over at once.
  m.cancel.Cancel();
  if (election_thread.joinable()) election_thread.join();
  server.Stop();
  if (m.lost_leadership) return Status::Unavailable("lost leadership");
  return Status::Ok();
}

}  // namespace pdpool::controller
