// HttpKubeClient: the KubeClient over HTTPS to a real API server.
#include "common/kube/http_kube_client.h"

#include <httplib.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <csignal>
#include <fstream>
#include <mutex>
#include <sstream>
#include <vector>

#include "common/clock.h"
#include "common/kube/rate_limiter.h"
#include "common/log.h"

namespace pdpool::kube {
namespace {

std::string UrlEncode(std::string_view s) {
  static const char* kHex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

class QueryBuilder {
 public:
  void Add(std::string_view key, std::string_view value) {
    if (value.empty()) return;
    query_ += query_.empty() ? '?' : '&';
    query_ += std::string(key) + "=" + UrlEncode(value);
  }
  const std::string& str() const { return query_; }

 private:
  std::string query_;
};

// Maps an HTTP error response (a metav1.Status body, usually) to a Status.
Status ErrorFromResponse(int code, const std::string& body, const std::string& what) {
  std::string message = body;
  std::string reason;
  Json parsed = Json::parse(body, nullptr, false);
  if (!parsed.is_discarded() && parsed.is_object()) {
    message = parsed.value("message", body);
    reason = parsed.value("reason", "");
  }
  message = what + ": " + message;
  switch (code) {
    case 404:
      return Status::NotFound(message);
    case 409:
      return reason == "AlreadyExists" ? Status::AlreadyExists(message) : Status::Conflict(message);
    case 410:
      return Status::Gone(message);
    case 401:
    case 403:
      return Status::Unauthorized(message);
    case 400:
    case 415:
    case 422:
      return Status::InvalidArgument(message);
    case 504:
      return Status::DeadlineExceeded(message);
    default:
      break;
  }
  if (code == 429 || code >= 500) return Status::Unavailable(message);
  return Status::Internal("HTTP " + std::to_string(code) + " " + message);
}

struct ServerAddress {
  bool tls = true;
  std::string host;
  int port = 443;
};

StatusOr<ServerAddress> ParseServer(const std::string& server) {
  ServerAddress a;
  std::string rest = server;
  if (rest.rfind("https://", 0) == 0) {
    rest = rest.substr(8);
  } else if (rest.rfind("http://", 0) == 0) {
    a.tls = false;
    a.port = 80;
    rest = rest.substr(7);
  }
  if (auto slash = rest.find('/'); slash != std::string::npos) rest = rest.substr(0, slash);
  size_t colon = rest.rfind(':');
  size_t bracket = rest.rfind(']');
  if (colon != std::string::npos && (bracket == std::string::npos || colon > bracket)) {
    try {
      a.port = std::stoi(rest.substr(colon + 1));
    } catch (...) {
      return Status::InvalidArgument("bad server address " + server);
    }
    rest = rest.substr(0, colon);
  }
  if (!rest.empty() && rest.front() == '[') rest = rest.substr(1, rest.size() - 2);
  if (rest.empty()) return Status::InvalidArgument("bad server address " + server);
  a.host = rest;
  return a;
}

X509_STORE* NewStoreFromPem(const std::string& pem) {
  X509_STORE* store = X509_STORE_new();
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  while (X509* cert = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr)) {
    X509_STORE_add_cert(store, cert);
    X509_free(cert);
  }
  BIO_free(bio);
  return store;
}

class HttpKubeClient final : public KubeClient {
 public:
  HttpKubeClient(KubeConfig config, ServerAddress address, HttpKubeClientOptions options)
      : config_(std::move(config)),
        address_(std::move(address)),
        options_(std::move(options)),
        limiter_(options_.qps, options_.burst, &RealClock::Instance()) {}

  StatusOr<Json> Get(const ResourceType& type, std::string_view ns,
                     std::string_view name) override {
    return Do("GET", type.ObjectPath(ns, name), "", "", Describe("get", type, ns, name));
  }

