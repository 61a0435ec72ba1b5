// `pdpool-agent worker`: flags → BackendOptions, SchedulerConfig and WorkerServerOptions; runs
// one worker until SIGTERM, then drains within the grace period. With --labels-file (the pod's
// labels, a downward-API volume file) the pod's pdpool.dev/role label overrides --role at start
// and moves the worker to a new role in place when it changes. Only wiring lives here.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

#include "agent/engine/backend_factory.h"
#include "agent/engine/scheduler.h"
#include "agent/worker/worker_server.h"

namespace pdpool::agent {

class WorkerCommand {
 public:
  explicit WorkerCommand(CLI::App& app);
  bool parsed() const { return command_->parsed(); }
  int Run();

 private:
  CLI::App* command_;
  std::string role_ = "both";
  BackendOptions backend_;
  SchedulerConfig scheduler_;
  WorkerServerOptions server_;
  std::string auth_token_file_;
  std::string kv_transport_ = "auto";
  double drain_timeout_s_ = 30;
  int fault_kv_block_delay_ms_ = 0;
  int64_t dummy_seed_ = -1;
  std::string model_path_;
  std::string labels_file_;
};

}  // namespace pdpool::agent
