// Tests for kubeconfig loading: a kubeconfig file's current context (server, token, CA and
// client certificate as inline base64 data or as files relative to the kubeconfig's
// directory), errors that name what is wrong, the in-cluster service-account mount, and the
// order LoadKubeConfig tries them in. Files live in a fresh temporary directory per test.
#include "common/kube/kubeconfig.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>

namespace pdpool::kube {
namespace {

namespace fs = std::filesystem;

std::string Base64(const std::string& in) {
  static const char* kAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    uint32_t v = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8) | uint8_t(in[i + 2]);
    for (int s = 18; s >= 0; s -= 6) out += kAlphabet[(v >> s) & 63];
  }
  if (i + 1 == in.size()) {
    uint32_t v = uint8_t(in[i]) << 16;
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += "==";
  } else if (i + 2 == in.size()) {
    uint32_t v = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8);
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += kAlphabet[(v >> 6) & 63];
    out += "=";
  }
  return out;
}

// Sets an environment variable for the scope, restoring the previous value after.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, std::optional<std::string> value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value) {
      ::setenv(name, value->c_str(), 1);
    } else {
      ::unsetenv(name);
    }
  }
  ~ScopedEnv() {
    if (old_) {
      ::setenv(name_, old_->c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

const std::string kCaPem = "-----BEGIN CERTIFICATE-----\nMIIBcaCert\n-----END CERTIFICATE-----\n";
const std::string kCertPem =
    "-----BEGIN CERTIFICATE-----\nMIIBclientCert\n-----END CERTIFICATE-----\n";
const std::string kKeyPem = "-----BEGIN PRIVATE KEY-----\nMIIBkey\n-----END PRIVATE KEY-----\n";

class KubeConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "pdpool-kubeconfig-XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string Write(const std::string& relative, const std::string& content) {
    fs::path p = fs::path(dir_) / relative;
    fs::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary) << content;
    return p.string();
  }

  std::string dir_;
};

TEST_F(KubeConfigTest, TokenAndInlineCaDataFromTheCurrentContext) {
  std::string path = Write("config", R"(apiVersion: v1
kind: Config
current-context: local
clusters:
- name: local
  cluster:
    server: https://127.0.0.1:6443
    certificate-authority-data: )" + Base64(kCaPem) +
                                         R"(
contexts:
- name: local
  context: {cluster: local, user: admin, namespace: team-a}
users:
- name: admin
  user: {token: s3cr3t-token}
)");
  auto config = LoadKubeConfigFile(path);
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->server, "https://127.0.0.1:6443");
  EXPECT_EQ(config->token, "s3cr3t-token");
  EXPECT_EQ(config->ca_pem, kCaPem);
  EXPECT_FALSE(config->insecure_skip_verify);
  EXPECT_EQ(config->default_namespace, "team-a");
  EXPECT_TRUE(config->client_cert_pem.empty());
}

TEST_F(KubeConfigTest, CertificateFilesAreRelativeToTheKubeconfigsDirectory) {
  Write("pki/ca.crt", kCaPem);
  Write("pki/admin.crt", kCertPem);
  Write("pki/admin.key", kKeyPem);
  std::string path = Write("config", R"(apiVersion: v1
kind: Config
current-context: local
clusters:
- name: local
  cluster: {server: "https://10.1.2.3:6443", certificate-authority: pki/ca.crt}
contexts:
- name: local
  context: {cluster: local, user: admin}
users:
- name: admin
  user: {client-certificate: pki/admin.crt, client-key: pki/admin.key}
)");
  auto config = LoadKubeConfigFile(path);
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->ca_pem, kCaPem);
  EXPECT_EQ(config->client_cert_pem, kCertPem);
  EXPECT_EQ(config->client_key_pem, kKeyPem);
  EXPECT_TRUE(config->token.empty());
  EXPECT_EQ(config->default_namespace, "default");
}

