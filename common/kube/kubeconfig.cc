// Kubeconfig loading: file (current context) and in-cluster service account.
#include "common/kube/kubeconfig.h"

#include <yaml-cpp/yaml.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/base64.h"

namespace pdpool::kube {
namespace {

StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::NotFound("cannot read " + path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Relative file references in a kubeconfig are relative to the kubeconfig's directory.
std::string ResolvePath(const std::string& base_dir, const std::string& p) {
  if (p.empty() || p[0] == '/') return p;
  return (std::filesystem::path(base_dir) / p).string();
}

// Undefined (falsy) when absent; a default-constructed YAML::Node is a defined Null.
YAML::Node FindNamed(const YAML::Node& list, const std::string& name, const char* inner) {
  if (!list || !list.IsSequence()) return YAML::Node(YAML::NodeType::Undefined);
  for (const auto& item : list) {
    if (item["name"] && item["name"].as<std::string>() == name) return item[inner];
  }
  return YAML::Node(YAML::NodeType::Undefined);
}

std::string Str(const YAML::Node& n, const char* key) {
  if (!n || !n[key] || !n[key].IsScalar()) return "";
  return n[key].as<std::string>();
}

// Loads PEM from "<key>-data" (base64) or "<key>" (file path).
Status LoadPem(const YAML::Node& n, const std::string& key, const std::string& base_dir,
               std::string* out) {
  std::string data = Str(n, (key + "-data").c_str());
  if (!data.empty()) {
    auto decoded = Base64Decode(data, key + "-data");
    if (!decoded.ok()) return decoded.status();
    *out = *decoded;
    return Status::Ok();
  }
  std::string file = Str(n, key.c_str());
  if (!file.empty()) {
    auto content = ReadFile(ResolvePath(base_dir, file));
    if (!content.ok()) return Status::InvalidArgument(key + ": " + content.status().message());
    *out = *content;
  }
  return Status::Ok();
}

}  // namespace

StatusOr<KubeConfig> LoadKubeConfigFile(const std::string& path) {
  auto text = ReadFile(path);
  if (!text.ok()) return Status::NotFound("kubeconfig: cannot read " + path);
  std::string base_dir = std::filesystem::path(path).parent_path().string();
  try {
    YAML::Node root = YAML::Load(*text);
    std::string current = Str(root, "current-context");
    YAML::Node context;
    if (current.empty()) {
      if (root["contexts"] && root["contexts"].IsSequence() && root["contexts"].size() > 0)
        context = root["contexts"][0]["context"];
    } else {
      context = FindNamed(root["contexts"], current, "context");
    }
    if (!context)
      return Status::InvalidArgument("kubeconfig " + path + ": no context '" + current + "'");
    std::string cluster_name = Str(context, "cluster");
    std::string user_name = Str(context, "user");
    YAML::Node cluster = FindNamed(root["clusters"], cluster_name, "cluster");
    if (!cluster)
      return Status::InvalidArgument("kubeconfig " + path + ": no cluster '" + cluster_name + "'");
    YAML::Node user = FindNamed(root["users"], user_name, "user");

    KubeConfig cfg;
    cfg.server = Str(cluster, "server");
    if (cfg.server.empty())
      return Status::InvalidArgument("kubeconfig " + path + ": cluster has no server");
    cfg.insecure_skip_verify = Str(cluster, "insecure-skip-tls-verify") == "true";
    if (auto s = LoadPem(cluster, "certificate-authority", base_dir, &cfg.ca_pem); !s.ok())
      return s;
    if (user) {
      cfg.token = Str(user, "token");
      std::string token_file = Str(user, "tokenFile");
      if (!token_file.empty()) cfg.token_file = ResolvePath(base_dir, token_file);
      if (auto s = LoadPem(user, "client-certificate", base_dir, &cfg.client_cert_pem); !s.ok())
        return s;
      if (auto s = LoadPem(user, "client-key", base_dir, &cfg.client_key_pem); !s.ok()) return s;
    }
    std::string ns = Str(context, "namespace");
    if (!ns.empty()) cfg.default_namespace = ns;
    return cfg;
  } catch (const std::exception& e) {
    return Status::InvalidArgument("kubeconfig " + path + ": " + e.what());
  }
}

StatusOr<KubeConfig> LoadInClusterConfig(const std::string& sa_dir) {
  const char* host = std::getenv("KUBERNETES_SERVICE_HOST");
  const char* port = std::getenv("KUBERNETES_SERVICE_PORT");
  if (!host || !port || !*host || !*port)
    return Status::NotFound("not in a cluster: KUBERNETES_SERVICE_HOST/PORT unset");
  KubeConfig cfg;
  std::string h = host;
  if (h.find(':') != std::string::npos) h = "[" + h + "]";  // IPv6
  cfg.server = "https://" + h + ":" + port;
  cfg.token_file = sa_dir + "/token";
  auto token = ReadFile(cfg.token_file);
  if (!token.ok()) return Status::NotFound("in-cluster: " + token.status().message());
  auto ca = ReadFile(sa_dir + "/ca.crt");
  if (!ca.ok()) return Status::NotFound("in-cluster: " + ca.status().message());
  cfg.ca_pem = *ca;
  if (auto ns = ReadFile(sa_dir + "/namespace"); ns.ok() && !ns->empty())
    cfg.default_namespace = *ns;
  return cfg;
}

StatusOr<KubeConfig> LoadKubeConfig(const std::string& explicit_path) {
  if (!explicit_path.empty()) return LoadKubeConfigFile(explicit_path);
  if (const char* env = std::getenv("KUBECONFIG"); env && *env) {
    std::string first = env;
    first = first.substr(0, first.find(':'));
    return LoadKubeConfigFile(first);
  }
  auto in_cluster = LoadInClusterConfig();
  if (in_cluster.ok()) return in_cluster;
  if (const char* home = std::getenv("HOME"); home && *home) {
    std::string path = std::string(home) + "/.kube/config";
    if (std::filesystem::exists(path)) return LoadKubeConfigFile(path);
  }
  return Status::NotFound(
      "no Kubernetes configuration: pass --kubeconfig, set KUBECONFIG, or run in a cluster");
}

}  // namespace pdpool::kube
