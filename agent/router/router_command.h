// RouterCommand: the `pdpool-agent router` subcommand: its flags, and Run(), which wires worker
// discovery (static lists or the pool's pods), the worker pool, metrics and the HTTP server,
// serves until SIGTERM/SIGINT, then drains and returns the exit code.
// Thread-compatible: construct, parse and Run from main's thread.
#pragma once

#include <string>

namespace CLI {
class App;
}

namespace pdpool::agent {

struct RouterCommand {
  explicit RouterCommand(CLI::App& app);

  bool parsed() const;
  // Blocks until a termination signal; 0 after a clean drain, 2 for bad flags, 1 when the
  // server or discovery cannot start.
  int Run();

 private:
  CLI::App* command_ = nullptr;
  std::string host_ = "0.0.0.0";
  int port_ = 8080;
  std::string served_model_name_;
  std::string prefill_;
  std::string decode_;
  std::string workers_;
  std::string pool_;
  std::string namespace_;
  std::string kubeconfig_;
  int worker_port_ = 8000;
  std::string auth_token_file_;
  std::string api_key_file_;
  int max_model_len_ = 0;
  int64_t max_body_bytes_ = 1 << 20;
  double request_timeout_s_ = 600;
  double drain_timeout_s_ = 30;
  int threads_ = 1024;
  int max_inflight_ = 0;
};

}  // namespace pdpool::agent