TEST_F(KubeConfigTest, InlineClientCertificateDataAndAbsoluteTokenFile) {
  std::string token_file = Write("secrets/token", "file-token\n");
  std::string path = Write("config", R"(apiVersion: v1
kind: Config
current-context: local
clusters:
- name: local
  cluster: {server: "https://127.0.0.1:6443", insecure-skip-tls-verify: true}
contexts:
- name: local
  context: {cluster: local, user: admin}
users:
- name: admin
  user:
    client-certificate-data: )" + Base64(kCertPem) +
                                         R"(
    client-key-data: )" + Base64(kKeyPem) +
                                         R"(
    tokenFile: )" + token_file + R"(
)");
  auto config = LoadKubeConfigFile(path);
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_TRUE(config->insecure_skip_verify);
  EXPECT_EQ(config->client_cert_pem, kCertPem);
  EXPECT_EQ(config->client_key_pem, kKeyPem);
  EXPECT_EQ(config->token_file, token_file);
}

TEST_F(KubeConfigTest, CurrentContextSelectsClusterUserAndNamespace) {
  std::string path = Write("config", R"(apiVersion: v1
kind: Config
current-context: staging
clusters:
- name: prod
  cluster: {server: "https://prod.example:6443"}
- name: staging
  cluster: {server: "https://staging.example:6443"}
contexts:
- name: prod
  context: {cluster: prod, user: prod-user, namespace: prod-ns}
- name: staging
  context: {cluster: staging, user: staging-user, namespace: staging-ns}
users:
- name: prod-user
  user: {token: prod-token}
- name: staging-user
  user: {token: staging-token}
)");
  auto config = LoadKubeConfigFile(path);
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->server, "https://staging.example:6443");
  EXPECT_EQ(config->token, "staging-token");
  EXPECT_EQ(config->default_namespace, "staging-ns");
}

TEST_F(KubeConfigTest, CurrentContextThatDoesNotExistIsAnErrorNamingIt) {
  std::string path = Write("config", R"(apiVersion: v1
kind: Config
current-context: nowhere
clusters:
- name: c
  cluster: {server: "https://127.0.0.1:6443"}
contexts:
- name: c
  context: {cluster: c, user: u}
users:
- name: u
  user: {token: t}
)");
  auto config = LoadKubeConfigFile(path);
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(config.status().message().find("nowhere"), std::string::npos)
      << config.status().ToString();
}

TEST_F(KubeConfigTest, ContextNamingAMissingClusterIsAnErrorNamingIt) {
  std::string path = Write("config", R"(apiVersion: v1
kind: Config
current-context: c
clusters:
- name: other
  cluster: {server: "https://127.0.0.1:6443"}
contexts:
- name: c
  context: {cluster: typo-cluster, user: u}
users:
- name: u
  user: {token: t}
)");
  auto config = LoadKubeConfigFile(path);
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(config.status().message().find("typo-cluster"), std::string::npos)
      << config.status().ToString();
}

TEST_F(KubeConfigTest, MissingFileIsNotFoundNamingThePath) {
  const std::string path = dir_ + "/no-such-kubeconfig";
  auto config = LoadKubeConfigFile(path);
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), StatusCode::kNotFound);
  EXPECT_NE(config.status().message().find(path), std::string::npos) << config.status().ToString();
}

TEST_F(KubeConfigTest, MissingCertificateFileIsAnErrorNamingTheField) {
  std::string path = Write("config", R"(apiVersion: v1
kind: Config
current-context: c
clusters:
- name: c
  cluster: {server: "https://127.0.0.1:6443", certificate-authority: pki/missing-ca.crt}
contexts:
- name: c
  context: {cluster: c, user: u}
users:
- name: u
  user: {token: t}
)");
  auto config = LoadKubeConfigFile(path);
  ASSERT_FALSE(config.ok());
  EXPECT_NE(config.status().message().find("certificate-authority"), std::string::npos)
      << config.status().ToString();
  EXPECT_NE(config.status().message().find("missing-ca.crt"), std::string::npos)
      << config.status().ToString();
}

