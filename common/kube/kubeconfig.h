// KubeConfig: where the API server is and how to authenticate, loaded from a kubeconfig file
// (current context; token, client certificate, CA as data or file) or from the in-cluster
// service-account mount. Plain values.
#pragma once

#include <string>

#include "common/status.h"

namespace pdpool::kube {

struct KubeConfig {
  std::string server;  // "https://127.0.0.1:6443"
  std::string ca_pem;  // empty: system trust store
  bool insecure_skip_verify = false;
  std::string token;            // bearer token, or empty
  std::string token_file;       // re-read on each connection when set (rotated tokens)
  std::string client_cert_pem;  // client certificate auth
  std::string client_key_pem;
  std::string default_namespace = "default";
};

// Loads the current context of a kubeconfig file.
StatusOr<KubeConfig> LoadKubeConfigFile(const std::string& path);
// In-cluster: KUBERNETES_SERVICE_HOST/PORT and /var/run/secrets/kubernetes.io/serviceaccount
// (root overridable for tests and for the local rack's node agent).
StatusOr<KubeConfig> LoadInClusterConfig(
    const std::string& sa_dir = "/var/run/secrets/kubernetes.io/serviceaccount");
// The usual order: explicit path, $KUBECONFIG, in-cluster, ~/.kube/config.
StatusOr<KubeConfig> LoadKubeConfig(const std::string& explicit_path);

}  // namespace pdpool::kube
