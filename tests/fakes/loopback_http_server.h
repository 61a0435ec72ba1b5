// LoopbackHttpServer: a cpp-httplib server on 127.0.0.1 (a free port) serving on its own thread,
// for unit tests that need an HTTP peer: a fake Prometheus, fake pods' /metrics. Every request
// goes to one handler the test supplies. Header-only; include it only from targets that get
// cpp-httplib's compile definitions (PkgConfig::HTTPLIB). Thread-safe.
#pragma once

#include <httplib.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>

namespace pdpool::testing {

class LoopbackHttpServer {
 public:
  using Handler = std::function<void(const httplib::Request&, httplib::Response&)>;

  explicit LoopbackHttpServer(Handler handler) : server_(std::make_unique<httplib::Server>()) {
    server_->set_tcp_nodelay(true);  // else Nagle and delayed ACKs add ~40 ms per answer
    server_->Get(
        ".*", [handler = std::move(handler)](const httplib::Request& req, httplib::Response& res) {
          handler(req, res);
        });
    port_ = server_->bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_->listen_after_bind(); });
    // stop() before the accept loop runs would be lost (and Stop() would hang in join).
    for (int i = 0; i < 5000 && port_ > 0 && !server_->is_running(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  ~LoopbackHttpServer() { Stop(); }
  LoopbackHttpServer(const LoopbackHttpServer&) = delete;
  LoopbackHttpServer& operator=(const LoopbackHttpServer&) = delete;

  // -1 when binding failed.
  int port() const { return port_; }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }

  // Stops serving; the port then refuses connections.
  void Stop() {
    if (!thread_.joinable()) return;
    server_->stop();
    thread_.join();
  }

 private:
  std::unique_ptr<httplib::Server> server_;
  int port_ = -1;
  std::thread thread_;
};

}  // namespace pdpool::testing
