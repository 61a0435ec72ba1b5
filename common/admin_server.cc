// AdminServer implementation on cpp-httplib.
#include "common/admin_server.h"

#include <httplib.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include "common/http_server.h"
#include "common/log.h"

namespace pdpool {

struct AdminServer::Impl {
  httplib::Server server;
};

std::string SerializeMetrics(const prometheus::Registry& registry) {
  return prometheus::TextSerializer().Serialize(registry.Collect());
}

AdminServer::AdminServer(Options options, std::shared_ptr<prometheus::Registry> registry)
    : impl_(std::make_unique<Impl>()),
      options_(std::move(options)),
      registry_(std::move(registry)) {}

AdminServer::~AdminServer() { Stop(); }

Status AdminServer::Start() {
  auto& s = impl_->server;
  s.Get("/healthz", [this](const httplib::Request&, httplib::Response& res) {
    bool ok = options_.healthy();
    res.status = ok ? 200 : 500;
    res.set_content(ok ? "ok\n" : "unhealthy\n", "text/plain");
  });
  s.Get("/readyz", [this](const httplib::Request&, httplib::Response& res) {
    bool ok = options_.ready();
    res.status = ok ? 200 : 503;
    res.set_content(ok ? "ok\n" : "not ready\n", "text/plain");
  });
  for (const auto& endpoint : options_.endpoints) {
    s.Get(endpoint.path, [endpoint](const httplib::Request&, httplib::Response& res) {
      res.set_content(endpoint.body(), endpoint.content_type);
    });
  }
  s.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(registry_ ? SerializeMetrics(*registry_) : "", "text/plain; version=0.0.4");
  });
  auto bound = BindHttpServer(s, options_.host, options_.port, "admin server");
  if (!bound.ok()) return bound.status();
  port_ = *bound;
  thread_ = std::thread([this] { impl_->server.listen_after_bind(); });
  LogInfo("admin server listening", {{"address", options_.host + ":" + std::to_string(port_)}});
  return Status::Ok();
}

void AdminServer::Stop() {
  if (thread_.joinable()) {
    impl_->server.stop();
    thread_.join();
  }
}

}  // namespace pdpool
