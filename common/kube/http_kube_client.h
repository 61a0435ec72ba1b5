// HttpKubeClient: KubeClient over the API server's REST interface (HTTPS via cpp-httplib and
// OpenSSL), with a client-side QPS limit. Thread-safe: each call uses its own connection from
// a small pool; watches use a dedicated connection each.
#pragma once

#include <memory>

#include "common/kube/kube_client.h"
#include "common/kube/kubeconfig.h"

namespace pdpool::kube {

struct HttpKubeClientOptions {
  double qps = 50;  // client-side limit on non-watch requests
  int burst = 100;
  int request_timeout_seconds = 30;
  std::string user_agent = "pdpool";
};

// InvalidArgument when config.server is not an http(s) address.
StatusOr<std::unique_ptr<KubeClient>> NewHttpKubeClient(const KubeConfig& config,
                                                        const HttpKubeClientOptions& options = {});

}  // namespace pdpool::kube
