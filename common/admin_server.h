// AdminServer: the HTTP endpoints every pdpool process serves for its operators: /healthz
// (alive), /readyz (ready to do its job) and /metrics (Prometheus text format from a
// prometheus-cpp registry). Thread-safe; the probe callbacks run on server threads.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "common/status.h"

namespace prometheus {
class Registry;
}

namespace pdpool {

class AdminServer {
 public:
  struct Options {
    std::string host = "0.0.0.0";
    int port = 8080;  // 0: any free port (see port())
    std::function<bool()> healthy = [] { return true; };
    std::function<bool()> ready = [] { return true; };
    // More GET endpoints (e.g. the controller's Prometheus HTTP service discovery).
    struct Endpoint {
      std::string path;
      std::string content_type;
      std::function<std::string()> body;
    };
    std::vector<Endpoint> endpoints;
  };

  AdminServer(Options options, std::shared_ptr<prometheus::Registry> registry);
  ~AdminServer();

  // Binds and serves on a background thread.
  Status Start();
  void Stop();
  int port() const { return port_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  Options options_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::thread thread_;
  int port_ = 0;
};

// Serializes a registry in the Prometheus text exposition format.
std::string SerializeMetrics(const prometheus::Registry& registry);

}  // namespace pdpool