  StatusOr<Json> List(const ResourceType& type, std::string_view ns,
                      const ListOptions& options) override {
    Json result;
    std::string continue_token = options.continue_token;
    do {
      QueryBuilder q;
      q.Add("labelSelector", options.label_selector);
      q.Add("fieldSelector", options.field_selector);
      q.Add("resourceVersion", options.resource_version);
      q.Add("limit", options.limit > 0 ? std::to_string(options.limit) : "500");
      q.Add("continue", continue_token);
      auto page =
          Do("GET", type.CollectionPath(ns) + q.str(), "", "", Describe("list", type, ns, ""));
      if (!page.ok()) return page.status();
      if (result.is_null()) {
        result = std::move(*page);
      } else {
        for (auto& item : (*page)["items"]) result["items"].push_back(std::move(item));
        result["metadata"] = (*page)["metadata"];
      }
      continue_token = JsonGet<std::string>(result, "/metadata/continue", "");
      if (options.limit > 0) break;
    } while (!continue_token.empty());
    if (!result.contains("items") || result["items"].is_null()) result["items"] = Json::array();
    // Items of a list carry no kind/apiVersion; fill them in so they read like single objects.
    for (auto& item : result["items"]) {
      item["kind"] = type.kind;
      item["apiVersion"] = type.ApiVersion();
    }
    return result;
  }

  StatusOr<Json> Create(const ResourceType& type, std::string_view ns,
                        const Json& object) override {
    return Do("POST", type.CollectionPath(ns), object.dump(), "application/json",
              Describe("create", type, ns, JsonGet<std::string>(object, "/metadata/name", "")));
  }

  StatusOr<Json> Update(const ResourceType& type, const Json& object) override {
    std::string ns = JsonGet<std::string>(object, "/metadata/namespace", "");
    std::string name = JsonGet<std::string>(object, "/metadata/name", "");
    return Do("PUT", type.ObjectPath(ns, name), object.dump(), "application/json",
              Describe("update", type, ns, name));
  }

  StatusOr<Json> UpdateStatus(const ResourceType& type, const Json& object) override {
    std::string ns = JsonGet<std::string>(object, "/metadata/namespace", "");
    std::string name = JsonGet<std::string>(object, "/metadata/name", "");
    return Do("PUT", type.ObjectPath(ns, name) + "/status", object.dump(), "application/json",
              Describe("update status of", type, ns, name));
  }

  StatusOr<Json> Patch(const ResourceType& type, std::string_view ns, std::string_view name,
                       PatchType patch_type, const Json& patch,
                       const PatchOptions& options) override {
    std::string content_type;
    switch (patch_type) {
      case PatchType::kMerge:
        content_type = "application/merge-patch+json";
        break;
      case PatchType::kJson:
        content_type = "application/json-patch+json";
        break;
      case PatchType::kStrategic:
        content_type = "application/strategic-merge-patch+json";
        break;
      case PatchType::kApply:
        content_type = "application/apply-patch+yaml";
        break;
    }
    std::string path = type.ObjectPath(ns, name);
    if (!options.subresource.empty()) path += "/" + options.subresource;
    QueryBuilder q;
    q.Add("fieldManager", options.field_manager);
    if (patch_type == PatchType::kApply && options.force) q.Add("force", "true");
    return Do("PATCH", path + q.str(), patch.dump(), content_type,
              Describe("patch", type, ns, name));
  }

  Status Delete(const ResourceType& type, std::string_view ns, std::string_view name,
                const DeleteOptions& options) override {
    Json body = {{"kind", "DeleteOptions"}, {"apiVersion", "v1"}};
    if (!options.propagation_policy.empty()) body["propagationPolicy"] = options.propagation_policy;
    if (!options.precondition_uid.empty()) body["preconditions"]["uid"] = options.precondition_uid;
    if (options.grace_period_seconds) body["gracePeriodSeconds"] = *options.grace_period_seconds;
    auto result = Do("DELETE", type.ObjectPath(ns, name), body.dump(), "application/json",
                     Describe("delete", type, ns, name));
    return result.status();
  }

