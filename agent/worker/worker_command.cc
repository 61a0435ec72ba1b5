// `pdpool-agent worker`: see worker_command.h.
#include "agent/worker/worker_command.h"

#include <cstdlib>
#include <optional>

#include "agent/worker/labels_file.h"
#include "common/clock.h"
#include "common/http_server.h"
#include "common/log.h"
#include "common/secret_file.h"
#include "common/signals.h"

#if PDPOOL_HAVE_CUDA
#include "agent/engine/cuda/cuda_ipc.h"
#include "agent/engine/cuda/nccl_communicator.h"
#endif

namespace pdpool::agent {

namespace {

StatusOr<std::string> ReadToken(const std::string& path) {
  if (path.empty()) {
    return Status::InvalidArgument(
        "--auth-token-file is required: the pool's shared token, which every router and worker "
        "request must carry (the controller keeps it in a Secret per pool)");
  }
  return ReadSecretFile(path, "--auth-token-file");
}

// The role the pod's label gives, when --labels-file has one; the label value as read too
// (the watcher's starting point). Problems are logged: the worker then keeps --role.
std::optional<WorkerRole> RoleFromLabels(const std::string& path,
                                         std::optional<std::string>* seen) {
  auto labels = ReadLabelsFile(path);
  if (!labels.ok()) {
    LogWarn("cannot read --labels-file; using --role", {{"error", labels.status().ToString()}});
    return std::nullopt;
  }
  auto it = labels->find(kWorkerRoleLabel);
  if (it == labels->end()) return std::nullopt;
  *seen = it->second;
  std::optional<WorkerRole> role = ParseWorkerRole(it->second);
  if (!role) {
    LogWarn("pod label has an unknown role; using --role",
            {{"label", kWorkerRoleLabel}, {"value", it->second}, {"path", path}});
  }
  return role;
}

}  // namespace

WorkerCommand::WorkerCommand(CLI::App& app) {
  command_ = app.add_subcommand(
      "worker",
      "Run one inference worker of a pool: model weights, paged KV cache, continuous-batching "
      "scheduler and an engine backend; prefill workers push each prompt's KV into the blocks a "
      "decode worker reserved for it. Serves the pool's internal protocol (token required) and "
      "/healthz, /readyz, /metrics.");
  auto* c = command_;
  // A flag given twice takes its last value, so scripts can append overrides.
  c->option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  c->add_option("--role", role_, "prefill, decode or both")
      ->check(CLI::IsMember({"prefill", "decode", "both"}))
      ->capture_default_str();
  c->add_option("--backend", backend_.backend,
                "cpu (float32 reference), sim (calibrated model) or cuda (one NVIDIA GPU; "
                "builds with nvcc only)")
      ->check(CLI::IsMember({"cpu", "sim", "cuda"}))
      ->capture_default_str();
  c->add_option("--model,--model-preset", backend_.model,
                "shape preset (test-tiny, llama-3.2-1b, llama-3.1-8b, llama-3.1-70b, "
                "llama-3.1-405b), or auto: config.json beside --weights");
  c->add_option("--weights", backend_.weights,
                "dummy:<seed> (deterministic dummy weights) or a Hugging Face safetensors "
                "directory/file")
      ->capture_default_str();
  c->add_option("--model-path", model_path_, "same as --weights <path>");
  c->add_option("--dummy-seed", dummy_seed_, "same as --weights dummy:<seed>");
  c->add_option("--served-model-name,--model-name", server_.served_model_name,
                "model name reported to routers (default: the preset)");
  c->add_option("--tensor-parallel", backend_.tensor_parallel,
                "GPUs of this replica (sim: modeled)")
      ->capture_default_str();
  c->add_option("--gpu", backend_.gpu,
                "sim: modeled GPU (H100, H200, B200, GB200 or a "
                "nvidia.com/gpu.product value)")
      ->capture_default_str();
  c->add_option("--calibration-file", backend_.calibration_file,
                "sim: efficiency factors (default: built in)");
  c->add_option("--gpu-memory-utilization", backend_.gpu_memory_utilization,
                "sim, cuda: fraction of GPU memory for weights + KV")
      ->capture_default_str();
  c->add_option("--decode-gemm", backend_.decode_gemm,
                "cuda: GEMMs of steps of at most 8 rows: auto (the faster of cublas and skinny, "
                "measured at load), cublas or skinny")
      ->capture_default_str();
  c->add_option("--prefill-attention", backend_.prefill_attention,
                "cuda: prefill attention kernel: auto (where wgmma runs, compute capability "
                "9.0, the faster of wgmma and mma measured at load; mma elsewhere), mma or wgmma")
      ->capture_default_str();
  c->add_option("--block-size", backend_.block_size, "KV block size in tokens")
      ->capture_default_str();
  c->add_option("--num-kv-blocks", backend_.num_kv_blocks,
                "KV blocks (0: from --kv-cache-bytes on cpu, from GPU memory on sim)")
      ->capture_default_str();
  c->add_option("--kv-cache-bytes", backend_.kv_cache_bytes, "cpu: KV cache budget in bytes")
      ->capture_default_str();
  c->add_option("--max-model-len", scheduler_.max_model_len,
                "longest sequence, prompt + output (0: the model's, at most 32768)")
      ->capture_default_str();
  scheduler_.max_model_len = 0;
  c->add_option("--max-running", scheduler_.max_running, "sequences in the running batch")
      ->capture_default_str();
  c->add_option("--max-waiting", scheduler_.max_waiting, "admitted requests waiting to run")
      ->capture_default_str();
  c->add_option("--max-batched-tokens", scheduler_.max_batched_tokens, "token budget per step")
      ->capture_default_str();
  server_.host = DefaultListenHost();
  c->add_option("--host", server_.host, "listen address (default: $PDPOOL_LISTEN_HOST or 0.0.0.0)")
      ->capture_default_str();
  c->add_option("--port", server_.port, "HTTP port (0: any)")->capture_default_str();
  c->add_option("--kv-port", server_.kv_port, "tcp KV receiver port (0: any)")
      ->capture_default_str();
  c->add_option("--advertise-host", server_.advertise_host,
                "address peers use to reach this worker (default: $POD_IP, else 127.0.0.1)");
  c->add_option("--kv-transport", kv_transport_,
                "how prefill pushes KV to decode: auto (cuda-ipc on one GPU, nccl within a node "
                "or NVLink domain, else tcp), tcp, cuda-ipc, nccl (GPU transports: builds with "
                "CUDA, cuda backend; $PDPOOL_NODE_NAME and $PDPOOL_NVLINK_DOMAIN place the worker)")
      ->check(CLI::IsMember({"auto", "tcp", "cuda-ipc", "nccl"}))
      ->capture_default_str();
  c->add_option("--auth-token-file", auth_token_file_, "the pool's shared token (required)");
  c->add_option("--http-threads", server_.http_threads, "HTTP server threads")
      ->capture_default_str();
  c->add_option("--drain-timeout", drain_timeout_s_,
                "seconds to finish in-flight work after SIGTERM, and the old role's work in a "
                "role switch")
      ->capture_default_str();
  c->add_option("--labels-file", labels_file_,
                "the pod's labels (downward-API volume file): its pdpool.dev/role label "
                "overrides --role at start, and the worker switches role in place when it "
                "changes (checked every second)");
  c->add_option("--fault-kv-block-delay-ms", fault_kv_block_delay_ms_,
                "fault injection for tests: sleep before sending each KV block");
}

int WorkerCommand::Run() {
  std::optional<WorkerRole> role = ParseWorkerRole(role_);  // CLI11 checked the value
  std::optional<std::string> label_seen;
  if (!labels_file_.empty()) {
    // A moved pod that restarts keeps the args of its first role: the label is the truth.
    if (auto from_label = RoleFromLabels(labels_file_, &label_seen);
        from_label && *from_label != *role) {
      LogInfo("role from the pod label overrides --role",
              {{"flag", role_}, {"role", WorkerRoleName(*from_label)}, {"path", labels_file_}});
      role = from_label;
      role_ = WorkerRoleName(*role);
    }
  }
  auto token = ReadToken(auth_token_file_);
  if (!token.ok()) {
    LogError("invalid flags", {{"error", token.status().message()}});
    return 2;
  }
#if PDPOOL_HAVE_CUDA
  // Both GPU transports are offered whatever --kv-transport says: this worker may receive from
  // a prefill worker whose pool setting picks them. They touch the GPU only when used.
  server_.cuda_ipc = NewCudaIpc();
  server_.nccl = NewNcclCommunicatorFactory();
#else
  if (kv_transport_ == "cuda-ipc" || kv_transport_ == "nccl") {
    LogError("invalid flags", {{"error", "--kv-transport " + kv_transport_ +
                                             " needs the cuda backend, not built into this binary; "
                                             "use tcp or auto"}});
    return 2;
  }
#endif
  server_.kv_transport = kv_transport_;
  if (const char* node = std::getenv("PDPOOL_NODE_NAME"); node != nullptr) {
    server_.node_name = node;
  }
  if (const char* domain = std::getenv("PDPOOL_NVLINK_DOMAIN"); domain != nullptr) {
    server_.nvlink_domain = domain;
  }
  if (!model_path_.empty()) backend_.weights = model_path_;
  if (dummy_seed_ >= 0) backend_.weights = "dummy:" + std::to_string(dummy_seed_);
  server_.role = *role;
  server_.auth_token = *token;
  server_.fault_kv_block_delay = std::chrono::milliseconds(fault_kv_block_delay_ms_);
  server_.role_switch_drain_timeout =
      std::chrono::milliseconds(static_cast<int64_t>(drain_timeout_s_ * 1000));
  if (server_.advertise_host.empty() || server_.advertise_host == "127.0.0.1") {
    const char* pod_ip = std::getenv("POD_IP");
    if (pod_ip != nullptr && *pod_ip != '\0') server_.advertise_host = pod_ip;
  }
  if (server_.served_model_name.empty()) {
    server_.served_model_name = backend_.model.empty() ? "model" : backend_.model;
  }

  WorkerServer server(server_, &RealClock::Instance());
  if (Status s = server.Start(); !s.ok()) {
    LogError("cannot start worker", {{"error", s.ToString()}});
    return 1;
  }
  LogInfo("worker listening",
          {{"role", role_}, {"port", server.port()}, {"kv_port", server.kv_port()}});

  std::unique_ptr<LabelsFileWatcher> watcher;
  if (!labels_file_.empty()) {
    watcher = std::make_unique<LabelsFileWatcher>(
        labels_file_, kWorkerRoleLabel, std::chrono::seconds(1),
        [&server](const std::string& value) {
          const std::optional<WorkerRole> to = ParseWorkerRole(value);
          if (!to) {
            LogWarn("pod label has an unknown role; ignored",
                    {{"label", kWorkerRoleLabel}, {"value", value}});
            return true;
          }
          auto r = server.SwitchRole(*to, "labels-file");
          if (r.ok()) return true;
          LogWarn("role switch for the pod label refused",
                  {{"role", value}, {"error", r.status().ToString()}});
          // Another switch in progress: try again at the next poll. Anything else is final.
          return r.status().code() != StatusCode::kConflict;
        });
    watcher->Start(label_seen);
  }

  // The cuda backend sizes its activations for the largest step the scheduler may form.
  backend_.max_batched_tokens = scheduler_.max_batched_tokens;
  backend_.max_sequences = scheduler_.max_running;
  backend_.max_model_len = scheduler_.max_model_len;
  auto backend = NewBackend(backend_);
  if (!backend.ok()) {
    LogError("cannot load the model", {{"backend", backend_.backend},
                                       {"model", backend_.model},
                                       {"weights", backend_.weights},
                                       {"error", backend.status().ToString()}});
    if (watcher) watcher->Stop();
    server.Stop();
    return 1;
  }
  SchedulerConfig config = scheduler_;
  config.block_size = backend_.block_size;
  config.eos_token_id = (*backend)->model().eos_token_id;
  if (config.max_model_len <= 0) {
    config.max_model_len = std::min((*backend)->model().max_position_embeddings, 32768);
  }
  const int32_t kv_blocks = (*backend)->kv_layout().num_blocks;
  const std::string backend_name((*backend)->name());
  server.SetEngine(std::make_unique<Engine>(std::move(*backend), config, &RealClock::Instance()));
  LogInfo("worker ready", {{"role", WorkerRoleName(server.role())},
                           {"backend", backend_name},
                           {"kv_blocks", kv_blocks},
                           {"max_model_len", config.max_model_len}});

  // A SIGTERM during the model load stays pending until here.
  WaitForTerminationSignal();
  LogInfo("SIGTERM: draining", {{"grace_seconds", drain_timeout_s_}});
  // Drain first: it cuts short a role switch the watcher may be waiting on.
  server.Drain(std::chrono::milliseconds(static_cast<int64_t>(drain_timeout_s_ * 1000)));
  if (watcher) watcher->Stop();
  server.Stop();
  LogInfo("worker stopped");
  return 0;
}

}  // namespace pdpool::agent