TEST_F(KubeConfigTest, MalformedYamlIsAnErrorNotACrash) {
  std::string path = Write("config", "clusters: [unclosed\n  - {");
  auto config = LoadKubeConfigFile(path);
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(config.status().message().find(path), std::string::npos);
}

TEST_F(KubeConfigTest, InClusterConfigFromTheServiceAccountMount) {
  Write("sa/token", "sa-token");
  Write("sa/ca.crt", kCaPem);
  Write("sa/namespace", "pdpool-system");
  ScopedEnv host("KUBERNETES_SERVICE_HOST", "10.96.0.1");
  ScopedEnv port("KUBERNETES_SERVICE_PORT", "443");
  auto config = LoadInClusterConfig(dir_ + "/sa");
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->server, "https://10.96.0.1:443");
  EXPECT_EQ(config->ca_pem, kCaPem);
  // The token is re-read from the file, which the kubelet rotates.
  EXPECT_EQ(config->token_file, dir_ + "/sa/token");
  EXPECT_EQ(config->default_namespace, "pdpool-system");
}

TEST_F(KubeConfigTest, InClusterIpv6HostIsBracketed) {
  Write("sa/token", "sa-token");
  Write("sa/ca.crt", kCaPem);
  ScopedEnv host("KUBERNETES_SERVICE_HOST", "fd00::1");
  ScopedEnv port("KUBERNETES_SERVICE_PORT", "6443");
  auto config = LoadInClusterConfig(dir_ + "/sa");
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->server, "https://[fd00::1]:6443");
  EXPECT_EQ(config->default_namespace, "default");
}

TEST_F(KubeConfigTest, InClusterWithoutServiceEnvironmentOrTokenIsNotFound) {
  Write("sa/ca.crt", kCaPem);
  {
    ScopedEnv host("KUBERNETES_SERVICE_HOST", std::nullopt);
    ScopedEnv port("KUBERNETES_SERVICE_PORT", std::nullopt);
    auto config = LoadInClusterConfig(dir_ + "/sa");
    ASSERT_FALSE(config.ok());
    EXPECT_EQ(config.status().code(), StatusCode::kNotFound);
    EXPECT_NE(config.status().message().find("KUBERNETES_SERVICE_HOST"), std::string::npos);
  }
  ScopedEnv host("KUBERNETES_SERVICE_HOST", "10.96.0.1");
  ScopedEnv port("KUBERNETES_SERVICE_PORT", "443");
  auto config = LoadInClusterConfig(dir_ + "/sa");  // no token file
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), StatusCode::kNotFound);
  EXPECT_NE(config.status().message().find(dir_ + "/sa/token"), std::string::npos)
      << config.status().ToString();
}

TEST_F(KubeConfigTest, LoadKubeConfigPrefersTheExplicitPathThenKUBECONFIG) {
  auto config_for = [&](const std::string& file, const std::string& server) {
    return Write(file,
                 "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
                 "clusters:\n- name: c\n  cluster: {server: \"" +
                     server +
                     "\"}\n"
                     "contexts:\n- name: c\n  context: {cluster: c, user: u}\n"
                     "users:\n- name: u\n  user: {token: t}\n");
  };
  std::string explicit_path = config_for("explicit", "https://explicit:6443");
  std::string first = config_for("first", "https://first:6443");
  std::string second = config_for("second", "https://second:6443");
  ScopedEnv kubeconfig("KUBECONFIG", first + ":" + second);

  auto chosen = LoadKubeConfig(explicit_path);
  ASSERT_TRUE(chosen.ok()) << chosen.status().ToString();
  EXPECT_EQ(chosen->server, "https://explicit:6443");

  auto from_env = LoadKubeConfig("");
  ASSERT_TRUE(from_env.ok()) << from_env.status().ToString();
  EXPECT_EQ(from_env->server, "https://first:6443");
}

}  // namespace
}  // namespace pdpool::kube