  Status Watch(const ResourceType& type, std::string_view ns, const WatchOptions& options,
               const std::function<bool(const WatchEvent&)>& on_event,
               CancelToken* cancel) override {
    QueryBuilder q;
    q.Add("watch", "true");
    q.Add("labelSelector", options.label_selector);
    q.Add("fieldSelector", options.field_selector);
    q.Add("resourceVersion", options.resource_version);
    if (options.allow_bookmarks) q.Add("allowWatchBookmarks", "true");
    q.Add("timeoutSeconds", std::to_string(options.timeout_seconds));
    std::string what = Describe("watch", type, ns, "");

    std::unique_ptr<httplib::ClientImpl> client = NewConnection();
    // A watch is idle for long stretches: the read timeout must outlast the server's own.
    client->set_read_timeout(options.timeout_seconds + 30, 0);
    int cancel_id = -1;
    if (cancel) {
      httplib::ClientImpl* raw = client.get();
      cancel_id = cancel->Register([raw] { raw->stop(); });
      // stop() before the connection opens has no effect: check once more after registering.
      if (cancel->cancelled()) {
        cancel->Unregister(cancel_id);
        return Status::Cancelled(what + ": cancelled");
      }
    }
    std::string buffer;
    Status stream_status;
    bool stopped_by_callback = false;
    int http_status = 0;
    std::string error_body;
    auto receiver = [&](const char* data, size_t len) -> bool {
      if (cancel && cancel->cancelled()) return false;
      if (http_status != 200) {
        error_body.append(data, len);
        return true;
      }
      buffer.append(data, len);
      size_t start = 0;
      for (size_t nl; (nl = buffer.find('\n', start)) != std::string::npos; start = nl + 1) {
        std::string_view line(buffer.data() + start, nl - start);
        if (line.empty()) continue;
        Json event = Json::parse(line, nullptr, false);
        if (event.is_discarded() || !event.is_object()) {
          stream_status = Status::Internal(what + ": malformed watch event");
          return false;
        }
        WatchEvent ev{event.value("type", ""), Json::object()};
        if (auto obj = event.find("object"); obj != event.end()) ev.object = std::move(*obj);
        if (ev.type == "ERROR") {
          int code = ev.object.value("code", 500);
          stream_status = ErrorFromResponse(code, ev.object.dump(), what);
          return false;
        }
        if (!on_event(ev)) {
          stopped_by_callback = true;
          return false;
        }
      }
      buffer.erase(0, start);
      return true;
    };
    httplib::Headers headers = AuthHeaders();
    headers.emplace("Accept", "application/json");
    auto result = client->Get((type.CollectionPath(ns) + q.str()).c_str(), headers,
                              [&](const httplib::Response& response) {
                                http_status = response.status;
                                return true;
                              },
                              receiver);
    if (cancel) cancel->Unregister(cancel_id);
    if (cancel && cancel->cancelled()) return Status::Cancelled(what + ": cancelled");
    if (stopped_by_callback) return Status::Ok();
    if (!stream_status.ok()) return stream_status;
    if (http_status != 0 && http_status != 200)
      return ErrorFromResponse(http_status, error_body, what);
    if (!result) {
      // A stream the server closed after timeoutSeconds reads as success; anything else is a
      // connection problem.
      if (result.error() == httplib::Error::Read && http_status == 200) return Status::Ok();
      return Status::Unavailable(what + ": " + httplib::to_string(result.error()));
    }
    return Status::Ok();
  }

 private:
  static std::string Describe(const char* verb, const ResourceType& type, std::string_view ns,
                              std::string_view name) {
    std::string s = std::string(verb) + " " + type.resource;
    if (!ns.empty() || !name.empty())
      s += " " + std::string(ns) + (ns.empty() ? "" : "/") + std::string(name);
    return s;
  }

