// `pdpool-agent router`: flags and wiring (see router_command.h).
#include "agent/router/router_command.h"

#include <CLI/CLI.hpp>
#include <cstdlib>
#include <memory>

#include "agent/router/router_metrics.h"
#include "agent/router/router_server.h"
#include "agent/router/worker_discovery.h"
#include "agent/router/worker_pool.h"
#include "common/clock.h"
#include "common/http_server.h"
#include "common/kube/http_kube_client.h"
#include "common/kube/kubeconfig.h"
#include "common/log.h"
#include "common/secret_file.h"
#include "common/signals.h"

namespace pdpool::agent {
namespace {

std::chrono::milliseconds Millis(double seconds) {
  return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
}

}  // namespace

RouterCommand::RouterCommand(CLI::App& app) {
  command_ = app.add_subcommand(
      "router",
      "Serve a pool's OpenAI-compatible API (/v1/completions, /v1/chat/completions, "
      "/v1/models): for each request reserve KV on a decode worker, prefill on a prefill "
      "worker that pushes the KV there, and stream the decode worker's tokens back "
      "(or generate on a `both` worker in aggregated mode).");
  auto* c = command_;
  host_ = DefaultListenHost();
  c->add_option("--host", host_, "listen address (default: $PDPOOL_LISTEN_HOST or 0.0.0.0)")
      ->capture_default_str();
  c->add_option("--port", port_, "listen port (0: any free port)")
      ->check(CLI::Range(0, 65535))
      ->capture_default_str();
  c->add_option("--served-model-name", served_model_name_,
                "the model name clients must send (default: the --pool name)");
  c->add_option("--prefill", prefill_, "static prefill workers: host:port,host:port");
  c->add_option("--decode", decode_, "static decode workers: host:port,...");
  c->add_option("--workers", workers_, "static aggregated (role both) workers: host:port,...");
  c->add_option("--pool", pool_,
                "InferencePool name: without static lists, discover its worker pods "
                "(label pdpool.dev/pool=<pool>, role from pdpool.dev/role); also the metrics' "
                "pool label");
  c->add_option("--namespace", namespace_,
                "namespace of the pool (default: $POD_NAMESPACE or default)");
  c->add_option("--kubeconfig", kubeconfig_,
                "kubeconfig file (default: $KUBECONFIG, in-cluster, ~/.kube/config)");
  c->add_option("--worker-port", worker_port_, "the workers' HTTP port (Kubernetes discovery)")
      ->check(CLI::Range(1, 65535))
      ->capture_default_str();
  c->add_option("--auth-token-file", auth_token_file_,
                "file with the pool token sent to workers as Authorization: Bearer");
  c->add_option("--api-key-file", api_key_file_,
                "optional: file with a key clients must send as Authorization: Bearer");
  c->add_option("--max-model-len", max_model_len_,
                "context length in tokens (0: the smallest the workers report)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  c->add_option("--max-body-bytes", max_body_bytes_, "largest request body accepted (413 above)")
      ->check(CLI::Range(int64_t{1024}, int64_t{1} << 30))
      ->capture_default_str();
  c->add_option("--request-timeout", request_timeout_s_,
                "seconds a worker may stay silent during a prefill or a stream")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  c->add_option("--drain-timeout", drain_timeout_s_,
                "on SIGTERM, seconds in-flight requests get to finish")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  c->add_option("--threads", threads_, "request threads (a streaming request holds one)")
      ->check(CLI::Range(1, 65536))
      ->capture_default_str();
  c->add_option("--max-inflight", max_inflight_,
                "completion requests served at once; more get 503 + Retry-After at once, keeping "
                "threads free for the probes (0: --threads minus a quarter, at most 64)")
      ->check(CLI::Range(0, 65536))
      ->capture_default_str();
}

bool RouterCommand::parsed() const { return command_->parsed(); }

int RouterCommand::Run() {
  const bool static_mode = !prefill_.empty() || !decode_.empty() || !workers_.empty();
  if (!static_mode && pool_.empty()) {
    LogError("invalid flags", {{"error",
                                "give --prefill and --decode, or --workers, or --pool "
                                "to discover the pool's worker pods"}});
    return 2;
  }
  std::string model = served_model_name_.empty() ? pool_ : served_model_name_;
  if (model.empty()) {
    LogError("invalid flags", {{"error", "--served-model-name is required without --pool"}});
    return 2;
  }
  std::vector<WorkerSpec> static_workers;
  if (static_mode) {
    auto parsed = ParseStaticWorkers(prefill_, decode_, workers_);
    if (!parsed.ok()) {
      LogError("invalid flags", {{"error", parsed.status().message()}});
      return 2;
    }
    static_workers = std::move(*parsed);
    bool has_prefill = !prefill_.empty(), has_decode = !decode_.empty();
    if (has_prefill != has_decode && workers_.empty()) {
      LogError("invalid flags",
               {{"error", "--prefill and --decode go together (or use --workers)"}});
      return 2;
    }
  }

  WorkerPoolOptions pool_options;
  if (!auth_token_file_.empty()) {
    auto token = ReadSecretFile(auth_token_file_, "--auth-token-file");
    if (!token.ok()) {
      LogError("invalid flags", {{"error", token.status().message()}});
      return 2;
    }
    pool_options.client.auth_token = std::move(*token);
  } else {
    LogWarn("no --auth-token-file: worker calls carry no token", {});
  }
  pool_options.client.request_timeout = Millis(request_timeout_s_);

  RouterServerOptions server_options;
  server_options.host = host_;
  server_options.port = port_;
  server_options.served_model_name = model;
  server_options.max_model_len = max_model_len_;
  server_options.max_body_bytes = static_cast<size_t>(max_body_bytes_);
  server_options.threads = threads_;
  server_options.max_inflight = max_inflight_;
  server_options.drain_timeout = Millis(drain_timeout_s_);
  if (!api_key_file_.empty()) {
    auto key = ReadSecretFile(api_key_file_, "--api-key-file");
    if (!key.ok()) {
      LogError("invalid flags", {{"error", key.status().message()}});
      return 2;
    }
    server_options.api_key = std::move(*key);
  }

  const Clock* clock = &RealClock::Instance();
  RouterMetrics metrics(pool_);
  WorkerPool pool(clock, pool_options);

  std::unique_ptr<kube::KubeClient> kube_client;
  std::unique_ptr<KubeWorkerDiscovery> discovery;
  if (static_mode) {
    pool.SetWorkers(static_workers);
  } else {
    auto config = kube::LoadKubeConfig(kubeconfig_);
    if (!config.ok()) {
      LogError("cannot load kubeconfig",
               {{"path", kubeconfig_}, {"error", config.status().ToString()}});
      return 1;
    }
    auto client = kube::NewHttpKubeClient(*config);
    if (!client.ok()) {
      LogError("cannot create API client",
               {{"server", config->server}, {"error", client.status().ToString()}});
      return 1;
    }
    kube_client = std::move(*client);
    KubeDiscoveryOptions d;
    d.pool = pool_;
    d.worker_port = worker_port_;
    if (!namespace_.empty()) {
      d.ns = namespace_;
    } else if (const char* ns = std::getenv("POD_NAMESPACE"); ns != nullptr && *ns != '\0') {
      d.ns = ns;
    } else {
      d.ns = "default";
    }
    discovery = std::make_unique<KubeWorkerDiscovery>(kube_client.get(), d, &pool);
    discovery->Start();
  }
  pool.StartPolling();

  RouterServer server(server_options, &pool, &metrics, clock);
  if (Status s = server.Start(); !s.ok()) {
    LogError("cannot start the router", {{"error", s.ToString()}});
    return 1;
  }
  LogInfo("router running", {{"model", model},
                             {"discovery", static_mode ? "static" : "kubernetes"},
                             {"workers", static_workers.size()}});
  WaitForTerminationSignal();
  LogInfo("termination signal: draining", {});
  server.Shutdown();
  if (discovery) discovery->Stop();
  pool.StopPolling();
  return 0;
}

}  // namespace pdpool::agent