  std::unique_ptr<httplib::ClientImpl> NewConnection() {
    std::unique_ptr<httplib::ClientImpl> client;
    if (address_.tls) {
      std::unique_ptr<httplib::SSLClient> ssl;
      if (!config_.client_cert_pem.empty()) {
        BIO* cb = BIO_new_mem_buf(config_.client_cert_pem.data(),
                                  static_cast<int>(config_.client_cert_pem.size()));
        X509* cert = PEM_read_bio_X509(cb, nullptr, nullptr, nullptr);
        BIO_free(cb);
        BIO* kb = BIO_new_mem_buf(config_.client_key_pem.data(),
                                  static_cast<int>(config_.client_key_pem.size()));
        EVP_PKEY* key = PEM_read_bio_PrivateKey(kb, nullptr, nullptr, nullptr);
        BIO_free(kb);
        ssl = std::make_unique<httplib::SSLClient>(address_.host, address_.port, cert, key);
        X509_free(cert);
        EVP_PKEY_free(key);
      } else {
        ssl = std::make_unique<httplib::SSLClient>(address_.host, address_.port);
      }
      if (!config_.ca_pem.empty()) ssl->set_ca_cert_store(NewStoreFromPem(config_.ca_pem));
      ssl->enable_server_certificate_verification(!config_.insecure_skip_verify);
      client = std::move(ssl);
    } else {
      client = std::make_unique<httplib::ClientImpl>(address_.host, address_.port);
    }
    client->set_keep_alive(true);
    // Without it every request with a body waits ~40 ms for delayed ACKs (Nagle).
    client->set_tcp_nodelay(true);
    client->set_connection_timeout(5, 0);
    client->set_read_timeout(options_.request_timeout_seconds, 0);
    client->set_write_timeout(options_.request_timeout_seconds, 0);
    return client;
  }

  httplib::Headers AuthHeaders() {
    httplib::Headers headers{{"User-Agent", options_.user_agent}};
    std::string token = config_.token;
    if (!config_.token_file.empty()) {
      std::ifstream in(config_.token_file);
      std::ostringstream ss;
      ss << in.rdbuf();
      if (!ss.str().empty()) token = ss.str();
      while (!token.empty() && (token.back() == '\n' || token.back() == '\r')) token.pop_back();
    }
    if (!token.empty()) headers.emplace("Authorization", "Bearer " + token);
    return headers;
  }

  std::unique_ptr<httplib::ClientImpl> Acquire() {
    {
      std::lock_guard lock(pool_mu_);
      if (!pool_.empty()) {
        auto c = std::move(pool_.back());
        pool_.pop_back();
        return c;
      }
    }
    return NewConnection();
  }

  void Release(std::unique_ptr<httplib::ClientImpl> c) {
    std::lock_guard lock(pool_mu_);
    if (pool_.size() < 8) pool_.push_back(std::move(c));
  }

  StatusOr<Json> Do(const std::string& method, const std::string& path, const std::string& body,
                    const std::string& content_type, const std::string& what) {
    (void)limiter_.Wait();  // no cancel token: only fails when cancelled
    auto client = Acquire();
    httplib::Request req;
    req.method = method;
    req.path = path;
    req.headers = AuthHeaders();
    req.headers.emplace("Accept", "application/json");
    if (!body.empty()) {
      req.body = body;
      req.headers.emplace("Content-Type", content_type);
    }
    httplib::Response res;
    httplib::Error error = httplib::Error::Success;
    bool sent = client->send(req, res, error);
    if (!sent) {
      // A pooled keep-alive connection the server closed: retry once on a fresh one.
      client = NewConnection();
      res = httplib::Response();
      sent = client->send(req, res, error);
    }
    if (!sent) return Status::Unavailable(what + ": " + httplib::to_string(error));
    Release(std::move(client));
    if (res.status < 200 || res.status >= 300) return ErrorFromResponse(res.status, res.body, what);
    if (res.body.empty()) return Json::object();
    Json parsed = Json::parse(res.body, nullptr, false);
    if (parsed.is_discarded()) return Status::Internal(what + ": response is not JSON");
    return parsed;
  }

  const KubeConfig config_;
  const ServerAddress address_;
  const HttpKubeClientOptions options_;
  QpsLimiter limiter_;
  std::mutex pool_mu_;
  std::vector<std::unique_ptr<httplib::ClientImpl>> pool_;
};

}  // namespace

StatusOr<std::unique_ptr<KubeClient>> NewHttpKubeClient(const KubeConfig& config,
                                                        const HttpKubeClientOptions& options) {
  auto address = ParseServer(config.server);
  if (!address.ok()) return address.status();
  // Cancelling a TLS watch shuts its socket under OpenSSL, whose next write would raise
  // SIGPIPE and kill the process; errors are handled as return values instead.
  static std::once_flag ignore_sigpipe;
  std::call_once(ignore_sigpipe, [] { std::signal(SIGPIPE, SIG_IGN); });
  return std::unique_ptr<KubeClient>(std::make_unique<HttpKubeClient>(config, *address, options));
}

}  // namespace pdpool::kube
